"""The package's shape: no import cycle between contend's modules, pure modules stay pure.

Read from the source with ``ast`` (every import, also those inside functions), so the check does not
depend on what other tests happened to import first.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "contend"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Return every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
               for stmt in node.body for n in ast.walk(stmt)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def import_graph() -> dict[str, set[str]]:
    """Return contend module -> the contend modules it imports anywhere in its source."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:  # `from pkg import module` imports the module
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


# Django's idiom: a model's method imports its helper lazily and the helper imports the model lazily
# (models cannot load before the app registry); Job.logger mirrors Antenna's.
ALLOWED = [["contend.refserver.joblog", "contend.refserver.models"]]


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert {"contend.scenario", "contend.gate", "contend.thresholds", "contend.analysis"} <= set(graph)
    assert [c for c in cycles(graph) if c not in ALLOWED] == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_load_process_imports_locust() -> None:
    # locust monkey-patches the interpreter with gevent on import: never in contend's own process.
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] in ("locust", "gevent") for name in names):
                importers.add(_module_name(path))
    inside = {"contend.load.child", "contend.load.users", "contend.load.locustfile"}
    assert importers == inside
    graph = import_graph()
    assert not any(inside & reachable(graph, m) for m in graph if m not in inside)


def test_thresholds_and_stack_summary_are_pure() -> None:
    graph = import_graph()
    assert reachable(graph, "contend.thresholds") <= {"contend.metrics"}
    assert reachable(graph, "contend.diagnosis.threads") == {"contend.diagnosis.sources"}
    assert "contend.sample.pyspy" not in reachable(graph, "contend.analysis")
    assert "contend.gate" not in reachable(graph, "contend.scenario")


def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def test_the_diagnosis_is_pure_and_has_one_home() -> None:
    graph = import_graph()
    diagnosis = {m for m in graph if m.startswith("contend.diagnosis")}
    assert {"contend.diagnosis.waitgraph", "contend.diagnosis.findings"} <= diagnosis
    for module in diagnosis:  # pure: it imports nothing of contend outside itself
        assert reachable(graph, module) <= diagnosis, module
    # The samplers and the analysis read meaning through the diagnosis: none defines a second copy of
    # one of its functions or classes, and none reads source code to tell locks apart.
    defined = set().union(*(_top_level_names(p) for p in (PACKAGE / "diagnosis").glob("*.py")))
    for room in ("sample", "analysis"):
        for path in (PACKAGE / room).glob("*.py"):
            assert not (_top_level_names(path) & defined), path
            imports = [a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import)
                       for a in n.names]
            assert "ast" not in imports, path


def test_one_module_redacts_secrets() -> None:
    defining = [p for p in PACKAGE.rglob("*.py")
                if {"redact_message", "redact_dsn"} & _top_level_names(p)]
    assert defining == [PACKAGE / "redact.py"]
