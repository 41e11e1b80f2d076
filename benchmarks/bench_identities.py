"""Identity discovery quality: our clusterings against dlib's Chinese whispers and scikit-learn's DBSCAN and HDBSCAN on
the same embeddings, side by side (BCubed F, pairwise F, identities found against the true number).

    python benchmarks/bench_identities.py [--synthetic 1000] [--models out/models] [--shared ../shared]

Sets: the labelled real faces of ``../shared/data/faces/knn_examples/train`` (dlib ResNet) and the 50 labelled
voices of ``../shared/data/voices`` (GE2E), embedded by our jobs (manifest, then embed_faces / embed_voices, each its
own process), when ``../shared`` is there; and ``--synthetic`` synthetic identities (``jobs.synthesize``, 4
recordings each, the face table). Each method runs at each cosine threshold of a grid (DBSCAN: eps = 1 - threshold,
min_samples 1; dlib: Euclidean 2 sin(acos(t) / 2) on the unit vectors, its own graph; HDBSCAN takes no threshold:
min_cluster_size 2, noise as identities of one); the table shows each method's best F over the grid and its
threshold, so no method is judged at a threshold chosen for another.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = np.round(np.arange(0.30, 0.96, 0.05), 2)


def run(argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, *argv, "--log-level", "WARNING"], cwd=REPO, env=env, capture_output=True)
    if done.returncode:
        print(done.stderr.decode()[-3000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(argv[:2])} failed")


def embedded(folder: Path, table: str, models: str, work: Path) -> tuple[np.ndarray, list[str]]:
    """A labelled folder (label/file) embedded by our jobs: unit vectors per source and their labels."""
    from ops.io.storage import resolve
    from ops.matching.embeddings import read_embeddings, read_labels

    out = work / f"out-{table}"
    run(["-m", "jobs.manifest", str(folder), "--output", str(out), "--label-pattern", "{label}/*", "--run-id", "m"])
    job = "jobs.embed_faces" if table == "faces" else "jobs.embed_voices"
    run(["-m", job, str(out), "--output", str(out), "--manifest-run-id", "m", "--models", models, "--run-id", "e"])
    data = read_embeddings(resolve(str(out)), table, "e", per_source=True)
    labels = read_labels(resolve(str(out)), None, "m", "e")
    keep = [i for i, u in enumerate(data.uris) if u in labels]
    return data.vectors[keep], [labels[data.uris[i]] for i in keep]


def synthetic(n: int, work: Path) -> tuple[np.ndarray, list[str]]:
    from ops.io.storage import resolve
    from ops.matching.embeddings import read_embeddings, read_labels

    out = work / "synthetic"
    run(["-m", "jobs.synthesize", "--output", str(out), "--identities", str(n), "--run-id", "s"])
    data = read_embeddings(resolve(str(out)), "faces", "s", per_source=True)
    labels = read_labels(resolve(str(out)), None, "s", "s")
    return data.vectors, [labels[u] for u in data.uris]


def gaussian(identities: int, seed: int, dim: int = 128) -> tuple[np.ndarray, list[str]]:
    """Identities as clusters on the sphere, made hard on purpose: 1 to 8 members each (many alone, as in an
    archive), identity centres sharing a common direction (cosine about 0.3 between people), members spread around
    their centre by a per-member difficulty (a clear photo close, a poor one far)."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    common = unit(rng.standard_normal(dim))
    centres = unit(np.sqrt(0.3) * common + np.sqrt(0.7) * unit(rng.standard_normal((identities, dim))))
    sizes = rng.integers(1, 9, identities)
    owner = np.repeat(np.arange(identities), sizes)
    spread = rng.uniform(0.6, 1.4, len(owner))[:, None] / np.sqrt(dim)
    vectors = unit(centres[owner] + spread * rng.standard_normal((len(owner), dim))).astype(np.float32)
    return vectors, [f"g{i}" for i in owner]


