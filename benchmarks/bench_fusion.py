"""Face and voice evidence together: held-out EER, TAR at FAR 1e-2 and 1e-3, Cllr and min Cllr of face alone, voice
alone, the sum of calibrated log-LRs and a trained linear fusion, on the same trials, through the jobs.

    python benchmarks/bench_fusion.py [--synthetic 400] [--recordings 4] [--no-real] [--out DIR]

Sets:
- real, chimeric: the people of ``../shared/data/faces/knn_examples`` (train photos labelled by folder, and the three
  test photos of one known person each) joined to the five LibriSpeech speakers of ``../shared/data/voices``, one
  speaker per person in a seeded order (``jobs.calibrate --fuse``'s chimeric pairing); skipped without ../shared;
- synthetic, shared labels: ``jobs.synthesize`` people whose every recording has a face and a voice.

Each set goes through the jobs a user runs (manifest, embed_faces, embed_voices or synthesize, then calibrate
--fuse); the figures are the calibration record's, every one held out by identity (two folds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import calibrate, embed_faces, embed_voices, manifest, synthesize  # noqa: E402
from ops.io.root import locate
from ops.io.storage import resolve  # noqa: E402
from ops.io.tables import read_table  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# The knn_examples test photos of one known person each (the others hold two people).
TEST_PHOTOS = {"obama1.jpg": "obama", "johnsnow_test1.jpg": "kit_harington", "alex_lacamoire1.jpg": "alex_lacamoire"}


def ok(code: int, what: str) -> None:
    if code != 0:
        raise SystemExit(f"{what} failed (exit {code})")


def real(work: Path, models: str | None) -> Path:
    faces, voices = work / "faces", work / "voices"
    knn = SHARED / "faces" / "knn_examples"
    work.mkdir(parents=True, exist_ok=True)
    labels = work / "face_labels.csv"
    rows = [(p, p.parent.name) for p in sorted((knn / "train").glob("*/*"))]
    rows += [(knn / "test" / name, person) for name, person in TEST_PHOTOS.items()]
    labels.write_text("uri,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    quiet = ["--log-level", "WARNING"] + (["--models", models] if models else [])
    ok(manifest.main([str(knn), "--output", str(faces), "--log-level", "WARNING"]), "manifest of the faces")
    ok(embed_faces.main([str(faces), "--output", str(faces), *quiet]), "embed_faces")
    voice_folder = SHARED / "voices"
    argv = [str(voice_folder), "--output", str(voices), "--label-pattern", "{label}/*", "--log-level", "WARNING"]
    ok(manifest.main(argv), "manifest of the voices")
    ok(embed_voices.main([str(voices), "--output", str(voices), *quiet]), "embed_voices")
    argv = [str(faces), "--fuse", "--labels", str(labels), "--voices", str(voices), "--output", str(work / "out")]
    ok(calibrate.main([*argv, "--log-level", "WARNING"]), "calibrate --fuse")
    return work / "out"


def synthetic(work: Path, identities: int, recordings: int) -> Path:
    root = work / "synthetic"
    argv = ["--output", str(root), "--identities", str(identities), "--recordings", str(recordings), "--seed", "11"]
    ok(synthesize.main([*argv, "--log-level", "WARNING"]), "synthesize")
    ok(calibrate.main([str(root), "--fuse", "--output", str(root), "--log-level", "WARNING"]), "calibrate --fuse")
    return root


def show(name: str, root: Path) -> None:
    (row,) = read_table(resolve(str(root)), "fusions").to_pylist()[-1:]
    record = json.loads(locate(resolve(str(root)), row["record_uri"]).read_bytes())
    print(
        f"\n{name}: {record['identity_count']} identities ({record['pairing']}), {record['same_trials']} same and "
        f"{record['different_trials']} different trials, held out by identity"
    )
    if record["pairing"] == "chimeric":
        print("  pairing: " + ", ".join(f"{i['face_label']}+{i['voice_label']}" for i in record["identities"]))
    print(f"  {'system':<24} {'EER':>8} {'TAR@1e-2':>9} {'TAR@1e-3':>9} {'Cllr':>7} {'min Cllr':>9}")
    for system, fig in record["systems"].items():
        print(
            f"  {system:<24} {100 * fig['eer']:7.2f}% {fig['tar_at_far_0.01']:9.3f} {fig['tar_at_far_0.001']:9.3f} "
            f"{fig['cllr']:7.3f} {fig['min_cllr']:9.3f}"
        )
    weights = record["calibration"]["linear"]
    print(
        f"  linear fusion: {weights['weights'][0]:.3f} x face + {weights['weights'][1]:.3f} x voice "
        f"{weights['offset']:+.3f}; fused log-LR threshold at FAR {record['target_far']:g}: "
        f"{record['llr_thresholds']['fused']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", type=int, default=400, help="synthetic identities (0: none)")
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--no-real", action="store_true", help="skip the real chimeric set")
    parser.add_argument("--models", default=None, help="models root (default: out/models)")
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fusion-") as tmp:
        work = args.out or Path(tmp)
        if not args.no_real:
            if (SHARED / "voices").exists() and (SHARED / "faces").exists():
                show("real faces and voices, chimeric", real(work / "real", args.models))
            else:
                print(f"no {SHARED}: the real chimeric set is skipped")
        if args.synthetic:
            show("synthetic faces and voices", synthetic(work, args.synthetic, args.recordings))


if __name__ == "__main__":
    main()
