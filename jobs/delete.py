"""jobs.delete: remove a run's outputs completely (its tables, every attempt, its images, report and checkpoints).

    python -m jobs.delete OUTPUT RUN_ID [--dry-run]

A pipeline (or find) run takes its stages' runs (``RUN_ID.<stage>``, committed or not) with it. Each run's row in
``runs`` goes first, so readers stop seeing it at once; then its files leave every table and are deleted from storage (a
deleted run's material is gone, from earlier table versions too); an interrupted deletion is finished by running the
same command again.
"""

from __future__ import annotations

import argparse
import sys

from jobs.runtime.launch import run_module
from jobs.runtime.stages import FIND_STAGES, STAGES
from ops.io.errors import UserError
from ops.io.storage import resolve
from ops.io.tables import delete_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.delete", description=__doc__.split("\n")[0])
    parser.add_argument("output", help="an output root: folder, file:// URI or s3://bucket/prefix")
    parser.add_argument("run_id", help="the run to delete (a pipeline run takes its stages too)")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    args = parser.parse_args(argv)
    try:
        root = resolve(args.output)
        removed = []
        # Stage runs by name, committed or not (a killed pipeline leaves attempts without markers).
        stages = dict.fromkeys(STAGES + FIND_STAGES)
        for run_id in [f"{args.run_id}.{stage}" for stage in stages] + [args.run_id]:
            removed += delete_run(root, run_id, dry_run=args.dry_run)
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not removed:
        print(
            f"error: nothing of run {args.run_id} under {root.uri}: check the run id (`python -m jobs.show`)",
            file=sys.stderr,
        )
        return 2
    verb = "would delete" if args.dry_run else "deleted"
    for uri in removed:
        print(f"{verb} {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
