"""The package's layers point one way, imports inside functions included (a lazy import hides a cycle; it does not
remove it): core -> backends -> dispatch -> models -> compare -> decide -> parallel -> widgets / CLI / demo."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fluxlab"

# Lowest first; a module may import its own layer or lower ones. The longest matching prefix decides.
LAYERS = [
    ("core", ["fluxlab.errors", "fluxlab.platform", "fluxlab.numerics", "fluxlab.util", "fluxlab.version",
              "fluxlab.outputs", "fluxlab.command", "fluxlab.terminal", "fluxlab.defaults", "fluxlab.results",
              "fluxlab.mx", "fluxlab._compat"]),
    ("backends", ["fluxlab.backends"]),
    ("dispatch", ["fluxlab.registry", "fluxlab.choice", "fluxlab.ops", "fluxlab.dispatch", "fluxlab.record",
                  "fluxlab.doctor"]),
    ("models", ["fluxlab.models"]),
    ("compare", ["fluxlab.compare"]),
    ("decide", ["fluxlab.decide"]),
    ("parallel", ["fluxlab.parallel"]),
    ("top", ["fluxlab.widgets", "fluxlab.cli", "fluxlab.models.cli", "fluxlab.compare.cli", "fluxlab.decide.cli",
             "fluxlab.parallel.cli", "fluxlab.demo", "fluxlab.bench", "fluxlab"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """module -> {(imported fluxlab module, line)}: every import statement, at any depth of the file."""
    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[tuple[str, int]]] = {}
    for name, path in mods.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    module = ".".join(base[:len(base) - node.level + 1] + ([module] if module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            else:
                continue
            for target in targets:
                if target == "fluxlab" or target.startswith("fluxlab."):
                    resolved = resolve(target)
                    if resolved != name:
                        found.add((resolved, node.lineno))
        edges[name] = found
    return edges


def layer_of(module: str) -> int | None:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in {target for target, _ in edges[v]}:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_no_import_points_up_or_at_the_facade():
    edges = imports(modules())
    upward = [f"{m} -> {t} (line {line}): {LAYERS[layer_of(m)][0]} imports {LAYERS[layer_of(t)][0]}"
              for m, found in sorted(edges.items()) for t, line in sorted(found)
              if t != "fluxlab" and layer_of(t) > layer_of(m)]
    facade = [f"{m} (line {line})" for m, found in sorted(edges.items()) for t, line in found if t == "fluxlab"]
    assert upward == []
    assert facade == []  # inside the package, import the module that defines a name, never `fluxlab` itself


def test_no_import_cycles_counting_imports_inside_functions():
    found = cycles(imports(modules()))
    if not (PACKAGE / "command.py").exists():
        # fluxlab/command.py (the shared CLI module of the `cli` branch) breaks this one; until it is merged:
        found = [c for c in found if c != ["fluxlab.cli", "fluxlab.models.cli"]]
    assert found == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The walk reaches imports nested in functions: the cycle below exists only through them."""
    mods = {"fluxlab.a": tmp_path / "a.py", "fluxlab.b": tmp_path / "b.py"}
    mods["fluxlab.a"].write_text("def f():\n    from .b import g\n")
    mods["fluxlab.b"].write_text("def g():\n    if True:\n        import fluxlab.a\n")
    assert cycles(imports(mods)) == [["fluxlab.a", "fluxlab.b"]]
