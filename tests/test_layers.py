"""The package's shape, checked from its source: imports only point down the layers, no cycles, function-local
imports only where they defer a slow import (and say so), no file over 500 lines.

The layer order is written once, here (LAYERS); docs/architecture.md draws the same order, and
`test_architecture_doc_lists_the_layers_in_order` keeps the two in step.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "genlab"
MAX_LINES = 500

#: bottom first; a module may import modules of its own layer or of layers before it, never after
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("genlab", "genlab.errors", "genlab.safepaths", "genlab.imageio")),
    ("math", ("genlab.diffusion", "genlab.boltzmann", "genlab.lm", "genlab.rlhf")),
    ("nn", ("genlab.nn",)),
    ("data", ("genlab.data",)),
    ("eval", ("genlab.eval",)),
    ("models", ("genlab.models",)),
    ("engine", ("genlab.engine",)),
    ("experiments", ("genlab.experiments",)),
    ("serve", ("genlab.serve",)),
    ("cli", ("genlab.cli",)),
)
#: what the math layer may import besides itself and the core: torch and the standard library only
MATH_THIRD_PARTY = {"torch"}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names `module`."""
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    assert index is not None, f"{module} belongs to no layer of LAYERS: add it there"
    return index


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, function-local) for every import of genlab or a third party, TYPE_CHECKING too.

    `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, local) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    found.append((full if full in modules() else child.module, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return found


def genlab_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules()}
    for module, path in modules().items():
        for target, _, _ in imports_of(path):
            if target == "genlab" or target.startswith("genlab."):
                edges[module].add(target)
    return edges


def test_every_module_belongs_to_a_layer():
    for module in modules():
        layer_of(module)


def test_no_import_points_up_a_layer():
    upward = []
    for module, targets in genlab_edges().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    """Tarjan's strongly connected components over genlab's imports (function-local and TYPE_CHECKING ones too)."""
    edges = genlab_edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_math_layer_imports_only_torch_and_the_standard_library():
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = []
    for module, path in modules().items():
        if LAYERS[layer_of(module)][0] != "math":
            continue
        for target, line, _ in imports_of(path):
            top = target.split(".")[0]
            if top not in stdlib | MATH_THIRD_PARTY and not (target == "genlab" or target.startswith("genlab.")):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_function_local_imports_defer_a_slow_import_and_say_so():
    """A function-local import stays only to keep a slow module off an import path (the CLI's --help, a
    light package); a `# lazy: <why>` comment on its line, in its block, or on the line that opens the block, says so."""
    bad = []
    for module, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for _, line, local in imports_of(path):
            if not local:
                continue
            i = line - 1
            said = "# lazy" in lines[i]
            # walk up the block of imports, blank lines and comments, to the line that opens it
            while not said and i > 0:
                i -= 1
                said = "# lazy" in lines[i]
                if not (lines[i].strip().startswith(("import ", "from ", "#")) or not lines[i].strip()):
                    break
            if not said:
                bad.append(f"{path.relative_to(ROOT)}:{line}")
    assert not bad, "function-local imports without a `# lazy: ...` reason:\n" + "\n".join(sorted(set(bad)))


def test_no_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concept: {long}"


def test_the_command_line_parser_imports_no_torch():
    """`genlab --help` stays instant: building every command's parser loads neither torch nor Lightning."""
    import subprocess
    import sys

    code = ("import sys; import genlab.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_architecture_doc_lists_the_layers_in_order():
    """docs/architecture.md's layer table names LAYERS' packages, bottom first, in this order."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = re.findall(r"^\| (\d+) \| ([a-z]+) \|", doc, flags=re.M)
    assert [name for _, name in table] == [name for name, _ in LAYERS]
    assert [int(i) for i, _ in table] == list(range(len(LAYERS)))
