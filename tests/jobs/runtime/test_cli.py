from dataclasses import dataclass, field

import pytest

from jobs.runtime.cli import JobConfig, default_run_id, parse_config


@dataclass
class DemoConfig(JobConfig):
    source: str = field(default="", metadata={"positional": True, "run_key": True, "help": "input"})
    limit: int = field(default=3, metadata={"help": "how many"})
    fast: bool = field(default=False, metadata={"help": "go fast"})
    note: str | None = field(default=None, metadata={"help": "free text"})


def test_parse_config_builds_the_dataclass():
    config = parse_config(DemoConfig, ["in/", "--limit", "5", "--fast", "--run-id", "r1"], "demo", "")
    assert config == DemoConfig(source="in/", limit=5, fast=True, run_id="r1")
    assert parse_config(DemoConfig, ["x"], "demo", "").output == "out/results"


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(DemoConfig, ["--help"], "demo", "a demo job")
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(word in text for word in ("a demo job", "--limit", "--no-fast", "--output", "--run-id", "input"))


def test_default_run_id_follows_the_inputs_only():
    a = default_run_id("demo", DemoConfig(source="in/", limit=1))
    assert a == default_run_id("demo", DemoConfig(source="in/", limit=9, output="elsewhere"))
    assert a != default_run_id("demo", DemoConfig(source="other/"))
    assert a.startswith("demo-") and len(a) == len("demo-") + 12
