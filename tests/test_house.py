"""The engine's structure, enforced: no import circle among engine/ modules (imports inside
functions count) and no function over ``MAX_LINES`` lines unless the line above its ``def``
says why (``# long: <reason>``)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
MAX_LINES = 80


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ENGINE.rglob("*.py")):
        rel = path.relative_to(ENGINE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), filename=str(path))
        out[name].lines = path.read_text().splitlines()
    return out


def import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the engine modules it imports, at any depth of its code."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def long_functions(modules: dict[str, ast.Module]) -> list[str]:
    out = []
    for name, tree in modules.items():
        lines = getattr(tree, "lines", [])
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            size = node.end_lineno - node.lineno + 1
            reason = lines[first - 2].strip() if first >= 2 else ""
            if size > MAX_LINES and not reason.startswith("# long:"):
                out.append(f"{name}.{node.name} ({size} lines, line {node.lineno})")
    return out


def test_the_checks_find_what_they_look_for():
    tree = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(tree) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    src = "def f():\n    from engine.x import y\n" + "    pass\n" * (MAX_LINES + 1)
    graph = import_graph({"engine.f": ast.parse(src), "engine.x": ast.parse("")})
    assert graph == {"engine.f": {"engine.x"}, "engine.x": set()}


def test_no_import_circle_among_engine_modules():
    assert cycles(import_graph(_modules())) == []


def test_no_engine_function_over_the_limit_without_a_reason():
    assert long_functions(_modules()) == []


def graph_table(graph: dict[str, set[str]]) -> str:
    """The import graph as docs/ARCHITECTURE.md shows it: one row per module."""
    rows = ["| module | imports from the engine |", "|---|---|"]
    for name in sorted(graph):
        deps = sorted(d.removeprefix("engine.") for d in graph[name] if d != "engine")
        rows.append(f"| {name.removeprefix('engine.') or 'engine'} | {', '.join(deps) or '—'} |")
    return "\n".join(rows)


def test_the_architecture_doc_shows_the_import_graph_the_code_has():
    doc = (ENGINE.parent / "docs" / "ARCHITECTURE.md").read_text()
    table = graph_table(import_graph(_modules()))
    assert table in doc, "docs/ARCHITECTURE.md: paste the output of `python -m tests.test_house`"


if __name__ == "__main__":
    print(graph_table(import_graph(_modules())))
