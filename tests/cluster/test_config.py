import copy
import json

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

from cluster import CLUSTER_CONFIG, runtime_env
from tests.conftest import S3_KEY, S3_SECRET


def test_cluster_config_passes_rays_own_schema():
    config = yaml.safe_load(CLUSTER_CONFIG.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}  # the head runs no tasks
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.")
    text = CLUSTER_CONFIG.read_text()
    # The instance role, never keys, in either spelling (AWS_SECRET_ACCESS_KEY, boto's aws_secret_access_key).
    assert "aws_access_key_id" not in text.lower() and "aws_secret" not in text.lower()


def test_runtime_env_is_accepted_by_ray_and_ships_no_secrets(tmp_path):
    env = runtime_env(tmp_path)
    RuntimeEnv(**env)  # Ray's own validation
    assert env["working_dir"] == str(tmp_path) and ".venv/" in env["excludes"]
    assert not any("SECRET" in k.upper() or "KEY" in k.upper() for k in env.get("env_vars", {}))
    shipped = json.dumps(env)  # nor the values of this environment's credentials (set by conftest), under any name
    assert S3_KEY not in shipped and S3_SECRET not in shipped


def test_runtime_env_with_packages_pins_the_projects_requirements(tmp_path):
    env = runtime_env(tmp_path, packages=True)
    RuntimeEnv(**env)
    assert "torch==2.11.0" in env["pip"]["packages"] and not any(p.startswith("ray") for p in env["pip"]["packages"])
