"""The package's shape, checked: no import cycle between subpackages, no source file over the
style guide's ~500-line ceiling, and nothing in the library importing the tests.

Imports are read from the source (module level and inside functions alike: a lazy import is
still a dependency), so the check costs no imports and fails on the line that breaks the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "megatron_tulu"
MAX_LINES = 500


def _subpackage(module: str) -> str | None:
    """``megatron_tulu.stages.rlvr.batch`` -> ``stages``; None outside the package."""
    parts = module.split(".")
    if parts[0] != "megatron_tulu" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                out.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                out.add(node.module)
    return out


def subpackage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        src = _subpackage(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if src is None:
            continue
        deps = graph.setdefault(src, set())
        for name in _imports(path):
            dst = _subpackage(name)
            if dst is not None and dst != src:
                deps.add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_subpackages():
    graph = subpackage_graph()
    assert {"engine", "stages", "losses", "models"} <= set(graph)  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "subpackages import each other in a cycle: " + " -> ".join(cycle or [])


def test_lower_layers_do_not_reach_up():
    """The engine, losses and models never import the stages or the tools above them."""
    graph = subpackage_graph()
    for low in ("engine", "losses", "models", "ops", "parallel", "config", "data"):
        up = graph.get(low, set()) & {"stages", "tools", "train"}
        assert not up, f"megatron_tulu.{low} imports {sorted(up)}"


@pytest.mark.parametrize("folder", ["megatron_tulu", "kernels", "tools", "scripts"])
def test_no_source_file_over_the_ceiling(folder):
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines (split them by purpose): {long}"


def test_the_library_does_not_import_the_tests():
    offenders = [
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if any(n.split(".")[0] in ("tests", "mt_testing") for n in _imports(p))
    ]
    assert not offenders, f"library modules importing test code: {offenders}"


def test_spawning_ranks_imports_no_megatron_core():
    """Spawned ranks unpickle ``platform.spawn`` before their worker runs; the kernel tests'
    workers must still be able to set TRITON_INTERPRET before triton (megatron-core) loads."""
    import subprocess
    import sys

    code = (
        "import sys; import megatron_tulu.platform.spawn; "
        "print(sorted(m for m in sys.modules if m.startswith(('megatron.', 'triton'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert out == "[]", f"importing platform.spawn loads {out}"
