"""Group metrics: per-group accuracy, worst-group accuracy and two mean accuracies.

- `mean_acc`: plain accuracy over all samples of the split.
- `adjusted_mean_acc`: per-group accuracy weighted by the *train* group sizes (the
  GroupDRO / JTT / DFR convention for Waterbirds, whose test set is balanced differently
  from train). Papers mix the two; we always report both, labelled.
Groups absent from a split are left out of its metrics (MetaShift's test has 2 groups).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def group_counts(correct: np.ndarray, groups: np.ndarray) -> dict[int, tuple[int, int]]:
    """{group: (n_correct, n)} for the groups present."""
    correct = np.asarray(correct, dtype=bool)
    groups = np.asarray(groups)
    return {
        int(g): (int(correct[groups == g].sum()), int((groups == g).sum()))
        for g in np.unique(groups)
    }


def worst_group_accuracy(correct: np.ndarray, groups: np.ndarray) -> float:
    return min(k / n for k, n in group_counts(correct, groups).values())


def adjusted_mean_accuracy(group_acc: dict[int, float], train_sizes: dict[int, int]) -> float:
    """Per-group accuracy weighted by train group size, over the groups present."""
    weights = {g: train_sizes.get(g, 0) for g in group_acc}
    total = sum(weights.values())
    if total == 0:  # no train sample of these groups: fall back to the unweighted mean
        return float(np.mean(list(group_acc.values())))
    return sum(group_acc[g] * w for g, w in weights.items()) / total


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(
    correct: np.ndarray,
    groups: np.ndarray,
    group_names: list[str],
    train_sizes: dict[int, int],
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of one model on one split, with intervals.

    Group intervals are Wilson intervals; WGA and the means get percentile intervals from
    a bootstrap that resamples within each group (group sizes are fixed by design).
    """
    correct = np.asarray(correct, dtype=bool)
    groups = np.asarray(groups)
    counts = group_counts(correct, groups)
    acc = {g: k / n for g, (k, n) in counts.items()}
    point = _aggregates(correct, acc, train_sizes)
    boot = _bootstrap(correct, groups, train_sizes, n_bootstrap, seed)
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    ci = {
        key: [float(np.percentile(boot[key], lo_q)), float(np.percentile(boot[key], hi_q))]
        for key in point
    }
    ci["groups"] = {
        group_names[g]: list(wilson_interval(k, n, confidence)) for g, (k, n) in counts.items()
    }
    return {
        **point,
        "groups": {group_names[g]: a for g, a in acc.items()},
        "ci": ci,
    }


def _aggregates(correct: np.ndarray, acc: dict[int, float], train_sizes: dict[int, int]) -> dict:
    return {
        "wga": min(acc.values()),
        "mean_acc": float(correct.mean()),
        "adjusted_mean_acc": adjusted_mean_accuracy(acc, train_sizes),
    }


def _bootstrap(correct, groups, train_sizes, n_bootstrap: int, seed: int) -> dict[str, np.ndarray]:
    """Resampling n_g samples of group g with replacement draws its hit count from
    Binomial(n_g, acc_g), so the bootstrap is drawn that way, all resamples at once."""
    rng = np.random.default_rng(seed)
    counts = group_counts(correct, groups)
    hits = {g: rng.binomial(n, k / n, size=n_bootstrap) for g, (k, n) in counts.items()}
    acc = {g: hits[g] / counts[g][1] for g in counts}
    total = sum(n for _, n in counts.values())
    weights = {g: train_sizes.get(g, 0) for g in counts}
    if sum(weights.values()) == 0:
        weights = dict.fromkeys(counts, 1)
    return {
        "wga": np.min(np.stack(list(acc.values())), axis=0),
        "mean_acc": sum(hits.values()) / total,
        "adjusted_mean_acc": sum(acc[g] * w for g, w in weights.items()) / sum(weights.values()),
    }
