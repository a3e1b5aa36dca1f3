"""The project's import graph by room, checked and drawn: `python tools/import_graph.py [--write]`.

A room is a top-level package (`common`, `learner`, ...) or a part of `orchestration` (`orchestration.data`, ...).
Rooms sit on floors (FLOORS, lowest first); a module may import its own room and rooms on lower floors only, so
nothing imports upward and no two rooms of one floor know each other. Every import counts, those inside functions
too. `--write` puts the graph (mermaid) into docs/design.md between its markers; tests/test_layout.py checks that
the drawing is current, that no import goes upward, and that no import cycle exists between modules.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "learner", "reward_service", "rollout_workers", "orchestration")
FLOORS: list[tuple[str, ...]] = [
    ("common",),
    ("reward_service", "rollout_workers", "learner"),
    ("orchestration.config",),
    ("orchestration.data",),
    ("orchestration.evaluate",),
    ("orchestration.warmstart",),
    ("orchestration.driver",),
    ("orchestration.train",),
    ("orchestration.cli", "orchestration.benchmarks"),
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}
DOC, START, END = ROOT / "docs" / "design.md", "<!-- import-graph:start -->", "<!-- import-graph:end -->"


def modules() -> dict[str, Path]:
    """Every project module (dotted name -> file), packages as their __init__."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts != ["orchestration"]:  # the umbrella package: its parts are the rooms
                out[".".join(parts)] = path
    return out


def room(module: str) -> str:
    """The room of a dotted module name: the longest FLOORS entry it falls under."""
    best = max((r for r in FLOOR if module == r or module.startswith(r + ".")), key=len, default=None)
    if best is None:
        raise KeyError(f"module {module} is in no room: add its room to FLOORS in tools/import_graph.py")
    return best


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from package import name` counts as the submodule when
    `name` is one)."""
    out: dict[str, set[str]] = defaultdict(set)
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                         for a in node.names]
            for name in names:
                asked = name
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if not name and asked.split(".")[0] in PACKAGES:
                    raise ImportError(f"{path}: imports {asked}, which is no module of the project")
                if name and name != module:
                    out[module].add(name)
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the floors: into a higher floor, or into another room of the same floor."""
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = room(src), room(dst)
            if a != b and FLOOR[b] >= FLOOR[a]:
                bad.append(f"{src} ({a}, floor {FLOOR[a]}) imports {dst} ({b}, floor {FLOOR[b]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
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
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def mermaid(graph: dict[str, set[str]], known: dict[str, Path]) -> str:
    """Rooms as nodes (with their module count), import edges between rooms (with the number of module pairs),
    floors top-down."""
    counts: dict[str, int] = defaultdict(int)
    for module in known:
        counts[room(module)] += 1
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for src, targets in graph.items():
        for dst in targets:
            if room(src) != room(dst):
                edges[room(src), room(dst)] += 1
    node = {r: r.replace(".", "_") for r in FLOOR}
    lines = ["```mermaid", "graph TD"]
    for floor in reversed(FLOORS):
        for r in floor:
            if r in counts:
                lines.append(f'    {node[r]}["{r}<br/>{counts[r]} modules"]')
    for (a, b), n in sorted(edges.items(), key=lambda e: (-FLOOR[e[0][0]], FLOOR[e[0][1]], e[0])):
        lines.append(f"    {node[a]} -->|{n}| {node[b]}")
    lines.append("```")
    return "\n".join(lines)


def drawing() -> str:
    known = modules()
    return mermaid(imports(known), known)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update the graph in docs/design.md")
    args = parser.parse_args(argv)
    known = modules()
    graph = imports(known)
    problems = upward(graph) + [" -> ".join(c) for c in cycles(graph)]
    text = mermaid(graph, known)
    if args.write:
        doc = DOC.read_text()
        head, _, rest = doc.partition(START)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(text)
    for p in problems:
        print("layout:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
