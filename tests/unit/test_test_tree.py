"""The test tree itself: pytest's default (rootdir, "prepend") import mode puts every test
directory on sys.path and imports each test file by its basename, so two test files with the same
name in different directories stop the whole run at collection ("import file mismatch"). This
happened once (tests/distributed and tests/planner both had test_memory_options.py) and failed CI
before a single test ran; this test names any such pair."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name in ("__init__.py", "conftest.py") or "__pycache__" in path.parts:
            continue
        by_name[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: sorted(paths) for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"test modules sharing a basename (pytest cannot collect both): {clashes}"
