"""The package imports one way (docs/architecture.md): a module may import its own layer and the layers below it,
never one above; packages import no loop; an import inside a function says why (``# lazy: <reason>``).

Read from the source with ``ast`` (nothing is imported), so a failure names the module, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "cplmix_explorer"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Lowest first; a module may import from its own layer and those before it.
LAYERS = ("core", "data", "model", "train", "analysis", "api", "workflows", "front")

#: The first name under cplmix_explorer/ -> its layer (a package, or a module at the top).
UNITS = {
    "config": "core", "errors": "core", "threads": "core", "files": "core",
    "data": "data", "datasets": "data",
    "model": "model",
    "train": "train",
    "analysis": "analysis",
    "api": "api",
    "workflows": "workflows",
    "cli": "front", "views": "front",
}

LAZY_MARK = "# lazy:"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str | None:
    """The package (or top module) a module belongs to: 'train' for cplmix_explorer.train.engine, an entry point
    on its own ('train.__main__'); None for the package's own __init__."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return ".".join(parts[1:])
    return parts[1] if len(parts) > 1 else None


def layer_of(module: str) -> str:
    if module.split(".")[-1] == "__main__":
        return "front"  # an entry point (python -m / torchrun): nothing imports it
    unit = module.split(".")[1]
    assert unit in UNITS, f"{module}: no layer; add '{unit}' to UNITS in tests/test_layers.py and docs/architecture.md"
    return UNITS[unit]


def imported_modules(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The cplmix_explorer modules an import statement names (absolute, resolved from relative form)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != PACKAGE:
        return []
    names = []
    for alias in node.names:  # `from . import plots` names a module
        candidate = f"{target}.{alias.name}"
        path = ROOT.parent / Path(*candidate.split("."))
        names.append(candidate if path.with_suffix(".py").exists() or path.is_dir() else target)
    return names


def function_level_imports(tree: ast.Module):
    """Import statements inside a function body (at any depth)."""
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield node


def reason_line(node: ast.stmt, lines: list[str], nested: dict[int, ast.stmt]) -> str:
    """The line that may carry an import's reason: the line above it, or above the first import of the run
    of consecutive imports it belongs to (one comment covers a block of lazy imports)."""
    first = node
    while (previous := nested.get(first.lineno - 1)) is not None:
        first = previous
    return lines[first.lineno - 2].strip() if first.lineno > 1 else ""


def scan():
    """(module, line, imported module, inside a function, source line, line above) for every import."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, str(path))
        inside = list(function_level_imports(tree))
        nested = {id(node) for node in inside}
        by_end = {node.end_lineno: node for node in inside}  # an import by the line it ends on
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                line = lines[node.lineno - 1]
                above = reason_line(node, lines, by_end) if id(node) in nested else ""
                targets = imported_modules(node, module, path.name == "__init__.py") or [None]
                for target in targets:
                    found.append((module, node.lineno, target, id(node) in nested, line.strip(), above))
    return found


IMPORTS = scan()


def test_every_module_has_a_layer():
    for module, *_ in IMPORTS:
        if unit_of(module) is not None:
            layer_of(module)


def test_no_upward_import():
    upward = []
    for module, line, target, _, text, _ in IMPORTS:
        if target is None or unit_of(module) is None or unit_of(target) is None:
            continue
        if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
            upward.append(f"{module} ({layer_of(module)}) line {line} imports {target} ({layer_of(target)}): {text}")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_loop_between_packages():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for module, line, target, _, text, _ in IMPORTS:
        if target is None or unit_of(module) is None or unit_of(target) is None:
            continue
        a, b = unit_of(module), unit_of(target)
        if a != b:
            graph.setdefault(a, set()).add(b)
            where.setdefault((a, b), f"{module} line {line}: {text}")

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            unit = stack.pop()
            if unit == goal:
                return True
            if unit not in seen:
                seen.add(unit)
                stack.extend(graph.get(unit, ()))
        return False

    loops = [f"{a} -> {b} ({where[a, b]}) and {b} reaches {a} back"
             for a, targets in graph.items() for b in targets if reaches(b, a)]
    assert not loops, "import loops between packages:\n" + "\n".join(sorted(loops))


def test_imports_inside_functions_say_why():
    unmarked = [f"{module} line {line}: {text}" for module, line, _, nested, text, above in IMPORTS
                if nested and LAZY_MARK not in text and not above.startswith(LAZY_MARK)]
    assert not unmarked, ("imports inside a function without a '# lazy: <reason>' comment on the line or the "
                          "line above:\n" + "\n".join(sorted(set(unmarked))))


def test_the_check_sees_an_upward_import(tmp_path):
    """The scanner resolves relative imports as Python does (what the tests above rely on)."""
    tree = ast.parse("from ..api import CplMixVAE\nfrom . import engine\nfrom .. import config\n")
    names = [imported_modules(node, f"{PACKAGE}.train.run", False) for node in tree.body]
    assert names == [[f"{PACKAGE}.api"], [f"{PACKAGE}.train.engine"], [f"{PACKAGE}.config"]]
    assert LAYERS.index(layer_of(f"{PACKAGE}.api")) > LAYERS.index(layer_of(f"{PACKAGE}.train.run"))
