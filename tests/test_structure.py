"""The code's layering: no import cycle between polyrec's parts, and models keep no state from a forward pass."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "polyrec"


def _part(module: str) -> str | None:
    """``polyrec.data.tables`` → ``data``; ``polyrec.config`` → ``config``."""
    names = module.split(".")
    return names[1] if names[0] == "polyrec" and len(names) > 1 else None


def import_graph() -> dict[str, set[str]]:
    """Which of polyrec's parts (subpackages and top-level modules) each part imports, at any depth."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        source = _part(".".join(relative.parts))
        if source in (None, "__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in map(_part, targets):
                if target and target != source:
                    graph.setdefault(source, set()).add(target)
    return graph


def test_no_import_cycle_between_polyrecs_parts():
    graph = import_graph()
    assert {"data", "text", "train", "evaluate", "serve", "weighting", "models"} <= set(graph)

    def reaches(start, goal, seen):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in graph.get(start, ()))

    cycles = sorted(part for part in graph if reaches(part, part, {part}))
    assert cycles == [], f"parts on an import cycle: {cycles}"


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
