"""JTT, Just Train Twice (Liu et al. 2021), as its code runs it (anniesch/jtt): train ERM
for T epochs, take the train samples it gets wrong (the error set E), and train again on
the train set with `upweight` (lambda) more copies of each error (`run_expt.py --up_weight`:
ConcatDataset of the train set and Subset(train, errors * lambda)), shuffled: an epoch is
N + lambda |E| draws without replacement, each error 1 + lambda times. No train group
labels; val groups select the checkpoint (and, in the paper, T and lambda)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ddb.data.dataset import ImageTable, split_table
from ddb.models.classifier import eval_transform
from ddb.training import fit_classifier, predict

log = logging.getLogger(__name__)


def error_set(model, root, train_table, image_size: int) -> np.ndarray:
    """Which train samples the identification model misclassifies (eval transform)."""
    out = predict(model, ImageTable(root, train_table, eval_transform(image_size)))
    return out["probs"].argmax(1) != out["y"]


def upsampled_indices(errors: np.ndarray, upweight: int) -> np.ndarray:
    """One epoch's rows, in their order before shuffling: every train row once, then the
    errors' rows `upweight` more times (theirs: `list(aug_indices) * up_weight_factor`)."""
    return np.concatenate([np.arange(len(errors)), np.tile(np.flatnonzero(errors), upweight)])


def train(config, root, table, groups):
    cfg = config.baselines.jtt
    seed = config.baselines.seed
    # the identification model is the epoch-T model, not a val-selected one
    identify = dataclasses.replace(
        config, classifier=dataclasses.replace(config.classifier, epochs=cfg.identification_epochs)
    )
    first = fit_classifier(identify, root, table, groups.n_classes, seed, select_best=False)
    errors = error_set(first.model, root, split_table(table, "train"), config.data.image_size)
    indices = upsampled_indices(errors, cfg.upweight)
    log.info(
        "jtt: %d of %d train samples misclassified after %d epoch(s); an epoch is %d draws",
        errors.sum(),
        len(errors),
        cfg.identification_epochs,
        len(indices),
    )
    return fit_classifier(config, root, table, groups.n_classes, seed, sample_indices=indices)
