"""The package's shape, checked from the source (AST): stages import only earlier stages, no import
cycles, biasmed's own modules imported at the top of files (lazily only when the target is heavy:
it imports torch, an SDK or another large optional library as it loads), one version string."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "biasmed"

# The stages in data-flow order; a module may import its own stage and those before it.
STAGES: tuple[tuple[str, ...], ...] = (
    # shared records and helpers: every stage may use them; they use nothing above them
    ("biasmed._version", "biasmed._paths", "biasmed._json", "biasmed.errors", "biasmed.records",
     "biasmed.results", "biasmed.scoring"),
    ("biasmed.dataset",),
    ("biasmed.ternary",),
    ("biasmed.models",),
    ("biasmed.run",),
    ("biasmed.analysis",),
    ("biasmed.report",),
    ("biasmed.exports",),
    ("biasmed.api",),
    ("biasmed.cli", "biasmed.__main__"),
)
# the package root re-exports the public API: it sits above everything but the CLI
ROOT_STAGE = len(STAGES) - 1.5
HEAVY = {"torch", "transformers", "vllm", "triton", "matplotlib", "plotly", "openai", "anthropic", "lm_eval",
         "inspect_ai", "datasets", "safetensors", "gguf", "accelerate", "playwright", "numpy", "pandas", "scipy"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(mod: str) -> float:
    if mod == "biasmed":
        return ROOT_STAGE
    for i, prefixes in enumerate(STAGES):
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{mod}: in no stage; add it to tests/test_architecture.py STAGES")


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text("utf-8"), str(p)) for p in sorted(PKG.rglob("*.py"))}


def own_imports(mod: str, tree: ast.Module, known: set[str]) -> Iterator[tuple[str, int, bool]]:
    """(imported biasmed module, line, at top level?) for every import statement of `mod`."""
    top = {id(n) for n in tree.body}
    top |= {id(n) for t in tree.body if isinstance(t, (ast.If, ast.Try)) for n in ast.walk(t)}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from biasmed.x import y`: y may be a submodule
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        for name in names:
            if name == "biasmed" or name.startswith("biasmed."):
                yield name, node.lineno, id(node) in top


def type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    return lines


def is_heavy(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in HEAVY for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in HEAVY:
            return True
    return False


def test_no_module_imports_a_later_stage():
    mods = modules()
    known = set(mods)
    bad = []
    for mod, tree in mods.items():
        here = stage_of(mod)
        for target, line, _ in own_imports(mod, tree, known):
            if stage_of(target) > here:
                bad.append(f"{mod}:{line} imports {target} (a later stage)")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for mod, tree in mods.items():
        skip = type_checking_lines(tree)
        graph[mod] = {t for t, line, _ in own_imports(mod, tree, known)
                      if t in known and t != mod and line not in skip and mod != "biasmed"}
    # a package's __init__ importing its own submodules is how packages work: not a cycle
    for mod in graph:
        graph[mod] = {t for t in graph[mod] if not t.startswith(mod + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if seen.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in seen:
                visit(t)
        stack.pop()
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_own_modules_are_imported_at_the_top_unless_heavy():
    mods = modules()
    known = set(mods)
    heavy = {m for m, t in mods.items() if is_heavy(t)}
    while True:  # heavy too: what imports a heavy module as it loads
        more = {m for m, t in mods.items() if m not in heavy
                and any(at_top and target in heavy for target, _, at_top in own_imports(m, t, known))}
        if not more:
            break
        heavy |= more
    bad = []
    for mod, tree in mods.items():
        for target, line, at_top in own_imports(mod, tree, known):
            if not at_top and target not in heavy and target != "biasmed":
                bad.append(f"{mod}:{line} imports {target} inside a function (it is light: import it at the top)")
    assert not bad, "\n".join(bad)


def test_version_is_written_once():
    hits = [str(p.relative_to(ROOT)) for p in PKG.rglob("*.py")
            if re.search(r"^__version__\s*=", p.read_text("utf-8"), re.M)]
    assert hits == ["biasmed/_version.py"]
    assert 'version = "' not in (ROOT / "pyproject.toml").read_text("utf-8").split("[project]")[1].split("[")[0]
