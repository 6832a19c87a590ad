"""The test tree has no __init__.py files, so pytest imports each test module by its
basename: two files with the same name in tests/unit and tests/integration collide at
collection time ("import file mismatch") and stop the whole run. This guards that."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_across_the_tree():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert {n: c for n, c in names.items() if c > 1} == {}
