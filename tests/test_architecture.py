"""The layer rule of ../shared/ARCHITECTURE.md (as docs/architecture.md maps it), checked on the
import graph of the project.

Every module of ``common``, ``data_prep`` and ``pipeline`` is parsed (not imported); an import
under ``if TYPE_CHECKING:`` is a type-only import and does not count, an import inside a
function does (it still runs). Fails on any import cycle, on a module that imports a higher
layer, and on the size limits (no file over 400 lines outside model definitions, no function
over 60 lines outside the list in ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "data_prep", "pipeline")

# lowest first; a module may import its own layer and the ones below it, never one above
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("common", ("common",)),
    ("data prep", ("data_prep",)),
    ("base", ("pipeline.config", "pipeline.config_stages", "pipeline.metrics", "pipeline.runtime",
              "pipeline.scores")),
    ("models", ("pipeline.models",)),
    ("components", ("pipeline.data", "pipeline.optim")),
    ("run folders", ("pipeline.runs",)),
    ("reports", ("pipeline.report",)),
    ("train", ("pipeline.train",)),
    ("infer", ("pipeline.infer",)),
    ("ensemble", ("pipeline.ensemble",)),
    ("submit", ("pipeline.submit",)),
    ("faces", ("pipeline.__main__", "pipeline.models.__main__", "data_prep.__main__")),
]
# components that read files only: never build or import a network
NO_MODELS = ("pipeline.ensemble", "pipeline.report", "pipeline.metrics", "pipeline.data", "pipeline.optim")

# functions allowed over 60 lines, each with its reason in docs/architecture.md ("Size limits")
LONG_FUNCTIONS: set[str] = {"pipeline.models.van.__init__"}  # docs/architecture.md, "Size limits"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
MODEL_DEFINITIONS = ("pipeline/models/",)  # model definitions may be longer files


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def _resolve(name: str) -> str | None:
    """The project module an import names (``pipeline.train.stage.fit`` -> ``pipeline.train.stage``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            target = _resolve(n)
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} belongs to no layer of LAYERS: add it")
    return rank


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_layer_and_imports_none_above_it():
    bad = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_faces_import_no_other_face():
    faces = LAYERS[-1][1]
    bad = [f"{m} imports {t}" for m in faces if m in GRAPH for t in GRAPH[m] if t in faces]
    assert not bad, bad


def test_file_readers_never_import_the_models():
    bad = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if m.startswith(NO_MODELS)
        for t in targets
        if t.startswith("pipeline.models")
    ]
    assert not bad, bad


def test_one_place_for_run_folders_and_checkpoints():
    """DONE markers and torch.load live in pipeline.runs only (scan, checkpoints; the registry's
    pretrained-weights loader reads a user's weights file)."""
    bad = []
    for m, path in MODULES.items():
        text = path.read_text()
        if "torch.load(" in text and m not in ("pipeline.runs.checkpoints", "pipeline.models.weights_file"):
            bad.append(f"{m}: torch.load")
        if "RUN_DONE" in text and not m.startswith(("pipeline.runs", "common.schema")):
            bad.append(f"{m}: RUN_DONE")
    assert not bad, bad


def _long_functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append((node.name, n))
    return out


def test_no_long_functions_outside_the_list():
    bad = [
        f"{m}.{name}: {n} lines"
        for m, path in MODULES.items()
        for name, n in _long_functions(path)
        if f"{m}.{name}" not in LONG_FUNCTIONS
    ]
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_file_size(module):
    path = MODULES[module]
    rel = path.relative_to(ROOT).as_posix()
    n = len(path.read_text().splitlines())
    assert rel.startswith(MODEL_DEFINITIONS) or n <= MAX_FILE_LINES, f"{rel}: {n} lines > {MAX_FILE_LINES}"
