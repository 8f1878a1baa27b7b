"""Group-balanced ERM: an oracle reference that reads the train group labels DDB never reads
(balanced sampling, or loss weights 1/n_group)."""

from __future__ import annotations

import numpy as np

from ddb.data.dataset import split_table
from ddb.training import fit_classifier


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """1 / (size of the sample's group): every group gets the same total weight."""
    values, counts = np.unique(groups, return_counts=True)
    size = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return np.array([1.0 / size[g] for g in groups.tolist()])


def train(config, root, table, groups):
    weights = group_balanced_weights(split_table(table, "train")["group"].to_numpy())
    key = "sample_weights" if config.baselines.group_balanced.mode == "sampling" else "loss_weights"
    return fit_classifier(
        config, root, table, groups.n_classes, config.baselines.seed, **{key: weights}
    )
