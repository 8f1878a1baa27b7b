"""JTT, Just Train Twice (Liu et al. 2021): train ERM for a few epochs, upsample the train
samples it gets wrong by `upweight`, train again. No train group labels; val groups select
the checkpoint (and, in the paper, T and the upweight)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ddb.data.waterbirds import ImageTable, split_table
from ddb.models.classifier import eval_transform
from ddb.training import fit_classifier, predict

log = logging.getLogger(__name__)


def error_set(model, root, train_table, image_size: int) -> np.ndarray:
    """Which train samples the identification model misclassifies (eval transform)."""
    out = predict(model, ImageTable(root, train_table, eval_transform(image_size)))
    return out["probs"].argmax(1) != out["y"]


def upsampling_weights(errors: np.ndarray, upweight: float) -> np.ndarray:
    """Sampling weight `upweight` for each error, 1 for the rest (JTT's upsampled set)."""
    return np.where(errors, float(upweight), 1.0)


def train(config, root, table, groups):
    cfg = config.baselines.jtt
    seed = config.baselines.seed
    # the identification model is the epoch-T model, not a val-selected one
    identify = dataclasses.replace(
        config, classifier=dataclasses.replace(config.classifier, epochs=cfg.identification_epochs)
    )
    first = fit_classifier(identify, root, table, groups.n_classes, seed, select_best=False)
    errors = error_set(first.model, root, split_table(table, "train"), config.data.image_size)
    log.info(
        "jtt: %d of %d train samples misclassified after %d epoch(s)",
        errors.sum(),
        len(errors),
        cfg.identification_epochs,
    )
    weights = upsampling_weights(errors, cfg.upweight)
    return fit_classifier(config, root, table, groups.n_classes, seed, sample_weights=weights)
