"""Cluster configuration helpers: the cluster config, the project's runtime requirements, and the runtime environment
for `ray job submit`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_CONFIG = REPO / "ray_cluster.yaml"
RUNTIME_ENV = Path(__file__).with_name("runtime_env.yaml")


def requirements() -> list[str]:
    """The project's runtime requirements as pyproject.toml pins them, less Ray (the cluster's image brings it)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.split("[")[0].split("=")[0].strip() == "ray"]


def runtime_env(working_dir: str | Path = REPO, packages: bool = False) -> dict:
    """The runtime environment a submission ships with: the project's code, no credentials; with ``packages``, the
    pinned requirements too, for clusters whose nodes do not carry them (Ray installs them once per node)."""
    env = {"working_dir": str(working_dir), **yaml.safe_load(RUNTIME_ENV.read_text())}
    if packages:
        env["pip"] = {"packages": requirements(), "pip_check": False}
    return env
