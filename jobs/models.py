"""jobs.models: the model registry from the command line.

python -m jobs.models list [--models ROOT]          registered models, and which are pulled under ROOT
python -m jobs.models pull NAME [--source FILE]     fetch (or take FILE), verify, convert, store with its card
python -m jobs.models show NAME_OR_URI              a pulled model's card
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.runtime import log, setup_logging
from ops.registry import ModelError, load, models_root, pull, pulled, registered, spec_for
from ops.storage import StorageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.models", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", help="models root: folder or s3:// prefix (default $CROSSMATCH_MODELS or out/models)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="registered models and what is pulled")
    p = verbs.add_parser("pull", help="fetch, verify, convert and store a model")
    p.add_argument("name")
    p.add_argument("--source", help="the distribution file, already downloaded (offline machines)")
    s = verbs.add_parser("show", help="a pulled model's card, after verifying its checkpoint")
    s.add_argument("name")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        root = models_root(args.models)
        if args.verb == "pull":
            spec = spec_for(args.name)
            log.info("pulling %s from %s==%s", spec.name, spec.source.package, spec.source.version)
            card = pull(args.name, root, args.source)
            log.info(
                "stored %s (checkpoint sha256 %s) under %s",
                card["name"],
                card["checkpoint_sha256"],
                root.join(card["name"]).uri,
            )
        elif args.verb == "show":
            print(json.dumps(load(args.name, root).card, indent=1))
        else:
            have = {c["name"]: c for c in pulled(root)}
            for name, spec in sorted(registered().items()):
                state = f"pulled ({have[name]['checkpoint_sha256'][:12]})" if name in have else "not pulled"
                print(
                    f"{name:<22} {spec.architecture:<20} {spec.card.get('modality', ''):<6} "
                    f"{spec.source.package}=={spec.source.version:<10} {state}"
                )
    except (ModelError, StorageError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
