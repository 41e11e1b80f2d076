"""End to end as a user runs it: `ray start --head`, then `ray job submit` of the manifest job against real S3."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from ops.samples import SAMPLE_LAYOUT, make_sample_archive
from ops.storage import resolve
from ops.tables import committed_runs, read_table
from tests.conftest import REPO, VENV_BIN, free_port, new_bucket, wait_for_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head(moto_endpoint):
    """A separate Ray cluster started with the CLI, its nodes configured with the S3 endpoint (as a real cluster's
    would be) and the test credentials inherited from the environment (as an instance role would provide)."""
    temp = tempfile.mkdtemp(prefix="cm-ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    dashboard = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "AWS_ENDPOINT_URL": moto_endpoint}
    log = open(Path(temp) / "ray-start.log", "wb")
    proc = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-agent-listen-port={free_port()}",  # beside the session cluster
            "--num-cpus=2",
            "--num-gpus=1",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(dashboard, timeout=90)
        # Ray 2.60 turns token authentication on for `ray start --head`: the client must say so to send the token.
        address, client_env = f"http://127.0.0.1:{dashboard}", {**env, "RAY_AUTH_MODE": "token"}
        _wait_for_job_agent(address, client_env)
        yield address, client_env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # `ray stop` would stop every cluster on the machine
        _kill_processes_mentioning(temp)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_job_agent(address: str, env: dict, timeout: float = 120.0) -> None:
    """The dashboard answers before its job agent is up ("No available agent to submit job"): submit a no-op
    until one is accepted."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            ["ray", "job", "submit", f"--address={address}", "--no-wait", "--", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray job agent did not come up: {done.stderr[-2000:]}")
        time.sleep(2)


def _kill_processes_mentioning(text: str) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def submit(address: str, env: dict, *job: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ray",
            "job",
            "submit",
            f"--address={address}",
            f"--working-dir={REPO}",
            f"--submission-id=cm-test-{uuid.uuid4().hex[:8]}",
            "--",
            "python",
            "-m",
            *job,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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


def test_failed_submission_exits_non_zero_with_the_reason(ray_head, request, monkeypatch):
    address, env = ray_head
    bucket = new_bucket(request, "moto", monkeypatch)
    done = submit(address, env, "jobs.manifest", bucket.uri("no-such-archive"), "--output", bucket.uri("results"))
    assert done.returncode != 0
    assert f"nothing found at {bucket.uri('no-such-archive')}" in done.stdout + done.stderr
