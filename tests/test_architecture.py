"""The architecture rules of issue 11, checked on the source text (no softcal module is imported).

- no module under src/softcal over 300 lines, no function or method over 60 lines;
- imports only run down the layers (same layer or lower), at module level and inside functions
  and ``TYPE_CHECKING`` blocks alike, and ``data`` and ``calibration`` do not import each other;
- no import cycle among softcal's modules, counting the same imports (an import inside a
  function that closes a cycle only hides it until the function runs);
- no ``utils`` module: every module says what it is for.

Each failure lists every offender with its file and line, so the message says what to fix.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "softcal"

MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60

# Lowest first. The key is the first name below ``softcal`` ("" is the package's own __init__).
# ``softcal.configs`` is data (YAML read with importlib.resources), not code: it has no layer.
LAYERS: dict[str, int] = {
    "": 0,
    "errors": 0,
    "checks": 0,  # option-value rules: imports errors only
    "atomic_files": 0,  # the one atomic, fsynced file writer: imports errors only
    "config_files": 0,  # finds packaged configs by name: imports errors only
    "allocator": 0,
    "softmax_demo": 0,
    "data": 1,
    "calibration": 1,
    "uncertainty": 1,  # selective prediction and OOD detection: scores and metrics
    "shift": 1,  # the CIFAR-10-C corruptions: torch/numpy/PIL, errors, and data's default root
    "conformal": 1,  # split conformal sets on probabilities: imports errors only
    "model": 2,
    "runs": 3,
    "evaluation": 4,  # evaluate's pipeline: the context of a reopened run and its analyses
    "apps": 5,
    "sweep": 5,  # the sweep is an app: its trials are runs of apps.train, its command is apps.sweep
}
NOT_CODE = {"configs"}
# Same layer, but independent of each other: the first may not import the second. calibration
# may import conformal (the run's calibration stores conformal thresholds), never the reverse.
SEPARATE = {
    ("data", "calibration"), ("calibration", "data"),
    ("conformal", "data"), ("data", "conformal"),
    ("conformal", "calibration"),
}  # fmt: skip


def source_files() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no modules found under {PACKAGE}"
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def where(path: Path, line: int | None = None) -> str:
    rel = path.relative_to(SRC.parent).as_posix()
    return f"{rel}:{line}" if line is not None else rel


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_modules(path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    """Every module an import statement anywhere in ``tree`` names, as (line, dotted name).

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule); relative imports
    are resolved against the importing module's package.
    """
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")
    return found


def layer_key(dotted: str) -> str | None:
    """The LAYERS key of a softcal module name, or None for a module outside softcal."""
    parts = dotted.split(".")
    if parts[0] != "softcal":
        return None
    return parts[1] if len(parts) > 1 else ""


def test_sources_are_found_and_every_module_has_a_layer() -> None:
    unlisted = sorted(
        f"{where(path)}: add '{key}' to LAYERS in tests/test_architecture.py"
        for path in source_files()
        if (key := layer_key(module_name(path))) not in LAYERS
    )
    assert not unlisted, "modules with no layer:\n" + "\n".join(unlisted)


def test_no_module_over_300_lines() -> None:
    too_long = []
    for path in source_files():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_MODULE_LINES:
            too_long.append(f"{where(path)}: {count} lines")
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(too_long)


def test_no_function_over_60_lines() -> None:
    too_long = []
    for path in source_files():
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # lineno is the ``def`` line: decorators do not count.
                count = node.end_lineno - node.lineno + 1
                if count > MAX_FUNCTION_LINES:
                    too_long.append(f"{where(path, node.lineno)}: {node.name}() is {count} lines")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)


def layering_errors(path: Path, tree: ast.Module) -> list[str]:
    """One message per import statement of ``tree`` that reaches a higher or a separate layer."""
    own = layer_key(module_name(path))
    seen: dict[tuple[int, str], str] = {}  # (line, layer) -> the shortest name: ``a`` over ``a.b``
    for line, dotted in imported_modules(path, tree):
        target = layer_key(dotted)
        if target is not None and target not in NOT_CODE and target != own:
            seen.setdefault((line, target), dotted)
    errors = []
    for (line, target), dotted in sorted(seen.items()):
        if target not in LAYERS:
            errors.append(f"{where(path, line)}: imports {dotted}, which has no layer")
        elif LAYERS[target] > LAYERS[own]:
            errors.append(f"{where(path, line)}: {own or 'softcal'} imports {dotted}, a higher layer")
        elif (own, target) in SEPARATE:
            errors.append(f"{where(path, line)}: {own} imports {dotted}; {own} and {target} are separate")
    return errors


def test_imports_only_run_down_the_layers() -> None:
    errors = [error for path in source_files() for error in layering_errors(path, parse(path))]
    assert not errors, "imports that break the layering:\n" + "\n".join(errors)


#: module -> {softcal module it imports: the line of its first import statement naming it}
Graph = dict[str, dict[str, int]]


def import_graph(trees: dict[Path, ast.Module]) -> Graph:
    """Which softcal module imports which, from every import statement in each file (module
    level, functions, ``TYPE_CHECKING`` blocks); ``from a import b`` counts ``a.b`` when that is
    a module, else ``a``."""
    names = {module_name(path) for path in trees}
    graph: Graph = {name: {} for name in names}
    for path, tree in trees.items():
        own = module_name(path)
        for line, dotted in imported_modules(path, tree):
            if dotted in names and dotted != own:
                graph[own][dotted] = min(line, graph[own].get(dotted, line))
    return graph


def _components(graph: Graph) -> list[set[str]]:
    """The strongly connected components (Tarjan): modules that all reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:  # node is the first of a component: pop it whole
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_cycles(graph: Graph) -> list[list[str]]:
    """Every module on a cycle gets the shortest cycle through it (first module the smallest
    name, last = first), each distinct cycle once, sorted."""
    cycles: set[tuple[str, ...]] = set()
    for component in _components(graph):
        for start in component:
            before: dict[str, str] = {}
            queue = deque([start])
            while queue and start not in before:
                node = queue.popleft()
                for nxt in sorted(graph[node]):
                    if nxt in component and nxt not in before:
                        before[nxt] = node
                        queue.append(nxt)
            if start not in before:  # a component of one module that does not import itself
                continue
            path = [start]
            while len(path) == 1 or path[-1] != start:
                path.append(before[path[-1]])
            ring = path[::-1][:-1]
            first = ring.index(min(ring))
            cycles.add(tuple(ring[first:] + ring[:first]))
    return [[*cycle, cycle[0]] for cycle in sorted(cycles)]


