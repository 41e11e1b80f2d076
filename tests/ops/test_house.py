"""The shape of the code: no import circle in ops/ or jobs/, jobs/ as commands over two rooms of machinery (runtime,
archive), each ops sub-package imports alone (without Ray and without the test aids), and loading one model imports
only its own module."""

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = (
    "io",
    "media",
    "models",
    "faces",
    "voices",
    "matching",
    "attributes",
    "training",
    "style",
    "report",
    "testing",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (function bodies too), TYPE_CHECKING aside."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for folder in ("ops", "jobs") for p in (ROOT / folder).rglob("*.py")]
    known = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, known) for p in files}
    # Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too: a package depends on nothing by that.
    return {m: {d for d in deps if d != m} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_ops_or_jobs():
    graph = import_graph()
    assert "ops.models.registry" in graph and "jobs.runtime.output" in graph
    assert cycles(graph) == []


COMPOSERS = {"jobs.pipeline", "jobs.find"}  # they run other commands as stages, through their JOB, config and run


def test_jobs_holds_commands_over_two_rooms_of_machinery():
    graph = import_graph()
    rooms = {"jobs.runtime", "jobs.archive"}
    commands = {m for m in graph if m.startswith("jobs.") and m.count(".") == 1 and m not in rooms}
    for path in (ROOT / "jobs").glob("*.py"):  # every module at the top is a command: `python -m jobs.<name>`
        if path.stem != "__init__":
            assert "main" in {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}, path
    for module in sorted(commands - COMPOSERS):
        assert graph[module] & commands == set(), f"{module} imports a command: {sorted(graph[module] & commands)}"
    for module in (m for m in graph if m.startswith("jobs.runtime.")):
        assert all(d.startswith(("ops.", "jobs.runtime")) for d in graph[module]), (module, graph[module])
    for module in (m for m in graph if m.startswith("jobs.archive.")):
        allowed = ("ops.", "jobs.runtime", "jobs.archive")
        assert all(d.startswith(allowed) for d in graph[module]), (module, graph[module])


def test_the_product_never_imports_the_test_aids():
    graph = import_graph()
    product = {m for m in graph if not m.startswith("ops.testing")}
    allowed = {"jobs.sample", "jobs.synthesize"}  # they write the sample archive and synthetic identities
    users = {m for m in product - allowed if any(d.startswith("ops.testing") for d in graph[m])}
    assert users == set()


def test_ops_imports_no_jobs_and_no_ray():
    graph = import_graph()
    assert {m for m in graph if m.startswith("ops") and any(d.startswith("jobs") for d in graph[m])} == set()
    for path in (ROOT / "ops").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n == "ray" or n.startswith("ray.") for n in names), path


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter at the project root; it prints one JSON value."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loaded_by(modules: list[str]) -> list[str]:
    return _fresh(
        f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )


def test_each_ops_subpackage_imports_alone_in_a_fresh_interpreter():
    listed = {
        sub: sorted(f"ops.{sub}.{p.stem}" for p in (ROOT / "ops" / sub).glob("*.py") if p.stem != "__init__")
        for sub in SUBPACKAGES
    }
    with ThreadPoolExecutor(2) as pool:  # a fresh interpreter each, two at a time
        loaded = dict(zip(listed, pool.map(_loaded_by, listed.values()), strict=True))
    for sub, modules in loaded.items():
        assert "ray" not in modules, sub
        if sub != "testing":
            assert not [m for m in modules if m.startswith("ops.testing")], sub


def test_jobs_that_touch_no_model_do_not_import_torch():
    """A Ray worker imports the module of each task it runs: torch would add 1.4 s to the start of every worker
    that hashes objects, verifies pairs or fuses scores."""
    jobs = ["jobs.manifest", "jobs.calibrate", "jobs.persons", "jobs.export", "jobs.show", "jobs.delete"]
    jobs += ["jobs.archive.manifest_diff", "jobs.archive.fuse", "jobs.archive.verify"]
    assert "torch" not in _loaded_by(jobs)


def test_the_registry_imports_none_of_its_entries():
    loaded = _fresh(
        "import json, sys\nimport ops.models.registry, ops.models.catalogue\nprint(json.dumps(sorted(sys.modules)))"
    )
    assert [m for m in loaded if m.startswith(("ops.faces", "ops.voices", "ops.style", "ops.matching"))] == []


@pytest.fixture(scope="module")
def vgg19_root(tmp_path_factory):
    """A vgg19-torchvision model in the registry: seeded random features, stored as an import stores them."""
    import torchvision

    from ops.io.storage import resolve
    from ops.models.registry import store_model

    root = resolve(str(tmp_path_factory.mktemp("models")))
    torch.manual_seed(0)
    state = torchvision.models.vgg19(weights=None).features.state_dict()
    store_model(root, "vgg19", "vgg19-torchvision", state, {"file": "test", "sha256": None}, {"task": "style"})
    return root


def test_loading_vgg19_imports_only_its_own_model_module(vgg19_root):
    loaded = _fresh(
        "import json, sys\n"
        "from ops.models import catalogue\n"
        f"model = catalogue.load('vgg19', {vgg19_root.uri!r}, expect='style-loss-network')\n"
        "net = catalogue.build(model, 'cpu')\n"
        "assert type(net).__name__ == 'LossNetwork', type(net)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert "ops.style.vgg" in loaded
    assert "torchaudio" not in loaded and "ops.faces.dlib_format" not in loaded
    model_modules = {"ops.faces.mtcnn", "ops.faces.dlib_resnet", "ops.faces.adapters", "ops.voices.ge2e"}
    assert model_modules.isdisjoint(loaded) and "ops.voices.silero" not in loaded


def test_no_function_over_80_lines_in_jobs_or_ops():
    long = []
    for path in (p for folder in ("ops", "jobs") for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert long == []
