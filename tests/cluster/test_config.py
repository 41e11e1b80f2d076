import copy

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

from cluster import CLUSTER_CONFIG, runtime_env


def test_cluster_config_passes_rays_own_schema():
    config = yaml.safe_load(CLUSTER_CONFIG.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}  # the head runs no tasks
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.")
    text = CLUSTER_CONFIG.read_text()
    assert "aws_access_key_id" not in text.lower() and "AWS_SECRET" not in text  # the instance role, never keys


def test_runtime_env_is_accepted_by_ray_and_ships_no_secrets(tmp_path):
    env = runtime_env(tmp_path)
    RuntimeEnv(**env)  # Ray's own validation
    assert env["working_dir"] == str(tmp_path) and ".venv/" in env["excludes"]
    assert not any("SECRET" in k or "KEY" in k for k in env.get("env_vars", {}))


def test_runtime_env_with_packages_pins_the_projects_requirements(tmp_path):
    env = runtime_env(tmp_path, packages=True)
    RuntimeEnv(**env)
    assert "torch==2.11.0" in env["pip"]["packages"] and not any(p.startswith("ray") for p in env["pip"]["packages"])
