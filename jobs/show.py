"""jobs.show: what is committed under an output root: each run, its tables and row counts, and a few rows.

python -m jobs.show OUTPUT [--table manifest] [--rows 10] [--as-of VERSION]

Reads only the rows it prints. ``--as-of`` shows a table as it was at that Delta version (``runs`` as it was then),
until a deletion erased the files that version read.
"""

from __future__ import annotations

import argparse
import sys

from jobs.runtime.launch import run_module
from ops.io.errors import UserError
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.show", description=__doc__.split("\n")[0])
    parser.add_argument("output", help="an output root: folder, file:// URI or s3://bucket/prefix")
    parser.add_argument("--table", help="print rows of this table")
    parser.add_argument("--run-id", help="only this run")
    parser.add_argument("--rows", type=int, default=10, help="how many rows to print (default 10)")
    parser.add_argument("--as-of", type=int, help="the --table as it was at this Delta version (time travel)")
    args = parser.parse_args(argv)
    try:
        root = resolve(args.output)
        runs = committed_runs(root)
        if not runs:
            print(f"error: nothing committed under {root.uri}: check the output root", file=sys.stderr)
            return 2
        for marker in runs:
            if args.run_id and marker["run_id"] != args.run_id:
                continue
            tables = ", ".join(f"{name} {entry['rows']} rows" for name, entry in marker["tables"].items())
            print(f"{root.uri}: run {marker['run_id']} ({marker['job']}), committed {marker['committed_at']}: {tables}")
            for key, value in (marker.get("summary") or {}).items():
                print(f"    {key}: {value}")
        for table in [args.table] if args.table else ["errors"]:
            rows = read_table(root, table, run_id=args.run_id, version=args.as_of, limit=args.rows)
            if rows.num_rows:
                at = f", version {args.as_of}" if args.as_of is not None else ""
                print(f"\n{table} (first {rows.num_rows} rows{at}):")
                print(_readable(rows.slice(0, args.rows).drop_columns(["run_id"])))
    except (UserError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _readable(rows) -> str:
    """Rows as a table a person reads: text whole (a uri or an item key cut short names nothing), vectors as their
    length (128 numbers say nothing at a glance)."""
    import pandas as pd  # Ray Data brings it

    frame = rows.to_pandas()
    for name in frame.columns:
        if frame[name].map(lambda v: isinstance(v, bytes)).any():  # a thumbnail: its size, not its bytes
            frame[name] = frame[name].map(lambda v: f"[{len(v)} bytes]" if v is not None else None)
        elif frame[name].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any():
            frame[name] = frame[name].map(lambda v: f"[{len(v)} values]" if v is not None else None)
    with pd.option_context("display.max_colwidth", None, "display.width", None):
        return frame.to_string()


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
