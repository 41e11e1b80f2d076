"""jobs.runtime.options: an option of a shared group parses and counts in the run id the same way in every config
that takes it, whichever words (help, default) the job gives it."""

import dataclasses
import importlib
import pkgutil
import typing
from dataclasses import dataclass

import jobs
from jobs.runtime.cli import JobConfig, default_run_id, parse_config
from jobs.runtime.options import EmbeddingsInput, LabelledInput, ManifestInput, ModelsRoot, PKBatches, tailored

GROUPS = (ModelsRoot, ManifestInput, EmbeddingsInput, LabelledInput, PKBatches)


@dataclass
class Plain(ManifestInput, JobConfig):
    pass


@dataclass
class Worded(ManifestInput, JobConfig):
    manifest: str = tailored(ManifestInput, "manifest", default="elsewhere", help="root with the manifest")


def test_a_tailored_option_keeps_its_marks_and_its_place():
    assert [f.name for f in dataclasses.fields(Plain)] == [f.name for f in dataclasses.fields(Worded)]
    manifest = next(f for f in dataclasses.fields(Worded) if f.name == "manifest")
    assert manifest.default == "elsewhere"
    assert dict(manifest.metadata) == {"positional": True, "run_key": True, "help": "root with the manifest"}
    assert Worded().manifest == "elsewhere" and Plain().manifest == "out/results"
    parsed = parse_config(Worded, ["m/", "--manifest-run-id", "r"], "demo", "")
    assert parsed == Worded(manifest="m/", manifest_run_id="r")
    # The same inputs give the same run id however the job words the option.
    assert default_run_id("demo", Plain(manifest="m/")) == default_run_id("demo", Worded(manifest="m/"))
    assert default_run_id("demo", Plain(manifest="m/")) != default_run_id("demo", Plain(manifest="n/"))


def _configs() -> set[type]:
    """Every config class of every command (and of the machinery they share)."""
    for info in pkgutil.iter_modules(jobs.__path__):
        if not info.ispkg:
            importlib.import_module(f"jobs.{info.name}")
    found, todo = set(), [JobConfig]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


def test_every_config_that_takes_a_group_keeps_its_types_and_marks():
    checked = set()
    for config in _configs():
        fields, types = {f.name: f for f in dataclasses.fields(config)}, typing.get_type_hints(config)
        for group in (g for g in GROUPS if issubclass(config, g)):
            for shared in dataclasses.fields(group):
                own = fields[shared.name]
                assert types[own.name] == typing.get_type_hints(group)[own.name], (config.__name__, own.name)
                for mark in ("positional", "run_key"):
                    assert own.metadata.get(mark) == shared.metadata.get(mark), (config.__name__, own.name, mark)
                checked.add((config.__name__, group.__name__))
    assert {("EmbedFacesConfig", "ManifestInput"), ("TrainCrossmodalConfig", "PKBatches")} <= checked
    assert len(checked) >= 20
