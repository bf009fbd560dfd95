"""The package's shape, checked: stage folders in the order data flows, no import cycles (none
hidden in function-level imports), no module importing a stage to its right, TransformerLens
known only to models/, and a CLI that starts without torch."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import circuitbench

PACKAGE = Path(circuitbench.__file__).resolve().parent
# Stages in the order data flows (DESIGN.md); infrastructure below them, entry points above.
STAGES = ["specs", "prompts", "models", "scores", "circuits", "results", "pipeline", "tables", "training"]
INFRASTRUCTURE = {"errors", "registry", "progress", "files", "output_paths", "environment", "parallel"}
ENTRY_POINTS = {"cli", "cli_options", "entry", "plugins", "__init__", "__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path) -> set[str]:
    """circuitbench modules `path` imports, at module level or inside functions (TYPE_CHECKING
    blocks excluded: they never run)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("circuitbench"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("circuitbench"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def stage(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    if part in INFRASTRUCTURE:
        return -1
    if part in STAGES:
        return STAGES.index(part)
    assert part in ENTRY_POINTS, f"{module}: a top-level module outside the known stages; add it to a stage folder"
    return len(STAGES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycles():
    assert len(GRAPH) > 40 and sum(map(len, GRAPH.values())) > 100  # the graph was really built
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH) or [])}"


def test_no_module_imports_a_stage_to_its_right():
    wrong = [f"{src} ({STAGES[stage(src)] if 0 <= stage(src) < len(STAGES) else 'top'}) imports {dst}"
             for src, targets in GRAPH.items() for dst in targets if stage(dst) > stage(src)]
    assert not wrong, "\n".join(wrong)


def test_package_inits_import_nothing_of_the_package():
    """A package __init__ that imported its modules would run before each of them (a hidden edge)."""
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            assert not GRAPH[name], f"{path} imports {GRAPH[name]}"


def test_stage_folders_are_the_layout():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(STAGES)


# TransformerLens spelled out: the bridge object, its hook points, the package itself.
TL_PATTERNS = [r"\.bridge\b", r"\btransformer_lens\b", r"\bhook_(z|in|out|pattern|embed|result|q|k|v|resid\w*)\b",
               r"blocks\.(\{|\d)", r"\bW_[EOQKVU]\b"]


def tl_mentions(path: Path) -> list[str]:
    return [f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}" for i,
            line in enumerate(path.read_text().splitlines(), 1)
            if any(re.search(p, line) for p in TL_PATTERNS)]


def test_transformer_lens_is_known_only_to_models():
    inside = [m for p in (PACKAGE / "models").rglob("*.py") for m in tl_mentions(p)]
    assert len(inside) > 10  # the patterns do find TransformerLens where it lives
    outside = [m for p in PACKAGE.rglob("*.py") if "models" not in p.relative_to(PACKAGE).parts[:1]
               for m in tl_mentions(p)]
    assert not outside, "\n".join(outside)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cli_and_task_listing_import_no_torch():
    heavy = ("torch", "transformers", "transformer_lens")
    code = ("import sys, circuitbench.cli; from circuitbench.specs.catalog import all_tasks, model_registry; "
            "from circuitbench.specs.registries import METHODS, METRICS; "
            "tasks = all_tasks(); model_registry(); METHODS.names(); METRICS.names(); "
            f"print(len(tasks), [m for m in {heavy!r} if m in sys.modules])")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    n_tasks, loaded = proc.stdout.split(" ", 1)
    assert int(n_tasks) >= 12 and loaded.strip() == "[]"
    proc = subprocess.run([sys.executable, "-m", "circuitbench", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "run" in proc.stdout
