import logging
from dataclasses import dataclass, field

import pytest

from jobs.runtime import JobConfig, JobFailed, Progress, default_run_id, parse_config, run_job, shard
from ops.storage import ObjectInfo


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


def _run(argv, body):
    return run_job("demo", DemoConfig, body, argv, "a demo job")


def test_exit_codes_and_messages(caplog, tmp_path):
    caplog.set_level(logging.INFO, "crossmatch")
    seen = {}
    assert _run(["in/", "--output", str(tmp_path)], lambda c, ctx: seen.update(run_id=ctx.run_id)) == 0
    assert seen["run_id"] == default_run_id("demo", DemoConfig(source="in/"))

    def fails(config, ctx):
        raise JobFailed("the archive is empty: check --glob")

    assert _run(["in/"], fails) == 2
    assert "job demo failed: the archive is empty: check --glob" in caplog.text

    def bug(config, ctx):
        raise ZeroDivisionError("oops")

    assert _run(["in/"], bug) == 1
    assert "unexpected error (a bug" in caplog.text and "ZeroDivisionError" in caplog.text
    assert _run(["in/", "--run-id", "../escape"], lambda c, ctx: None) == 2
    assert _run(["in/", "--output", "gs://b/x"], lambda c, ctx: None) == 2
    assert "unsupported URI scheme 'gs'" in caplog.text


def test_the_log_never_shows_a_credential_even_in_a_traceback(caplog, monkeypatch, tmp_path):
    caplog.set_level(logging.INFO, "crossmatch")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-me")

    def leaks(config, ctx):
        ctx.log.info("connecting with do-not-print-me")
        raise RuntimeError("server said: signature for do-not-print-me is wrong")

    assert _run(["in/", "--output", str(tmp_path)], leaks) == 1
    (ours,) = [h for h in logging.getLogger("crossmatch").handlers if getattr(h, "_crossmatch", False)]
    shown = "\n".join(ours.format(record) for record in caplog.records)  # as our stderr handler writes them
    assert "do-not-print-me" not in shown and shown.count("[redacted]") >= 3  # line, message, traceback


def test_progress_reports(caplog):
    caplog.set_level(logging.INFO, "crossmatch")
    progress = Progress("hashed", total=4, total_bytes=4 << 20, every=3600)
    progress.update(2, 2 << 20)
    assert "hashed" not in caplog.text  # not yet: at most every hour here
    progress.update(2, 2 << 20)
    assert "hashed: 4/4 (100%), 4.0/4.0 MiB" in caplog.text


def test_shards_balance_bytes():
    objects = [ObjectInfo(f"u{i}", f"p{i}", size, None) for i, size in enumerate([100, 90, 10, 10, 5, 5, 1, 0])]
    shards = shard(objects, cpus=1, min_bytes=1)
    assert sorted(o.relpath for s in shards for o in s) == sorted(o.relpath for o in objects)
    assert len(shards) == 4
    loads = sorted(sum(o.size for o in s) for s in shards)
    assert loads[-1] == 100 and loads[0] >= 10


@pytest.mark.parametrize(
    "sizes, cpus, expected",
    [
        ([1 << 20] * 100, 2, 1),  # 100 MiB: one shard beats eight tasks of overhead
        ([1 << 30] * 4, 2, 4),  # 4 GiB, one object each: no more shards than objects
        ([64 << 20] * 64, 2, 8),  # 4 GiB of 64 MiB objects: four shards per core
        ([1 << 30] * 40, 2, 10),
    ],  # 40 GiB: shards of at most 4 GiB
)
def test_shard_count(sizes, cpus, expected):
    objects = [ObjectInfo(f"u{i}", f"p{i}", size, None) for i, size in enumerate(sizes)]
    assert len(shard(objects, cpus, min_bytes=64 << 20)) == expected
