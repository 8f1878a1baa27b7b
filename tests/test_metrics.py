import numpy as np
import pytest

from ddb.metrics import (
    adjusted_mean_accuracy,
    group_counts,
    summarize,
    wilson_interval,
    worst_group_accuracy,
)

NAMES = ["a_x", "a_y", "b_x", "b_y"]


def test_group_accuracies_by_hand():
    groups = np.array([0, 0, 0, 0, 1, 1, 3, 3, 3])
    correct = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1], bool)
    assert group_counts(correct, groups) == {0: (3, 4), 1: (1, 2), 3: (3, 3)}
    assert worst_group_accuracy(correct, groups) == 0.5  # group 2 is absent: ignored


def test_adjusted_mean_weights_by_train_sizes():
    acc = {0: 1.0, 1: 0.5, 2: 0.0, 3: 1.0}
    train = {0: 70, 1: 10, 2: 10, 3: 10}
    assert adjusted_mean_accuracy(acc, train) == pytest.approx((70 + 5 + 0 + 10) / 100)
    # a group absent from the split does not count, present ones are re-normalised
    assert adjusted_mean_accuracy({0: 1.0, 1: 0.5}, train) == pytest.approx(75 / 80)


def test_wilson_interval_reference_values():
    # Wilson (1927) / Newcombe (1998) table: 8/10 at 95% -> 0.4902, 0.9433
    lo, hi = wilson_interval(8, 10, 0.95)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = wilson_interval(0, 10, 0.95)
    assert lo == pytest.approx(0.0, abs=1e-12) and round(hi, 4) == 0.2775
    assert wilson_interval(5, 10, 0.99)[0] < wilson_interval(5, 10, 0.95)[0]


def test_summarize_plain_vs_adjusted_mean_and_intervals():
    groups = np.repeat([0, 1, 2, 3], 100)
    correct = np.concatenate(
        [np.ones(100), np.r_[np.ones(60), np.zeros(40)], np.ones(100), np.ones(100)]
    )
    train = {0: 900, 1: 50, 2: 50, 3: 900}
    out = summarize(correct.astype(bool), groups, NAMES, train, n_bootstrap=500, seed=1)
    assert out["wga"] == 0.6
    assert out["mean_acc"] == pytest.approx(360 / 400)
    assert out["adjusted_mean_acc"] == pytest.approx((900 + 30 + 50 + 900) / 1900)
    assert out["groups"] == {"a_x": 1.0, "a_y": 0.6, "b_x": 1.0, "b_y": 1.0}
    for key in ("wga", "mean_acc", "adjusted_mean_acc"):
        lo, hi = out["ci"][key]
        assert lo <= out[key] <= hi
    lo, hi = out["ci"]["wga"]
    assert 0.45 < lo < 0.6 < hi < 0.75  # about +-1.96 sqrt(.24/100) = +-0.096
    assert out["ci"]["groups"]["a_x"][1] == 1.0


def test_bootstrap_is_seeded():
    groups = np.repeat([0, 1], 50)
    correct = np.arange(100) % 3 != 0
    a = summarize(correct, groups, NAMES, {0: 1, 1: 1}, seed=3)
    b = summarize(correct, groups, NAMES, {0: 1, 1: 1}, seed=3)
    assert a == b
