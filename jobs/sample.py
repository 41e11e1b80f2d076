"""jobs.sample: write the sample archive (real images, audio and video, plus bad inputs) to a folder or S3 prefix.

python -m jobs.sample DEST
"""

from __future__ import annotations

import argparse
import sys

from jobs.runtime.launch import log, run_module, setup_logging
from ops.io.errors import StorageError
from ops.io.storage import resolve
from ops.testing.samples import make_sample_archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sample", description=__doc__.split("\n")[0])
    parser.add_argument("dest", help="folder, file:// URI or s3://bucket/prefix to write the archive to")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        dest = resolve(args.dest)
        paths = make_sample_archive(dest, seed=args.seed)
    except StorageError as exc:
        log.error("cannot write the sample archive: %s", exc)
        return 2
    log.info("wrote %d sample files to %s", len(paths), dest.uri)
    return 0


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
