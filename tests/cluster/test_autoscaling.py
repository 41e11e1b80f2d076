"""An autoscaling cluster on one machine, the way Ray tests its autoscaler: a head that runs no work and a worker
type with (logical) GPUs and no node at the start, nodes added by the fake multi-node provider on demand. A job
submitted to the empty cluster makes it grow, runs its face actors on the new nodes and finishes."""

import functools
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import ray._private.services

from ops.io.storage import resolve
from ops.io.tables import read_table
from tests.conftest import VENV_BIN, cli_head, free_port, ray_state, wait_for_job_agent
from tests.conftest import submit as submit_job

pytestmark = pytest.mark.slow


def _config(gcs_address: str) -> dict:
    """The autoscaler's cluster config: a head of no CPU; a CPU node and up to two GPU nodes, none at the start."""
    empty: list = []
    return {
        "cluster_name": "crossmatch-autoscaling-test",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu-worker": {
                "resources": {"CPU": 2, "object_store_memory": 300_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },
            "gpu-worker": {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 300_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "cluster_synced_files": empty,
        "rsync_exclude": empty,
        "rsync_filter": empty,
        **{k: empty for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: empty for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
    }


@pytest.fixture(scope="module")
def autoscaling_cluster():
    temp = tempfile.mkdtemp(prefix="cm-as-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port = free_port()
    config = Path(temp) / "autoscaling.json"
    config.write_text(json.dumps(_config(f"{ray._private.services.get_node_ip_address()}:{port}")))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        # The fake provider starts its nodes without the head's token: this test cluster runs without one.
        "RAY_AUTH_MODE": "disabled",
    }
    with cli_head(temp, port, env, "--num-cpus=0", "--num-gpus=0", f"--autoscaling-config={config}") as (address, _):
        wait_for_job_agent(address, env)
        yield address, env


def _state(address: str, env: dict, what: str) -> list[dict]:
    found = ray_state(address, env, what, "--detail")
    assert found is not None, f"ray list {what} answered nothing"
    return found


def test_a_job_on_an_empty_autoscaling_cluster_grows_it_and_runs_on_the_new_nodes(
    autoscaling_cluster, face_models, sample_archive, tmp_path
):
    address, env = autoscaling_cluster
    # No working_dir upload: the fake nodes share this machine's disk, and a node that garbage-collects a working
    # directory after one job deletes it under the next job's driver. The project is installed in the venv.
    submit = functools.partial(submit_job, working_dir=False)
    out = str(tmp_path / "out")
    # This machine's folders on a cluster whose workers come from other nodes: refused before any work.
    refused = submit(address, env, "jobs.manifest", str(sample_archive), "--output", out)
    log = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "head runs no work" in log and "s3://bucket/prefix" in log
    assert not Path(out).exists()

    # Declared mounted on every node (they are: one machine), the jobs run; GPU actors are asked of the autoscaler.
    shared = ["--output", out, "--shared-paths"]
    done = submit(address, env, "jobs.manifest", str(sample_archive), *shared)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    args = [out, *shared, "--models", face_models.uri, "--gpus-per-actor", "1", "--max-actors", "2"]
    # The autoscaler may have met the manifest's CPU demand with a node of the GPU type: then a GPU is there already.
    gpu_before = any(n["resources_total"].get("GPU") for n in _state(address, env, "nodes") if n["state"] == "ALIVE")
    done = submit(address, env, "jobs.embed_faces", *args)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # An elastic pool while GPU nodes are still to come; a fixed two when the autoscaler had already added both GPU
    # nodes for the manifest's CPU demand (it did so once here, between our look at the nodes and the job's plan).
    fixed = "face: 2 actor(s) with 1 GPU each" in log
    assert fixed or "elastic pool of 1 to 2 actor(s) with 1 GPU each" in log, log[-4000:]
    assert fixed or gpu_before or "no GPU in the cluster yet" in log, log[-4000:]

    nodes = [n for n in _state(address, env, "nodes") if n["state"] == "ALIVE"]
    gpu_nodes = {n["node_id"] for n in nodes if n["resources_total"].get("GPU")}
    assert 1 <= len(gpu_nodes) <= 2 and sum(n["is_head_node"] for n in nodes) == 1
    actors = [a for a in _state(address, env, "actors") if "FaceActor" in (a.get("class_name") or "")]
    assert actors and {a["node_id"] for a in actors} <= gpu_nodes  # the face actors ran on the GPU nodes it added
    faces = read_table(resolve(out), "faces")
    assert faces.num_rows > 0
    assert Counter(faces.column("model_name").to_pylist()) == Counter({"dlib-resnet-v1": faces.num_rows})