def describe_cycle(cycle: list[str], graph: Graph, files: dict[str, Path]) -> str:
    """``a (src/softcal/a.py:3) -> b (src/softcal/b.py:9) -> a``: each import and its line."""
    steps = [f"{a} ({where(files[a], graph[a][b])})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join([*steps, cycle[-1]])


def test_no_import_cycles() -> None:
    trees = {path: parse(path) for path in source_files()}
    graph = import_graph(trees)
    files = {module_name(path): path for path in trees}
    cycles = [describe_cycle(cycle, graph, files) for cycle in import_cycles(graph)]
    assert not cycles, "import cycles (each arrow an import statement):\n" + "\n".join(cycles)


def test_cycle_check_follows_imports_inside_functions() -> None:
    """The cycle finder must see an import inside a function, name the line of every import on
    the way round, and leave a module that merely imports into a cycle out of it."""
    sources = {
        "a.py": "import os\n\ndef f():\n    from softcal.b import thing",
        "b.py": "from softcal import c",  # softcal.c as a module: ``from softcal import c``
        "c.py": "if TYPE_CHECKING:\n    import softcal.a",
        "d.py": "import softcal.a",  # into the cycle, not on it
        "e/__init__.py": "",
        "e/f.py": "from . import g",  # a second cycle, by relative imports
        "e/g.py": "from .f import h",
    }
    trees = {PACKAGE / name: ast.parse(text) for name, text in sources.items()}
    graph = import_graph(trees)
    cycles = import_cycles(graph)
    assert cycles == [["softcal.a", "softcal.b", "softcal.c", "softcal.a"],
                      ["softcal.e.f", "softcal.e.g", "softcal.e.f"]]  # fmt: skip
    files = {module_name(path): path for path in trees}
    assert describe_cycle(cycles[0], graph, files) == (
        "softcal.a (src/softcal/a.py:4) -> softcal.b (src/softcal/b.py:1) -> softcal.c"
        " (src/softcal/c.py:2) -> softcal.a"
    )


def test_no_utils_module() -> None:
    vague = [
        where(path)
        for path in PACKAGE.rglob("*")
        if path.stem in {"utils", "util"} and (path.suffix == ".py" or path.is_dir())
    ]
    assert not vague, "name these modules after what they do:\n" + "\n".join(sorted(vague))


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("calibration/metrics.py", "def f():\n    from softcal.model.module import Classifier", ["model"]),
        ("calibration/metrics.py", "from softcal.data import loader", ["data"]),
        ("data/loader.py", "from ..calibration import metrics", ["calibration"]),
        ("runs/load.py", "if TYPE_CHECKING:\n    import softcal.apps.cli", ["apps"]),
        ("errors.py", "from softcal import runs", ["runs"]),
        ("apps/cli.py", "from softcal.runs import load\nimport softcal.errors\nimport softcal.configs", []),
        ("model/module.py", "from softcal.data.loader import Batch\nfrom . import nets", []),
    ],
)
def test_layering_check_flags_upward_and_sideways_imports(
    module: str, source: str, expected: list[str]
) -> None:
    """The finder must see imports inside functions and TYPE_CHECKING blocks and resolve relative
    ones, or the layering test above passes whatever the sources import."""
    errors = layering_errors(PACKAGE / module, ast.parse(source))
    assert len(errors) == len(expected), errors
    for error, layer in zip(errors, expected, strict=True):
        assert f"imports softcal.{layer}" in error and f"src/softcal/{module}:" in error
