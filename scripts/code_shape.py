"""The shape of ptjax's code, measured: import cycles, layering breaches, reaches into other
modules' private names, function-level imports, the longest files and the README's length.

    python scripts/code_shape.py [--json]

Reads the source with `ast` (nothing is imported). Every import counts, function-level ones
too. Layers (STYLE.md): models import neither data, tasks nor train; data imports neither
models nor train; decoding imports neither data pipelines nor train. tests/test_layering.py
holds ptjax to the parts that are fixed.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "ptjax"
MAX_LINES = 700

# (importing package prefix, imported prefixes it must not reach).
LAYERS = (
    ("ptjax.models", ("ptjax.data", "ptjax.tasks", "ptjax.train")),
    ("ptjax.data", ("ptjax.models", "ptjax.train")),
    ("ptjax.decoding", ("ptjax.data", "ptjax.train")),
)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def modules(root: str = ROOT) -> dict[str, str]:
    """{dotted module name: path} of every module of the package."""
    out = {}
    base = os.path.join(root, PACKAGE)
    for folder, _, files in os.walk(base):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
            out[rel.removesuffix(".__init__")] = path
    return out


def _resolve(name: str, known: dict[str, str]) -> str | None:
    """The package module `name` is, or lives in (a name imported from a module)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: str, known: dict[str, str]) -> Iterator[tuple[str, int, bool]]:
    """(imported package module, line, at function level) of each import in `module`."""
    tree = ast.parse(_read(path), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]

    def visit(node: ast.AST, nested: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _resolve(alias.name, known)
                    if target:
                        yield target, child.lineno, nested
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in child.names:
                    target = _resolve(f"{base}.{alias.name}", known) or _resolve(base, known)
                    if target:
                        yield target, child.lineno, nested
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # Annotations only.
            yield from visit(child, inner)

    yield from visit(tree, False)


def _is_type_checking(test: ast.AST) -> bool:
    return isinstance(test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(test)


def graph(root: str = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, _, _ in imports(module, path, known):
            if target != module and not module.startswith(target + "."):
                edges[module].add(target)  # A package's own __init__ is not a cycle.
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return sorted(found, key=len, reverse=True)


def layer_breaches(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(edges.items()):
        for prefix, banned in LAYERS:
            if module == prefix or module.startswith(prefix + "."):
                for target in sorted(targets):
                    if any(target == b or target.startswith(b + ".") for b in banned):
                        if prefix == "ptjax.decoding" and target == "ptjax.data.tokenizer":
                            continue  # Decoding turns ids into text: the tokenizer is its own.
                        out.append(f"{module} -> {target}")
    return out


def private_reaches(root: str = ROOT) -> list[str]:
    """`module._name` uses and `from module import _name` across package modules."""
    known = modules(root)
    out = []
    for module, path in sorted(known.items()):
        tree = ast.parse(_read(path), path)
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in known:
                        aliases[alias.asname or alias.name] = full
                    elif node.module in known and node.module != module and alias.name[0] == "_":
                        out.append(f"{module}:{node.lineno} {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and aliases[node.value.id] != module
            ):
                out.append(f"{module}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    return out


def task_names(root: str = ROOT) -> list[str]:
    """The keys of ptjax.tasks.TASKS, read from its source."""
    tree = ast.parse(_read(os.path.join(root, PACKAGE, "tasks", "__init__.py")))
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "TASKS":
            return [key.value for key in node.value.keys]
    raise ValueError("ptjax/tasks/__init__.py declares no TASKS.")


# Where naming tasks is the point: the tasks themselves, and presets built per task.
TASK_NAMES_ALLOWED = (os.path.join(PACKAGE, "tasks"), os.path.join(PACKAGE, "config_presets.py"))


def task_name_tests(root: str = ROOT) -> list[str]:
    """Comparisons with a task's name (`task == "seq2seq"`, `task in ("masked_lm", ...)`)
    outside ptjax/tasks/: generic code asks the Task instead."""
    names = set(task_names(root))
    out = []
    for folder in (PACKAGE, "scripts"):
        for base, _, files in os.walk(os.path.join(root, folder)):
            for name in sorted(files):
                path = os.path.join(base, name)
                relative = os.path.relpath(path, root)
                if not name.endswith(".py") or relative.startswith(TASK_NAMES_ALLOWED):
                    continue
                for node in ast.walk(ast.parse(_read(path), path)):
                    if not isinstance(node, ast.Compare):
                        continue
                    for operand in (node.left, *node.comparators):
                        items = (
                            operand.elts
                            if isinstance(operand, (ast.Tuple, ast.List, ast.Set))
                            else [operand]
                        )
                        if any(isinstance(i, ast.Constant) and i.value in names for i in items):
                            out.append(f"{relative}:{node.lineno}")
                            break
    return out


def function_level_imports(root: str = ROOT) -> int:
    known = modules(root)
    return sum(1 for m, p in known.items() for _, _, nested in imports(m, p, known) if nested)


def long_files(root: str = ROOT, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    out = []
    for folder in (PACKAGE, "scripts"):
        for base, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(base, name)
                    lines = _read(path).count("\n")
                    if lines > limit:
                        out.append((os.path.relpath(path, root), lines))
    return sorted(out, key=lambda x: -x[1])


def report(root: str = ROOT) -> dict:
    edges = graph(root)
    readme = os.path.join(root, "README.md")
    return {
        "cycles": cycles(edges),
        "layer_breaches": layer_breaches(edges),
        "private_reaches": private_reaches(root),
        "function_level_imports": function_level_imports(root),
        "task_name_tests": task_name_tests(root),
        f"files_over_{MAX_LINES}_lines": long_files(root),
        "readme_lines": _read(readme).count("\n"),
    }


def main(argv: list[str]) -> int:
    shape = report()
    if "--json" in argv:
        print(json.dumps(shape))
        return 0
    print(f"import cycles: {len(shape['cycles'])}")
    for component in shape["cycles"]:
        print(f"  {len(component)} modules: {', '.join(component)}")
    print(f"layer breaches: {len(shape['layer_breaches'])}")
    for breach in shape["layer_breaches"]:
        print(f"  {breach}")
    print(f"reaches into other modules' private names: {len(shape['private_reaches'])}")
    print(f"function-level imports: {shape['function_level_imports']}")
    print(f"task names tested outside ptjax/tasks/: {len(shape['task_name_tests'])}")
    for where in shape["task_name_tests"]:
        print(f"  {where}")
    print(f"files over {MAX_LINES} lines: {shape[f'files_over_{MAX_LINES}_lines']}")
    print(f"README lines: {shape['readme_lines']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
