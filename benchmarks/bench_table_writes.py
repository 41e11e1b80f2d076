"""Rows per second into a Delta table on S3 (a moto server): Ray workers writing their own data files against one
driver writing every row, side by side in one run, interleaved.

    python benchmarks/bench_table_writes.py [--rows 400000] [--dim 128] [--workers 2] [--rounds 3]

The rows are face rows with a D-float embedding, made in the Ray object store first (so that neither contender pays
for making them). "driver": the rows come back to the driver (``iter_batches``) and ``OutputRun.write`` writes them,
as every job did before the Delta tables. "workers": a ``map_batches`` stage writes data files where the rows are
(``write_data_files``) and the driver commits their descriptions. Both commit through the same ``runs`` table.
Prints rows/s for each and the ratio; on a 2-core machine the gain is bounded by two cores, on a cluster by nodes.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def moto() -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def face_rows(start: int, n: int, dim: int, run_id: str):
    import numpy as np
    import pyarrow as pa

    from ops.io.schemas import faces

    rng = np.random.default_rng(start)
    schema = faces(dim)
    cols = {
        "run_id": pa.array([run_id] * n),
        "uri": pa.array([f"s3://archive/p{start + i:08d}.jpg" for i in range(n)]),
        "sha256": pa.array([f"{start + i:064x}" for i in range(n)]),
        "frame_index": pa.array(np.zeros(n, np.int32)),
        "timestamp": pa.nulls(n, pa.float64()),
        "face_index": pa.array(np.zeros(n, np.int32)),
        "track_id": pa.nulls(n, pa.int32()),
        "track_frames": pa.nulls(n, pa.int32()),
        "box": pa.array(list(rng.random((n, 4), np.float32)), pa.list_(pa.float32())),
        "landmarks": pa.array(list(rng.random((n, 10), np.float32)), pa.list_(pa.float32())),
        "score": pa.array(rng.random(n, np.float32)),
        "face_size": pa.array(rng.random(n, np.float32)),
        "eye_distance": pa.array(rng.random(n, np.float32)),
        "sharpness": pa.array(rng.random(n, np.float32)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * dim, np.float32)), dim),
        "detector_name": pa.array(["mtcnn"] * n),
        "detector_sha256": pa.array(["0" * 64] * n),
        "model_name": pa.array(["bench"] * n),
        "model_sha256": pa.array(["0" * 64] * n),
    }
    return pa.table([cols[f.name] for f in schema], schema=schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server, endpoint = moto()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        import ray
        import s3fs

        from jobs.runtime.output import WRITE_ROWS, RowWriter
        from ops.io.schemas import faces
        from ops.io.storage import resolve
        from ops.io.tables import OutputRun, read_table

        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(bucket)
        schema = faces(args.dim)
        block = 5_000
        times: dict[str, list[float]] = {"driver": [], "workers": []}
        for r in range(args.rounds):
            for how in ("driver", "workers") if r % 2 == 0 else ("workers", "driver"):
                run_id = f"{how}-{r}"
                root = resolve(f"s3://{bucket}/{how}")
                rows = (
                    ray.data.range(args.rows // block, override_num_blocks=args.rows // block)
                    .map_batches(
                        lambda b, run_id=run_id: face_rows(int(b["id"][0]) * block, block, args.dim, run_id),
                        batch_size=1,
                        batch_format="pyarrow",
                    )
                    .materialize()
                )
                out = OutputRun(root, run_id, "bench")
                start = time.perf_counter()
                if how == "driver":
                    for batch in rows.iter_batches(batch_format="pyarrow", batch_size=None):
                        out.write("faces", batch, schema)
                else:
                    writer = RowWriter(root, "faces", schema, run_id, out.attempt)
                    described = rows.map_batches(
                        lambda b, w=writer: _describe(w.write(b)), batch_size=WRITE_ROWS, batch_format="pyarrow"
                    )
                    for batch in described.iter_batches(batch_format="pyarrow", batch_size=None):
                        out.add_files("faces", [_parse(t) for t in batch.column("file").to_pylist()], schema)
                out.commit()
                times[how].append(time.perf_counter() - start)
                assert read_table(root, "faces", run_id=run_id, columns=["uri"]).num_rows == args.rows
                print(f"round {r} {how:<8} {args.rows / times[how][-1]:10.0f} rows/s", flush=True)
        driver, workers = statistics.median(times["driver"]), statistics.median(times["workers"])
        print(f"\n{args.rows} face rows (d={args.dim}) to moto S3, {args.workers} CPUs, medians of {args.rounds}:")
        print(f"driver writer  {args.rows / driver:10.0f} rows/s  ({driver:.1f} s)")
        print(f"worker writes  {args.rows / workers:10.0f} rows/s  ({workers:.1f} s)  {driver / workers:.2f}x")
    finally:
        server.terminate()


def _describe(files):
    import pyarrow as pa

    from jobs.runtime.output import file_row

    return pa.table({"file": [file_row(f) for f in files]})


def _parse(text):
    from jobs.runtime.output import parse_file_row

    return parse_file_row(text)


if __name__ == "__main__":
    main()
