"""Import contracts, read from the source with ``ast`` (every import, at any depth, counts, except
under ``if TYPE_CHECKING:``): no import cycle anywhere, the edge never imports the trainer or torch,
and the trainer's packages form layers. A lazy import inside a function is still a dependency: it
only moves the failure from start-up to the first call."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "trainer", "deploy", "benchmarks")

# The trainer's packages from top to bottom: a package may import those on its own row or below.
# Same-row packages may not import each other (they are independent of one another).
TRAINER_LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("pipeline",),
    ("engine", "prune"),
    ("eval",),
    ("data", "export"),
    ("models", "loss"),
    ("layers", "config"),
)


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path], name: str) -> set[str]:
    """Modules of ours (and external top-level names) that ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` bodies are types only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)  # `from pkg import submodule` needs only it
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules, name) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root] & graph.keys())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child] & graph.keys()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_anywhere(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_planted_cycle(graph: dict[str, set[str]]) -> None:
    planted = {**graph, "edge.config": graph["edge.config"] | {"edge.daemon"}}
    assert any({"edge.config", "edge.daemon"} <= set(c) for c in _cycles(planted))


def test_edge_never_imports_the_trainer_or_torch(graph: dict[str, set[str]]) -> None:
    bad = {
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.split(".")[0] == "edge"
        for dep in deps
        if dep.split(".")[0] in ("trainer", "torch", "torchvision", "benchmarks", "deploy")
    }
    assert not bad, sorted(bad)


def test_trainer_packages_form_layers(graph: dict[str, set[str]]) -> None:
    row = {pkg: i for i, layer in enumerate(TRAINER_LAYERS) for pkg in layer}
    bad = []
    for mod, deps in graph.items():
        parts = mod.split(".")
        if parts[0] != "trainer" or len(parts) < 2:
            continue
        here = parts[1]
        for dep in deps:
            dparts = dep.split(".")
            if dparts[0] != "trainer" or len(dparts) < 2 or dparts[1] == here:
                continue
            there = dparts[1]
            assert here in row and there in row, f"{mod} or {dep}: a trainer package missing from the layers"
            if row[there] <= row[here]:  # upwards, or sideways to an independent package
                bad.append(f"{mod} -> {dep}")
    assert not bad, sorted(bad)
