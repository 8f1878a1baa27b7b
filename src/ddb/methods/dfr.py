"""DFR, Deep Feature Reweighting (Kirichenko et al. 2023), DFR_val^Tr as its code runs it
(PolinaKirichenko/deep_feature_reweighting, `dfr_evaluate_spurious.py` with its defaults:
balance_dfr_val, notrain_dfr_val). Keep the ERM model's features and replace its last
layer with an L1 logistic regression (liblinear) on standardised penultimate features:

- tuning (`dfr_on_validation_tune`, one retrain): val is halved (`dfr.tune_split`), a
  group-balanced subset of one half is standardised by its own mean and scale and fit for
  each C of `dfr.C`; C is the one with the best WGA on the other half (the first of equals);
- the head (`dfr_on_validation_eval`): the mean coefficients and intercepts of
  `dfr.num_retrains` fits, each on a random group-balanced subset of all of val, with the
  features standardised by the *train* split's mean and scale.

Reads val group labels (for training, so its val metrics are not held out) and train
images (for the scaler), never train group labels. Unlike theirs, every draw comes from
`dfr.seed` (theirs: numpy's unseeded global state, also liblinear's)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ddb.config import ConfigError, DfrConfig
from ddb.data.dataset import ImageTable, split_table
from ddb.metrics import worst_group_accuracy
from ddb.models.classifier import eval_transform
from ddb.training import TrainResult

log = logging.getLogger(__name__)


@dataclass
class Head:
    C: float
    coef: np.ndarray  # classes x features (1 x features for two classes)
    intercept: np.ndarray
    mean: np.ndarray  # the standardisation: StandardScaler's mean_ and scale_ (1 where a
    std: np.ndarray  # feature is constant), fit on the train split's features
    history: list[dict]


@torch.no_grad()
def penultimate_features(model, dataset, batch_size: int = 256) -> np.ndarray:
    body = copy.deepcopy(model).eval()
    body.fc = torch.nn.Identity()
    device = next(body.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=False)
    return torch.cat([body(images.to(device)).cpu() for images, *_ in loader]).numpy()


def balanced_subset(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of a random group-balanced subset, as theirs draws it: each group's members
    shuffled, the first (smallest group's size) of each, concatenated in group order."""
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    smallest = min(len(m) for m in members)
    return np.concatenate([rng.permutation(m)[:smallest] for m in members])


def tuning_halves(
    groups: np.ndarray, split: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(fit half, held-out half) of val. random: theirs, a shuffle of all of val, the first
    n // 2 held out; by_group: each group halved so, both halves hold every group."""
    if split == "random":
        order = rng.permutation(len(groups))
        return order[len(groups) // 2 :], order[: len(groups) // 2]
    fit, held = [], []
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        held.append(members[: len(members) // 2])
        fit.append(members[len(members) // 2 :])
    return np.concatenate(fit), np.concatenate(held)


def _fit(x, y, C: float, seed: int) -> LogisticRegression:
    model = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=seed)  # L1
    return model.fit(x, y)


def held_out_wga(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    fit_rows: np.ndarray,
    held_rows: np.ndarray,
    grid: list[float],
    seed: int,
) -> list[dict]:
    """For each C of `grid`: fit on `fit_rows`, standardised by their own mean and scale;
    the WGA on `held_rows`."""
    scaler = StandardScaler().fit(x[fit_rows])
    fit_x, held_x = scaler.transform(x[fit_rows]), scaler.transform(x[held_rows])
    history = []
    for C in grid:
        correct = _fit(fit_x, y[fit_rows], C, seed).predict(held_x) == y[held_rows]
        history.append({"C": C, "held_out_wga": worst_group_accuracy(correct, groups[held_rows])})
    return history


def averaged_fit(
    x: np.ndarray, y: np.ndarray, subsets: list[np.ndarray], C: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The mean coefficients and intercepts of one fit per subset of rows of `x`."""
    fits = [_fit(x[rows], y[rows], C, seed) for rows in subsets]
    return np.mean([f.coef_ for f in fits], 0), np.mean([f.intercept_ for f in fits], 0)


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    train_x: np.ndarray,
    cfg: DfrConfig,
    rng: np.random.Generator,
) -> Head:
    """The DFR head of val features `x` (labels `y`, groups `groups`); `train_x`: the train
    split's features, which only the final standardisation reads. `rng` draws the halves
    and subsets; liblinear is seeded with cfg.seed."""
    fit_half, held = tuning_halves(groups, cfg.tune_split, rng)
    if len(np.unique(groups[fit_half])) < len(np.unique(groups)):
        raise ConfigError(
            f"params.yaml: 'dfr.tune_split' is {cfg.tune_split}, and a random half of val has "
            "no sample of some group: val is too small for it; use by_group"
        )
    fit_rows = fit_half[balanced_subset(groups[fit_half], rng)]
    history = held_out_wga(x, y, groups, fit_rows, held, cfg.C, cfg.seed)
    best = max(history, key=lambda h: h["held_out_wga"])  # first of equals: the largest C
    scaler = StandardScaler().fit(train_x)
    subsets = [balanced_subset(groups, rng) for _ in range(cfg.num_retrains)]
    coef, intercept = averaged_fit(scaler.transform(x), y, subsets, best["C"], cfg.seed)
    log.info(
        "dfr: C = %g (held-out val WGA %.3f), %d fits averaged",
        best["C"],
        best["held_out_wga"],
        cfg.num_retrains,
    )
    return Head(best["C"], coef, intercept, scaler.mean_, scaler.scale_, history)


def install_head(model, head: Head, n_classes: int):
    """A copy of `model` whose fc computes the head's logits on raw features."""
    model = copy.deepcopy(model).eval()
    weight = head.coef / head.std  # fold the standardisation into the layer
    bias = head.intercept - (head.coef * head.mean / head.std).sum(1)
    if n_classes == 2 and weight.shape[0] == 1:  # sklearn's binary form: logit of class 1
        weight = np.vstack([np.zeros_like(weight), weight])
        bias = np.concatenate([[0.0], bias])
    with torch.no_grad():
        model.fc.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        model.fc.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return model


def train(config, root, table, groups, erm_model) -> TrainResult:
    """The ERM model with its last layer refit on val (DFR_val^Tr in the paper)."""
    cfg = config.dfr
    transform = eval_transform(config.data.image_size)  # theirs: no augmentation for either
    val = split_table(table, "val")
    features = penultimate_features(erm_model, ImageTable(root, val, transform))
    train_features = penultimate_features(
        erm_model, ImageTable(root, split_table(table, "train"), transform)
    )
    y, val_groups = val["y"].to_numpy(), val["group"].to_numpy()
    head = fit_head(features, y, val_groups, train_features, cfg, np.random.default_rng(cfg.seed))
    model = install_head(erm_model, head, groups.n_classes)
    return TrainResult(model, best_epoch=0, history=head.history)
