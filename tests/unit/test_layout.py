"""The house rules of docs/design.md that code can check: no import cycle among library modules (function-level
imports included), no library module over 450 lines, and nothing under card/ that knows a loss term by name."""

import ast
import re

from tiny import ROOT

from hf_distil.terms import registered

PACKAGE = ROOT / "hf_distil"


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports():
    """{module: the library modules it imports}, relative and absolute, at any depth of the file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("hf_distil")):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                deps.add(module)
                deps.update(f"{module}.{alias.name}" for alias in node.names)
        found[name] = deps
    return {name: {d for d in deps if d in found and d != name} for name, deps in found.items()}


def test_no_import_cycle_among_library_modules():
    graph = imports()
    assert "hf_distil.terms" in graph and graph["hf_distil.trainer"]
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                raise AssertionError(f"import cycle: {' → '.join(path[path.index(dep):] + [dep])}")
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_library_module_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long


def test_the_card_knows_no_term_by_name():
    """The card's formula, procedure, metric names and plot come from the registry."""
    names = "|".join(re.escape(t.name) for t in registered())
    weights = "|".join(re.escape(t.weight) for t in registered())
    pattern = re.compile(rf"\b({weights})\b|[\"']({names})[\"']|\b({names})_loss\b")
    hits = [f"{p.name}: {m.group(0)}" for p in (PACKAGE / "card").rglob("*.py")
            for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert not hits
