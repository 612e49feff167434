"""The house rules of the code base, checked on its source: imports point down the floors of
the README's "Code layout" (never up, never sideways between the two algorithms or the two
network fronts), no two modules import each other through any chain, no function is longer
than the limit, and the package version is stated once."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import fedcot

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SRC = Path(fedcot.__file__).resolve().parent
ROOT = SRC.parents[1]

# Lowest first. A module belongs to the first entry its dotted name starts with.
FLOORS = [
    ("runs", "errors", "strict", "progress", "procs", "version"),
    ("data",),
    ("models",),
    ("privacy",),
    ("train",),
    ("config", "evaluation"),
    ("cot", "mkt"),
    ("federation", "serving"),
    ("cli", "demo", "__main__", ""),
]
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in SRC.rglob("*.py")}


def _imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Every fedcot module ``name`` imports, anywhere in the file (relative to ``fedcot``)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            targets = [".".join(["fedcot", *base, *([node.module] if node.module else [])])]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module]
        else:
            continue
        for t in targets:
            if t == "fedcot" or t.startswith("fedcot."):
                out.add(t.removeprefix("fedcot").removeprefix("."))
    return out


def _graph() -> dict[str, set[str]]:
    trees = _modules()
    known = set(trees)
    graph = {}
    for name, tree in trees.items():
        is_package = (SRC / name.replace(".", "/") / "__init__.py").exists() or name == ""
        # An import of a name from a package counts as an import of the package.
        deps = {d for d in _imports(tree, name, is_package) if d in known}
        graph[name] = deps - {name}
    return graph


def _floor(module: str) -> tuple[int, str]:
    head = module.split(".")[0]
    for level, names in enumerate(FLOORS):
        if head in names:
            return level, head
    raise AssertionError(f"module {module!r} is on no floor: add it to FLOORS and the README")


def test_imports_point_down_and_never_sideways_between_algorithms():
    wrong = []
    for module, deps in _graph().items():
        level, head = _floor(module)
        for dep in deps:
            dep_level, dep_head = _floor(dep)
            up = dep_level > level
            sideways = dep_level == level and dep_head != head and level in (6, 7)
            if up or sideways:
                wrong.append(f"{module} → {dep}")
    assert not wrong, "imports against the floors: " + ", ".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_function_is_longer_than_the_limit():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_version_is_stated_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["version"] == fedcot.__version__


def test_the_rules_catch_an_arrow_up():
    tree = ast.parse("from fedcot.cot.client import run_fedcot\n")
    assert _imports(tree, "data.tasks", False) == {"cot.client"}
    assert _floor("cot.client")[0] > _floor("data.tasks")[0]
