"""Fault injection on the local cluster and a real S3 server: a flaky object store with killed actors on it, a killed
driver (also in an incremental night on S3). Each time every input is accounted for exactly once, compared with the
undisturbed pipeline run or a full one."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from jobs import pipeline
from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.testing.faultproxy import TRANSIENT, FaultProxy
from ops.testing.samples import make_sample_archive
from tests.conftest import REPO, S3_KEY, S3_SECRET, new_bucket


def _content(root, run_prefix: str) -> dict[str, list]:
    """What the runs found, by content (not by uri, which differs between archives): sorted keys per table."""
    store = resolve(str(root)) if isinstance(root, Path) else root
    manifest = read_table(store, "manifest", f"{run_prefix}.manifest").to_pylist()
    errors = read_table(store, "errors", f"{run_prefix}.manifest").to_pylist()
    faces = read_table(store, "faces", f"{run_prefix}.faces").to_pylist()
    voices = read_table(store, "voices", f"{run_prefix}.voices").to_pylist()
    return {
        "manifest": sorted(r["sha256"] for r in manifest),
        "manifest_errors": sorted(r["error_type"] for r in errors),
        "faces": sorted((r["sha256"], r["frame_index"], r["face_index"]) for r in faces),
        "voices": sorted((r["sha256"], r["level"], r["segment_index"]) for r in voices),
    }


def test_a_pipeline_over_a_flaky_s3_with_killed_actors_loses_nothing_leaks_no_credential_and_resumes_its_next_night(
    pipeline_run, all_models, request, monkeypatch, caplog
):
    """What the field does at once: the archive and the results on S3 failing transiently (replies lost after the
    write landed and bodies cut short included), and a face actor and a voice actor killed mid-stage. Every table is
    the undisturbed run's, row for row: none lost, none twice."""
    bucket = new_bucket(request, "moto", monkeypatch)
    proxy = FaultProxy(bucket.endpoint, rate=0.02, seed=3).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        archive = resolve(bucket.uri("archive"))
        for path in sorted(pipeline_run["archive"].rglob("*")):
            if path.is_file():
                archive.join(path.relative_to(pipeline_run["archive"]).as_posix()).put_atomic(path.read_bytes())
        argv = [archive.uri, "--output", bucket.uri("results"), "--models", all_models.uri]
        argv += ["--label-pattern", "*/{label}/*", "--run-id", "flaky"]
        with _ActorKiller("FaceActor") as faces_killer, _ActorKiller("VoiceEncoderActor") as voices_killer:
            assert pipeline.main(argv) == 0
    finally:
        proxy.stop()
    for killer in (faces_killer, voices_killer):
        assert killer.killed, f"no {killer.actor} was killed: its stage ended before the killer found one"
    injected = sum(proxy.stats[fault] for fault in TRANSIENT)
    # The store really failed, replies lost after writes landed and bodies cut short included, and the run did not
    # notice: nothing lost, nothing duplicated (the same content as the undisturbed run, row for row).
    assert injected >= 5 and proxy.stats["lost_reply"] and proxy.stats["short_body"], proxy.stats
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    results = resolve(bucket.uri("results"))
    assert _content(results, "flaky") == _content(pipeline_run["results"], "pl")

    # No credential anywhere: logs, every object (Parquet read as values, not as compressed bytes), markers.
    assert S3_SECRET not in caplog.text and S3_KEY not in caplog.text
    for obj in resolve(bucket.uri("")).list():
        data = resolve(obj.uri).read_bytes()
        text = str(pq.read_table(resolve(obj.uri).open()).to_pylist()) if obj.uri.endswith(".parquet") else ""
        for secret in (S3_SECRET, S3_KEY):
            assert secret.encode() not in data and secret not in text, obj.uri
    _next_night_killed_and_resumed(resolve(bucket.uri("archive")), results, all_models)  # the store, not the proxy


