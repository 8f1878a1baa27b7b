"""benchmarks/solver_steps.py's paired comparison: the interval of the difference in the
judge's recognition rate between a sampler and the reference, over the same images."""

from __future__ import annotations

import importlib.util

import numpy as np

from tests.conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location(
        "solver_steps", REPO / "benchmarks/solver_steps.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_interval_is_of_the_difference_over_the_same_images():
    paired_interval = _module().paired_interval
    rng = np.random.default_rng(1)
    reference = rng.random(400) < 0.3
    assert paired_interval(reference, reference) == (0.0, 0.0, 0.0)  # the same images agree
    assert paired_interval(np.ones(50, bool), np.zeros(50, bool)) == (1.0, 1.0, 1.0)
    better = reference.copy()
    better[np.flatnonzero(~reference)[:40]] = True  # 40 more of 400 recognised: +0.10
    diff, low, high = paired_interval(better, reference)
    assert diff == 0.1
    assert 0 < low < 0.1 < high  # paired: the 40 changed images carry all the variance
    # unpaired noise of the same size would give a much wider interval than the paired one
    assert high - low < 0.1