def methods(vectors: np.ndarray, peers: bool = True):
    """Each method as threshold -> cluster labels (None: it takes no threshold); without ``peers``, ours only."""
    from sklearn.cluster import DBSCAN, HDBSCAN

    from ops.matching.clustering import chinese_whispers, connected_components, undirected
    from ops.matching.search import ExactSearch

    k = min(10, len(vectors) - 1)
    top = ExactSearch(vectors, ids=np.arange(len(vectors))).search(vectors, k + 1)  # once: each threshold cuts it
    graphs: dict[float, object] = {}

    def graph(t: float):
        if t not in graphs:
            src = np.repeat(np.arange(len(vectors)), top.ids.shape[1])
            dst, weight = top.ids.ravel(), top.scores.ravel()
            keep = (dst >= 0) & (dst != src) & (weight >= t)
            graphs[t] = undirected(len(vectors), src[keep], dst[keep], weight[keep])
        return graphs[t]

    def dlib_whispers(t: float) -> np.ndarray:
        import dlib

        radius = 2 * np.sin(np.arccos(t) / 2)  # the Euclidean distance of unit vectors at cosine t
        return np.array(dlib.chinese_whispers_clustering([dlib.vector(v.tolist()) for v in vectors], float(radius)))

    def hdbscan(_: float) -> np.ndarray:
        found = HDBSCAN(min_cluster_size=2, metric="cosine", copy=True).fit_predict(vectors.astype(np.float64))
        return np.where(found < 0, -1 - np.arange(len(found)), found)  # noise: identities of one

    ours = {
        "ours: whispers": lambda t: chinese_whispers(graph(t), seed=0),
        "ours: components": lambda t: connected_components(graph(t)),
    }
    if not peers:
        return ours
    return ours | {
        "dlib chinese_whispers": dlib_whispers,
        "sklearn DBSCAN": lambda t: DBSCAN(eps=1 - t, min_samples=1, metric="cosine").fit_predict(vectors),
        "sklearn HDBSCAN": hdbscan,
    }


def score(name: str, vectors: np.ndarray, truth: list[str], peer_limit: int = 20_000) -> None:
    from ops.matching.metrics import bcubed, pairwise_f

    peers = len(vectors) <= peer_limit
    print(f"\n{name}: {len(vectors)} items, {len(set(truth))} identities")
    if not peers:
        print(f"  (peers not run: above --peer-limit {peer_limit} items; they compare every pair, per threshold)")
    print(f"  {'method':24} {'threshold':>9} {'BCubed F':>9} {'pairwise F':>10} {'found':>7} {'seconds':>8}")
    for method, cluster in methods(vectors, peers).items():
        best = None
        for t in GRID if method != "sklearn HDBSCAN" else [None]:
            began = time.perf_counter()
            found = cluster(t)
            took = time.perf_counter() - began
            result = (bcubed(truth, found)[2], pairwise_f(truth, found)[2], len(set(found.tolist())), t, took)
            best = max(best, result, key=lambda r: r[0]) if best else result
        f, pf, n, t, took = best
        shown = f"{t:.2f}" if t is not None else "-"
        print(f"  {method:24} {shown:>9} {f:9.3f} {pf:10.3f} {n:7d} {took:8.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", type=int, default=1000, help="synthetic identities (0: none)")
    parser.add_argument(
        "--gaussian", type=int, nargs="*", default=[1000], help="identities of hard clusters on the sphere, per set"
    )
    parser.add_argument("--peer-limit", type=int, default=20_000, help="items above which the peers are not run")
    parser.add_argument("--models", default=os.environ.get("CROSSMATCH_MODELS", str(REPO / "out" / "models")))
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-identities-"))
    try:
        faces = Path(args.shared) / "data" / "faces" / "knn_examples" / "train"
        voices = Path(args.shared) / "data" / "voices"
        if faces.is_dir():
            score("real faces (knn_examples, dlib ResNet)", *embedded(faces, "faces", args.models, work))
        if voices.is_dir():
            score("real voices (LibriSpeech, GE2E)", *embedded(voices, "voices", args.models, work))
        if args.synthetic:
            score(f"synthetic faces ({args.synthetic} identities)", *synthetic(args.synthetic, work))
        for n in args.gaussian:
            score(f"clusters on the sphere ({n} identities)", *gaussian(n, seed=n), args.peer_limit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