def _next_night_killed_and_resumed(archive, results, all_models) -> None:
    """The next night on the same S3 bucket, after a photo was added, one removed and one rewritten in place: its
    driver killed once the manifest stage committed, then the same command again. The night resumes (finished stages
    kept), reads and embeds only what changed, searches by difference, and its search equals a full one."""
    import numpy as np

    from jobs import match
    from ops.media.encode import encode_image
    from ops.testing.samples import portrait

    rng = np.random.default_rng(11)
    archive.join("photos/carol/new.png").put_atomic(encode_image(portrait(rng, 2), "png"))
    archive.join("photos/alice/portrait-2.png").put_atomic(encode_image(portrait(rng, 0), "png"))  # rewritten
    gone = archive.join("photos/bob/portrait-2.bmp")
    gone.fs.rm(gone.path)
    command = [sys.executable, "-m", "jobs.pipeline", archive.uri, "--output", results.uri]
    command += ["--models", all_models.uri, "--label-pattern", "*/{label}/*", "--run-id", "night2"]
    # On the cluster the first night ran on (RAY_ADDRESS), as a scheduled job is: its logical GPUs make the same
    # reuse key (GPU inference), and the killed driver's tasks and actors die with it while the cluster lives on.
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    first = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not any(m["run_id"] == "night2.manifest" for m in committed_runs(results)):
        assert first.poll() is None, "the night ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = {m["run_id"]: m["attempt"] for m in committed_runs(results)}
    assert "night2" not in done_before and "night2.search-faces" not in done_before

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = {m["run_id"]: m for m in committed_runs(results)}
    assert all(runs[r]["attempt"] == a for r, a in done_before.items())  # finished stages kept, not redone
    manifest = runs["night2.manifest"]["summary"]
    assert (manifest["new"], manifest["modified"], manifest["removed"]) == (1, 1, 1)
    faces = runs["night2.faces"]["summary"]
    assert faces["reused_from"] == "flaky.faces" and faces["sources"] - faces["reused"] == 2
    search = runs["night2.search-faces"]["summary"]
    assert search["merged_from"] == "flaky.search-faces" and search["queries_merged"] > 0
    for table in ("manifest", "faces", "matches"):
        for run_id in ("night2.manifest", "night2.faces", "night2.search-faces", "night2.identify-faces"):
            found = read_table(results, table, run_id)
            for column in ("uri", "query_uri", "gallery_uri"):
                if column in found.column_names:
                    assert gone.uri not in found.column(column).to_pylist(), (table, run_id)
    argv = ["search", "--queries", results.uri, "--output", results.uri, "--k", 5]  # every face, as the pipeline
    argv += ["--queries-run-id", "night2.faces", "--gallery-run-id", "night2.faces", "--no-reuse", "--run-id", "full"]
    assert match.main([*map(str, argv), "--log-level", "WARNING"]) == 0
    key = lambda r: (r["query_item"], r["rank"], r["gallery_item"], r["score"])  # noqa: E731
    merged = sorted(map(key, read_table(results, "matches", "night2.search-faces").to_pylist()))
    assert merged == sorted(map(key, read_table(results, "matches", "full").to_pylist()))


def _map_workers() -> dict[int, str]:
    """Ray Data's actor processes on this machine (their title names the actor class)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and "MapWorker" in title:
                found[int(entry)] = title
    return found


class _ActorKiller:
    """Kills the first new Ray Data actor whose title names ``actor``, once it has worked for a while."""

    def __init__(self, actor: str) -> None:
        self.actor, self.already = actor, set(_map_workers())
        self.killed: list[tuple[int, str]] = []
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "_ActorKiller":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.finished.set()
        self.thread.join()

    def _watch(self) -> None:
        seen: dict[int, float] = {}
        while not self.finished.is_set() and not self.killed:
            for pid, title in _map_workers().items():
                if pid not in self.already and self.actor in title:
                    seen.setdefault(pid, time.monotonic())
                    if time.monotonic() - seen[pid] > 2.0:  # models loaded, batches under way
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append((pid, title))
                        break
            time.sleep(0.1)


def test_a_killed_driver_and_the_same_command_again_resume_without_gaps(pipeline_run, all_models, tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "jobs.pipeline", str(pipeline_run["archive"]), "--output", str(results)]
    command += ["--models", all_models.uri, "--label-pattern", "*/{label}/*", "--run-id", "cut"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's would be
    first = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not any(m["run_id"] == "cut.faces" for m in _runs(results)):
        assert first.poll() is None, "the pipeline ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-pipeline
    first.wait()
    done_before = {m["run_id"]: m["attempt"] for m in _runs(results)}
    assert "cut" not in done_before  # the pipeline never committed

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    after = {m["run_id"]: m for m in _runs(results)}
    for run_id, attempt in done_before.items():  # finished stages were kept, not redone
        assert after[run_id]["attempt"] == attempt, run_id
    assert "stage faces: kept committed run cut.faces" in second.stderr
    assert _content(results, "cut") == _content(pipeline_run["results"], "pl")
    # The killed stage's half-written attempt is gone: each run's data folder holds its committed attempt's files
    # only (data files are <table>/data/<run_id>/<attempt>-<part>.parquet).
    checked = 0
    for run_id, marker in after.items():
        for table in marker["tables"]:
            folder = results / table / "data" / run_id
            names = [p.name for p in folder.iterdir()] if folder.exists() else []
            assert all(name.startswith(marker["attempt"]) for name in names), (folder, marker["attempt"], names)
            checked += len(names)
    assert checked  # the check looked where the files are


def _runs(results: Path) -> list[dict]:
    return committed_runs(resolve(str(results)))


def test_a_permanent_s3_error_fails_the_job_naming_the_object(request, monkeypatch, tmp_path, caplog):
    from jobs import manifest

    bucket = new_bucket(request, "moto", monkeypatch)
    resolve(bucket.uri("archive", "a.wav")).put_atomic(b"RIFF\0\0\0\0WAVE")
    proxy = FaultProxy(bucket.endpoint, rate=0.0, deny=rf"^PUT /{bucket.bucket}/results/").start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        assert manifest.main([bucket.uri("archive"), "--output", bucket.uri("results"), "--run-id", "denied"]) == 2
    finally:
        proxy.stop()
    assert f"access denied to {bucket.uri('results')}/" in caplog.text
    assert proxy.stats["denied"] >= 1 and proxy.stats["denied"] <= 3  # refused at once, not retried ten times


# A program run as its owner runs a job with botocore's request log on (the owner's handler on the root logger, as
# logging.basicConfig makes it). Then, on the cluster the job started, a task meets the store's rejection through
# delta-rs as well: it prints the traceback, logs it on a worker, and fails with nobody fetching its error.
_OWNERS_PROGRAM = """
import logging, os, sys, time, traceback
from pathlib import Path
import ray
from deltalake import DeltaTable
from jobs import manifest
from ops.io.errors import StorageError
from ops.io.storage import resolve
from ops.io.tables import delta_call, delta_options, delta_uri, table_store

