"""Cluster configuration helpers: the cluster config and the runtime environment for `ray job submit`."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_CONFIG = REPO / "ray_cluster.yaml"
RUNTIME_ENV = Path(__file__).with_name("runtime_env.yaml")


def runtime_env(working_dir: str | Path = REPO) -> dict:
    """The runtime environment a submission ships with: the project's code, no credentials."""
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    return {"working_dir": str(working_dir), **env}
