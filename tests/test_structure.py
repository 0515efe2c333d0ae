"""The code's layering: no import cycle between polyrec's parts, and models keep no state from a forward pass."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "polyrec"


def _module_name(path: Path) -> str:
    """``polyrec/data/tables.py`` → ``polyrec.data.tables``; a package's ``__init__.py`` → the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """Which of polyrec's modules each module imports, at any depth (imports inside functions too:
    a lazy import hides a cycle from the interpreter, not from the design). ``from a.b import c``
    is an edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _on_a_cycle(graph: dict[str, set[str]]) -> list[str]:
    def reaches(start, goal, seen):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in graph.get(start, ()))
    return sorted(node for node in graph if reaches(node, node, {node}))


def test_no_import_cycle_between_polyrecs_modules():
    graph = module_graph()
    assert _on_a_cycle(graph) == []
    assert "polyrec.data.rows" in graph["polyrec.data.stream"]   # the graph resolves submodule imports


def test_no_import_cycle_between_polyrecs_parts():
    """Parts: subpackages and top-level modules (``polyrec.data.tables`` → ``data``)."""
    part = lambda module: module.split(".")[1] if module.count(".") else None  # noqa: E731
    graph: dict[str, set[str]] = {}
    for source, targets in module_graph().items():
        if part(source) not in (None, "__main__"):
            graph.setdefault(part(source), set()).update(part(t) for t in targets if part(t) not in (None, part(source)))
    assert {"data", "text", "train", "evaluate", "serve", "weighting", "models"} <= set(graph)
    assert _on_a_cycle(graph) == []


def test_models_store_no_tensor_on_self_during_forward():
    offenders = []
    for path in [*(PACKAGE / "models").glob("*.py"), *(PACKAGE / "text").glob("*.py")]:
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("forward"):
                for node in ast.walk(fn):
                    targets = node.targets if isinstance(node, ast.Assign) else \
                        [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                    offenders += [f"{path.name}:{node.lineno}" for t in targets
                                  if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"]
    assert offenders == []
