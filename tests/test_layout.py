"""The house's floors (tools/import_graph.py): no room imports a room above it or beside it, no import cycle, and
the import graph drawn in docs/design.md is the current one (regenerate: python tools/import_graph.py --write)."""
import ast

from tools.import_graph import DOC, END, START, cycles, drawing, imports, modules, room, upward


def test_no_room_imports_upward_and_no_module_cycle():
    known = modules()
    graph = imports(known)
    assert {room(m) for m in known} >= {"orchestration.data", "orchestration.driver", "orchestration.warmstart",
                                         "orchestration.benchmarks", "common", "learner"}
    assert upward(graph) == []
    assert cycles(graph) == []
    assert "orchestration.warmstart.sft" in graph["orchestration.train"], "the walk sees imports inside functions"


def test_the_design_doc_draws_the_current_import_graph():
    doc = DOC.read_text()
    assert doc.split(START)[1].split(END)[0].strip() == drawing().strip(), (
        "docs/design.md's import graph is stale: run python tools/import_graph.py --write")


def test_public_functions_and_classes_have_docstrings():
    """Module-level and class-level public definitions (nested helpers are not API)."""
    missing = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        scopes = [tree] + [n for n in tree.body if isinstance(n, ast.ClassDef)]
        for scope in scopes:
            for node in scope.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") \
                        and ast.get_docstring(node) is None:
                    missing.append(f"{path.relative_to(DOC.parents[1])}:{node.lineno} {node.name}")
    assert not missing, missing
