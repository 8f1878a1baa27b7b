"""benchmarks/suite_durations.py: per-file sums of pytest's durations report, and the wall."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO

LOG = """\
bringing up nodes...
............s.....                                                  [100%]
============================= slowest durations =============================
300.50s setup    tests/test_a.py::test_one
12.25s call     tests/test_a.py::test_two[x-1]
0.50s teardown tests/test_a.py::test_one
40.00s call     tests/test_b.py::test_three
(3 durations < 0.005s hidden.  Use -vv to show these durations.)
17 passed, 1 skipped, 2 warnings in 190.18s (0:03:10)
"""


@pytest.fixture(scope="module")
def durations():
    spec = importlib.util.spec_from_file_location(
        "suite_durations", REPO / "benchmarks/suite_durations.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_files_seconds_add_setup_call_and_teardown_of_all_its_tests(durations):
    files, wall, outcome = durations.parse(LOG)
    assert files == {"tests/test_a.py": pytest.approx(313.25), "tests/test_b.py": 40.0}
    assert wall == pytest.approx(190.18)
    assert outcome == "17 passed, 1 skipped, 2 warnings"


def test_table_puts_the_other_run_beside_each_file(durations):
    after = durations.parse(LOG)
    before = ({"tests/test_a.py": 500.0, "tests/test_gone.py": 9.0}, 400.0, "18 passed")
    lines = durations.table(after, before).splitlines()
    assert "| `tests/test_a.py` | 313 | 500 |" in lines
    assert "| `tests/test_b.py` | 40 | 0 |" in lines  # new since
    assert "| **sum (both workers)** | 353 | 509 |" in lines
    assert "| **wall** | 190 | 400 |" in lines


def test_a_log_without_a_summary_is_refused(durations):
    with pytest.raises(SystemExit, match="no pytest summary"):
        durations.parse("12.00s call tests/test_a.py::test_one\n")