logging.basicConfig(level=logging.WARNING)
logging.getLogger("botocore").setLevel(logging.DEBUG)
print("job exit", manifest.main(sys.argv[1:]), flush=True)

def read_manifest(table, done):
    try:
        delta_call(table.uri, DeltaTable, delta_uri(table), storage_options=delta_options(table))
    except StorageError:
        traceback.print_exc()
        logging.getLogger("crossmatch").warning("cannot read %s", table.uri, exc_info=True)
        raise
    finally:
        done.touch()

done = Path(os.environ["TASK_DONE"])
results = resolve(sys.argv[sys.argv.index("--output") + 1])
ray.remote(max_retries=0)(read_manifest).remote(table_store(results, "manifest"), done)  # its error fetched by none
while not done.exists():
    time.sleep(0.1)
time.sleep(5)  # Ray prints the worker's lines and the error nobody fetched a moment later
"""


def test_a_rejected_key_shows_nowhere_in_what_a_job_prints(request, monkeypatch, tmp_path):
    """S3 answers a key it does not know with the key's id in its answer, which delta-rs quotes in its errors;
    botocore's request log names the key in the Authorization header. Whoever prints it (our log, botocore through
    the owner's handler, a Ray worker's print and log forwarded by Ray, Ray's own "Unhandled error"), neither the
    key nor the secret shows: the key shows as [redacted]."""
    bucket = new_bucket(request, "moto", monkeypatch)
    make_sample_archive(resolve(bucket.uri("archive")))
    proxy = FaultProxy(bucket.endpoint, rate=0.0, reject=rf"^(GET|PUT) /{bucket.bucket}/results/manifest/_delta_log/")
    proxy.start()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user's would be
    env |= {"AWS_ENDPOINT_URL": proxy.url, "TASK_DONE": str(tmp_path / "done")}
    argv = [bucket.uri("archive"), "--output", bucket.uri("results"), "--log-level", "DEBUG"]
    command = [sys.executable, "-c", _OWNERS_PROGRAM, *argv]
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        proxy.stop()
    shown = done.stdout + done.stderr
    assert done.returncode == 0 and "job exit 2" in done.stdout, shown[-4000:]
    assert proxy.stats["rejected"] >= 2  # the job's commit and the task's read
    lines = shown.splitlines()

    def seen(*parts: str) -> list[str]:
        return [line for line in lines if all(p in line for p in parts)]

    # Each source printed the key, redacted: delta-rs's error in the job's log, botocore's request log, the
    # worker's traceback and log line as Ray forwards them, the error Ray logs for nobody.
    assert seen(f"job manifest failed: access denied to {bucket.uri('results')}/manifest")
    assert seen("<AWSAccessKeyId>[redacted]</AWSAccessKeyId>")
    assert seen("botocore.endpoint", "Credential=[redacted]/")
    assert len(seen("read_manifest pid=", "<AWSAccessKeyId>[redacted]</AWSAccessKeyId>")) >= 2  # printed, logged
    assert seen("Unhandled error")
    assert S3_KEY not in shown and S3_SECRET not in shown, [line for line in lines if S3_KEY in line][:5]
