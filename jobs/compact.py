"""jobs.compact: merge each run's small files into one and delete what no recent table version reads.

    python -m jobs.compact OUTPUT [--table faces] [--retain-hours 168]

A run written by many workers is many files; a nightly root grows by many small runs. This merges each run's files
of a table into one (one Delta transaction per run: readers see the same rows before and after), then vacuums:
files that no table version younger than --retain-hours reads are deleted from storage, orphans of killed attempts
included. Time travel (``jobs.show --as-of``) reaches back only as far as --retain-hours after a compaction.
"""

from __future__ import annotations

import argparse
import sys

from jobs.runtime.launch import run_module
from ops.io.errors import UserError
from ops.io.root import require_ours
from ops.io.storage import resolve
from ops.io.tables import compact, tables_under


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.compact", description=__doc__.split("\n")[0])
    parser.add_argument("output", help="an output root: folder, file:// URI or s3://bucket/prefix")
    parser.add_argument("--table", action="append", help="only this table (repeatable; default every table)")
    parser.add_argument(
        "--retain-hours", type=float, default=168.0, help="keep files versions of the last N hours read (168)"
    )
    args = parser.parse_args(argv)
    if args.retain_hours < 1:  # younger files may be a running job's, not yet committed
        print("error: --retain-hours must be at least 1 (files of running jobs are that young)", file=sys.stderr)
        return 2
    try:
        root = resolve(args.output)
        require_ours(root)
        names = args.table or tables_under(root)
        if not names:
            print(f"error: no tables under {root.uri}: nothing to compact", file=sys.stderr)
            return 2
        for name in names:
            done = compact(root, name, args.retain_hours)
            print(f"{root.uri}/{name}: {done['files_merged']} files merged, {done['vacuumed']} files deleted")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
