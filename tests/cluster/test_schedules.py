"""The scheduling recipes: a crontab entry, a KubeRay RayJob and RayCronJob, and the cluster config's packages.
Checked for syntax and for meaning: each command parses with the project's own argument parsers."""

import re
import shlex
import subprocess

import pytest
import yaml

from cluster import CLUSTER_CONFIG, REPO, requirements, submit
from jobs.pipeline import PipelineConfig
from jobs.runtime.cli import parse_config
from ops.io.tables import check_run_id

KUBERAY = REPO / "cluster" / "kuberay"
CRONTAB = REPO / "cluster" / "cron" / "crontab"
# Cron fields: minute, hour, day of month, month, day of week, with their ranges.
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def check_cron(schedule: str) -> None:
    """Raise ValueError unless ``schedule`` is five valid cron fields (numbers, ranges, lists, steps, *)."""
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"{schedule!r}: {len(fields)} fields, cron has 5")
    for text, (low, high) in zip(fields, CRON_RANGES, strict=True):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise ValueError(f"{schedule!r}: bad step in {part!r}")
            if base == "*":
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(b.isdigit() and low <= int(b) <= high for b in bounds):
                raise ValueError(f"{schedule!r}: {part!r} is outside {low}-{high}")


def pipeline_args(entrypoint: str) -> list[str]:
    """The job's argv after the shell has expanded the entrypoint (as Ray's job server runs it)."""
    done = subprocess.run(["sh", "-c", f'set -- {entrypoint}; printf "%s\\0" "$@"'], capture_output=True, check=True)
    argv = done.stdout.decode().split("\0")[:-1]
    assert argv[:3] == ["python", "-m", "jobs.pipeline"], argv
    return argv[3:]


def test_check_cron_accepts_cron_and_refuses_nonsense():
    for good in ("0 2 * * *", "*/15 0-6 1,15 * 1-5"):
        check_cron(good)
    for bad in ("0 2 * *", "61 2 * * *", "0 2 * * mon-fri-sat", "*/0 * * * *"):
        with pytest.raises(ValueError):
            check_cron(bad)


def test_the_crontab_entry_parses_as_cron_shell_and_submit_arguments():
    entries = [line for line in CRONTAB.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(entries) == 1
    fields = entries[0].split(None, 5)
    check_cron(" ".join(fields[:5]))
    command = fields[5]
    assert "%" not in command  # cron turns an unescaped % into a newline
    subprocess.run(["sh", "-n", "-c", command], check=True)
    words = shlex.split(command.split(">>")[0])
    argv = words[words.index("cluster.submit") + 1 :]
    args = submit.parse_args(argv)
    assert args.name == "nightly" and args.job[0] == "jobs.pipeline"
    parse_config(PipelineConfig, args.job[1:], "jobs.pipeline", "")
    assert "RAY_AUTH_MODE=token" in command


def test_the_rayjob_runs_the_pipeline_with_a_dated_run_id_on_a_token_cluster():
    manifest = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    config = parse_config(PipelineConfig, pipeline_args(spec["entrypoint"]), "jobs.pipeline", "")
    assert re.fullmatch(r"pipeline-\d{4}-\d\d-\d\d", config.run_id) and check_run_id(config.run_id)
    assert config.archive.startswith("s3://") and config.output.startswith("s3://")
    assert config.gpus_per_actor == 1  # the GPU group starts empty: the actors' demand makes the autoscaler grow it
    runtime = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime["pip"] == requirements()  # pinned as the project pins them
    assert runtime["working_dir"].endswith(".zip")
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"} and cluster["rayVersion"].startswith("2.60.")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head runs no tasks
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    images = [
        c["image"] for g in [cluster["headGroupSpec"], *groups.values()] for c in g["template"]["spec"]["containers"]
    ]
    assert all(i.startswith("rayproject/ray:2.60.") and "-py311-cu12" in i for i in images)
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    text = (KUBERAY / "rayjob.yaml").read_text()
    assert "aws_secret" not in text.lower() and "aws_access_key_id" not in text.lower()  # either spelling


def test_the_raycronjob_schedules_exactly_the_rayjob():
    cron = yaml.safe_load((KUBERAY / "raycronjob.yaml").read_text())
    job = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())
    assert cron["apiVersion"] == "ray.io/v1" and cron["kind"] == "RayCronJob"
    check_cron(cron["spec"]["schedule"])
    assert cron["spec"]["jobTemplate"] == job["spec"]


def test_cluster_nodes_install_the_projects_pinned_requirements():
    config = yaml.safe_load(CLUSTER_CONFIG.read_text())
    (command,) = config["setup_commands"]
    words = shlex.split(command)
    assert words[:3] == ["pip", "install", "--quiet"] and words[3:] == requirements()
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # the token, never in the repo
