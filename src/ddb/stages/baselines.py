"""baselines: methods that DDB is compared with, looked up by name.

For now one: group-balanced ERM, an oracle reference that uses the *train group labels*
DDB never reads (balanced sampling, or loss weights 1/n_group). Each method writes
models/baselines/<name>/ with model.pt and history.csv.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ddb import paths
from ddb.config import Config
from ddb.data.waterbirds import load_dataset, split_table
from ddb.models.classifier import save_classifier
from ddb.training import fit_classifier
from ddb.utils import atomic_path

log = logging.getLogger(__name__)


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """1 / (size of the sample's group): every group gets the same total weight."""
    values, counts = np.unique(groups, return_counts=True)
    size = dict(zip(values.tolist(), counts.tolist(), strict=True))
    return np.array([1.0 / size[g] for g in groups.tolist()])


def group_balanced(config: Config, root, table, groups):
    weights = group_balanced_weights(split_table(table, "train")["group"].to_numpy())
    key = "sample_weights" if config.baselines.group_balanced.mode == "sampling" else "loss_weights"
    return fit_classifier(
        config, root, table, groups.n_classes, config.baselines.seed, **{key: weights}
    )


METHODS = {"group_balanced": group_balanced}


def run(config: Config) -> None:
    root, table, groups = load_dataset(config.data)
    with atomic_path(paths.BASELINES) as out:
        out.mkdir()
        for name in config.baselines.methods:
            log.info("baseline %s", name)
            result = METHODS[name](config, root, table, groups)
            (out / name).mkdir()
            save_classifier(
                result.model,
                config.classifier.arch,
                groups.n_classes,
                out / name / "model.pt",
                best_epoch=result.best_epoch,
            )
            pd.DataFrame(result.history).to_csv(out / name / "history.csv", index=False)
