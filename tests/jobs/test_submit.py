"""End to end as a user runs it: `ray start --head`, then `ray job submit` of the manifest job against real S3."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ops.io.storage import resolve
from ops.io.tables import committed_runs, read_table
from ops.testing.samples import SAMPLE_LAYOUT, make_sample_archive
from tests.conftest import (
    REPO,
    S3_KEY,
    S3_SECRET,
    VENV_BIN,
    cli_head,
    free_port,
    kill_processes_mentioning,
    new_bucket,
    ray_state,
    submit,
    wait_for_job_agent,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head(moto_endpoint):
    """A separate Ray cluster of two nodes started with the CLI (a head and a worker that joins it, each with its
    own temporary folder), with the test credentials inherited from the environment (as an instance role would
    provide) but no S3 endpoint: jobs are given it on their command line only, so a worker that needs it has it from
    the driver. Two nodes: local paths are refused there, S3 is the way."""
    temp, port = tempfile.mkdtemp(prefix="cm-ray-", dir="/tmp"), free_port()
    worker_temp = tempfile.mkdtemp(prefix="cm-rw-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    with cli_head(temp, port, env, "--num-cpus=2", "--num-gpus=1") as (address, log):
        # Ray 2.60 turns token authentication on for `ray start --head`: the client must say so to send the token.
        client_env = {**env, "RAY_AUTH_MODE": "token"}
        worker = subprocess.Popen(
            [
                "ray",
                "start",
                f"--address=127.0.0.1:{port}",
                "--block",
                "--num-cpus=1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={worker_temp}",
                "--disable-usage-stats",
            ],
            env=client_env,  # the token: the worker joins a cluster that asks for it
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_nodes(address, client_env, 2)
            wait_for_job_agent(address, client_env)
            yield address, client_env
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            kill_processes_mentioning(worker_temp)
            shutil.rmtree(worker_temp, ignore_errors=True)


def _wait_for_nodes(address: str, env: dict, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ray_state(address, env, "nodes", "--filter", "state=ALIVE") or []) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the cluster did not reach {count} nodes")
        time.sleep(2)


def test_local_paths_are_refused_on_two_nodes(ray_head, sample_archive, tmp_path):
    address, env = ray_head
    done = submit(address, env, "jobs.manifest", str(sample_archive), "--output", str(tmp_path / "out"))
    log = done.stdout + done.stderr
    assert done.returncode != 0 and "this cluster has 2 nodes" in log and "--output" in log and "s3://" in log
    assert not (tmp_path / "out").exists()  # refused before any work


def test_manifest_via_ray_job_submit_to_s3(ray_head, request, monkeypatch):
    address, env = ray_head
    bucket = new_bucket(request, "moto", monkeypatch)
    make_sample_archive(resolve(bucket.uri("archive")))
    done = submit(
        address,
        env,
        "jobs.manifest",
        bucket.uri("archive"),
        "--output",
        bucket.uri("results"),
        "--label-pattern",
        "*/{label}/*",
        driver_env={"AWS_ENDPOINT_URL": bucket.endpoint},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()
    assert "committed run manifest-" in done.stdout + done.stderr

    results = resolve(bucket.uri("results"))
    rows, errors = read_table(results, "manifest"), read_table(results, "errors")
    uris = rows.column("uri").to_pylist() + errors.column("uri").to_pylist()
    expected = {bucket.uri("archive", p) for p in SAMPLE_LAYOUT}
    assert sorted(uris) == sorted(expected)  # every object exactly once
    (marker,) = committed_runs(results)
    assert marker["summary"]["objects"] == len(SAMPLE_LAYOUT) and marker["tables"]["errors"]["rows"] == 2

    # The credentials the cluster's processes hold never show: not in the job's logs, not in its metadata.
    listed = subprocess.run(["ray", "job", "list", f"--address={address}"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "cm-test-" in listed.stdout
    for text in (done.stdout, done.stderr, listed.stdout, json.dumps(marker)):
        assert S3_SECRET not in text and S3_KEY not in text


def test_failed_submission_exits_non_zero_with_the_reason(ray_head, request, monkeypatch):
    address, env = ray_head
    bucket = new_bucket(request, "moto", monkeypatch)
    job = ["jobs.manifest", bucket.uri("no-such-archive"), "--output", bucket.uri("results")]
    done = submit(address, env, *job, driver_env={"AWS_ENDPOINT_URL": bucket.endpoint})
    assert done.returncode != 0
    assert f"nothing found at {bucket.uri('no-such-archive')}" in done.stdout + done.stderr


def _helper(address: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python -m cluster.submit`, as a scheduler runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.submit", f"--address={address}", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _upload_models(models_root, bucket) -> str:
    for path in Path(models_root.path).rglob("*"):
        if path.is_file():
            resolve(bucket.uri("models", str(path.relative_to(models_root.path)))).put_atomic(path.read_bytes())
    return bucket.uri("models")


def test_the_pipeline_through_the_submit_helper_end_to_end_on_s3(ray_head, all_models, request, monkeypatch):
    address, env = ray_head
    bucket = new_bucket(request, "moto", monkeypatch)
    make_sample_archive(resolve(bucket.uri("archive")))
    job = ["jobs.pipeline", bucket.uri("archive"), "--output", bucket.uri("results")]
    job += ["--models", _upload_models(all_models, bucket), "--label-pattern", "*/{label}/*"]
    endpoint = f"--env=AWS_ENDPOINT_URL={bucket.endpoint}"  # on the command line only: no node has it
    done = _helper(address, env, "--name", "nightly", "--date", "2026-11-22", endpoint, "--", *job)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    # Work ran on the node that joined, not only on the head (Ray's state API).
    (worker_node,) = [n["node_id"] for n in ray_state(address, env, "nodes") if not n["is_head_node"]]
    (job_id,) = [j["job_id"] for j in ray_state(address, env, "jobs") if j["submission_id"] == "nightly-2026-11-22"]
    on_worker = ray_state(address, env, "tasks", "--filter", f"node_id={worker_node}", "--filter", f"job_id={job_id}")
    assert on_worker, "no task of the pipeline ran on the worker node"
    assert "nightly-2026-11-22: SUCCEEDED" in log and "pipeline nightly-2026-11-22:" in log  # the job's own log

    results = resolve(bucket.uri("results"))
    runs = {m["run_id"]: m for m in committed_runs(results)}
    pipeline_marker = runs["nightly-2026-11-22"]
    assert {n for n, e in pipeline_marker["stages"].items() if e["state"] != "ran"} == {"attributes", "crossmatch"}
    manifest = read_table(results, "manifest", "nightly-2026-11-22.manifest")
    errors = read_table(results, "errors", "nightly-2026-11-22.manifest")
    assert sorted(manifest.column("uri").to_pylist() + errors.column("uri").to_pylist()) == sorted(
        bucket.uri("archive", p) for p in SAMPLE_LAYOUT
    )
    for stage, table in [("faces", "faces"), ("faces", "face_sources"), ("voices", "voices")]:
        rows = read_table(results, table, f"nightly-2026-11-22.{stage}")
        assert rows.num_rows > 0 and set(rows.column("run_id").to_pylist()) == {f"nightly-2026-11-22.{stage}"}
    for stage in ("search-faces", "identify-faces", "search-voices", "identify-voices"):
        assert read_table(results, "matches", f"nightly-2026-11-22.{stage}").num_rows > 0
    assert read_table(results, "calibrations").num_rows == 2
    report_uri = pipeline_marker["summary"]["report_uri"]
    assert report_uri.startswith("report/")  # kept relative to the root
    page = resolve(bucket.uri("results", report_uri)).read_bytes().decode()
    assert page.count('data-testid="thumb"') > 13 and page.count('data-testid="clip"') > 10
    assert 'class="nopreview"' not in page  # every thumbnail and clip read back from S3

    # The scheduler fires again the same day: nothing is submitted, nothing rewritten.
    again = _helper(address, env, "--name", "nightly", "--date", "2026-11-22", endpoint, "--", *job)
    assert again.returncode == 0 and "already succeeded" in again.stdout
    assert committed_runs(results)[-1]["committed_at"] == pipeline_marker["committed_at"]


def test_a_failed_scheduled_run_exits_non_zero_and_the_retry_is_a_new_attempt(
    ray_head, all_models, request, monkeypatch
):
    address, env = ray_head
    bucket = new_bucket(request, "moto", monkeypatch)
    job = ["jobs.pipeline", bucket.uri("missing"), "--output", bucket.uri("results")]
    job += ["--models", _upload_models(all_models, bucket)]  # two nodes: everything on S3
    endpoint = f"--env=AWS_ENDPOINT_URL={bucket.endpoint}"
    first = _helper(address, env, "--name", "broken", "--date", "2026-11-22", endpoint, "--", *job)
    assert first.returncode == 1, first.stdout[-4000:] + first.stderr[-4000:]
    assert "broken-2026-11-22: FAILED" in first.stdout and f"nothing found at {bucket.uri('missing')}" in first.stdout
    retry = _helper(address, env, "--name", "broken", "--date", "2026-11-22", endpoint, "--", *job)
    assert retry.returncode == 1 and "submitting broken-2026-11-22.2" in retry.stdout


def test_an_unreachable_cluster_is_exit_2_with_the_reason(tmp_path):
    done = _helper(f"http://127.0.0.1:{free_port()}", dict(os.environ), "--", "jobs.pipeline", str(tmp_path))
    assert done.returncode == 2 and "cannot reach the Ray cluster" in done.stdout
