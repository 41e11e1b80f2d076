"""Attribute heads on people held out: trained against untrained and against the baseline that always says the
training majority class or mean, through the jobs a user runs.

    python benchmarks/bench_attributes.py [--identities 2000] [--recordings 4] [--epochs 20] [--loss gaussian]

``jobs.synthesize --attributes`` makes people whose age (5 to 80) and expression (four classes, imbalanced) shape
their faces; ``jobs.train_attributes`` trains on 80% of them (a share of those kept back to recalibrate the spread)
and scores the other 20%. Prints the head card's held-out figures beside the untrained head's (epoch -1) and the
baseline's, and the expression confusion matrix.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import synthesize, train_attributes  # noqa: E402
from ops.io.storage import resolve  # noqa: E402
from ops.models.catalogue import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=2000)
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--loss", default="gaussian", help="numeric loss: gaussian, mse or l1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-attributes-") as tmp:
        work = args.out or Path(tmp)
        root, models = work / "people", work / "models"
        argv = ["--output", str(root), "--identities", str(args.identities), "--recordings", str(args.recordings)]
        assert synthesize.main([*argv, "--attributes", "--run-id", "s", "--log-level", "WARNING"]) == 0
        labels = root / "synthetic" / "s" / "attributes"
        argv = [str(root), "--labels", str(labels), "--output", str(root), "--models", str(models), "--no-gpus"]
        argv += ["--epochs", str(args.epochs), "--numeric-loss", args.loss, "--name", "bench", "--log-level", "WARNING"]
        started = time.perf_counter()
        assert train_attributes.main([*argv, "--run-id", f"bench-{args.loss}"]) == 0
        seconds = time.perf_counter() - started
        card = load("bench", resolve(str(models))).card
        training = card["training"]
        print(
            f"{args.identities} people x {args.recordings} recordings: {training['faces']} faces trained on, "
            f"{training['calibration_faces']} to recalibrate the spread, {training['held_out_faces']} held out "
            f"({training['held_out_people']} people); {args.epochs} epochs in {seconds:.0f} s (Ray start included)"
        )
        print(f"  {'metric':<32} {'trained':>9} {'untrained':>10} {'baseline':>9}")
        for name, value in card["held_out"].items():
            untrained, base = card["untrained"].get(name), card["baseline"].get(name)
            show = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
            print(f"  {name:<32} {show(value):>9} {show(untrained):>10} {show(base):>9}")
        classes = next(a["classes"] for a in card["attributes"] if a["name"] == "expression")
        print("  expression confusion (rows: truth " + ", ".join(classes) + "):")
        for name, row in zip(classes, card["confusion"]["expression"], strict=True):
            print(f"    {name:<10} {row}")


if __name__ == "__main__":
    main()
