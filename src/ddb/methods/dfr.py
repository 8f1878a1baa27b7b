"""DFR, Deep Feature Reweighting (Kirichenko et al. 2023): keep the ERM model's features and
retrain its last layer, an L1 logistic regression on standardised penultimate features, on
a group-balanced subset of *val*. C is chosen from a grid by WGA on the other half of val,
then the head is refit on all of val. Reads val group labels (for training, so its val
metrics are not held out), never train group labels."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ddb.data.waterbirds import ImageTable, split_table
from ddb.metrics import worst_group_accuracy
from ddb.models.classifier import eval_transform
from ddb.training import TrainResult

log = logging.getLogger(__name__)


@dataclass
class Head:
    C: float
    coef: np.ndarray  # classes x features (1 x features for two classes)
    intercept: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    history: list[dict]


@torch.no_grad()
def penultimate_features(model, dataset, batch_size: int = 256) -> np.ndarray:
    body = copy.deepcopy(model).eval()
    body.fc = torch.nn.Identity()
    device = next(body.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=False)
    return torch.cat([body(images.to(device)).cpu() for images, *_ in loader]).numpy()


def balanced_subset(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices with every group downsampled to the smallest group's size."""
    smallest = min(np.sum(groups == g) for g in np.unique(groups))
    return np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(groups == g), smallest, replace=False)
                for g in np.unique(groups)
            ]
        )
    )


def _fit(x, y, C: float, seed: int) -> LogisticRegression:
    model = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=seed)  # L1
    return model.fit(x, y)


def fit_head(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid: list[float], seed: int
) -> Head:
    """Choose C on two halves of val (split within each group), refit on all of val."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(y), bool)
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        half[members[: len(members) // 2]] = True
    fit_idx = np.flatnonzero(half)[balanced_subset(groups[half], rng)]
    held = ~half
    mean, std = x[fit_idx].mean(0), x[fit_idx].std(0) + 1e-8
    history = []
    for C in grid:
        model = _fit((x[fit_idx] - mean) / std, y[fit_idx], C, seed)
        correct = model.predict((x[held] - mean) / std) == y[held]
        history.append({"C": C, "held_out_wga": worst_group_accuracy(correct, groups[held])})
    best = max(history, key=lambda h: h["held_out_wga"])  # first of equals: the largest C
    all_idx = balanced_subset(groups, rng)
    mean, std = x[all_idx].mean(0), x[all_idx].std(0) + 1e-8
    final = _fit((x[all_idx] - mean) / std, y[all_idx], best["C"], seed)
    log.info("dfr: C = %g (held-out val WGA %.3f)", best["C"], best["held_out_wga"])
    return Head(best["C"], final.coef_, final.intercept_, mean, std, history)


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
    val = split_table(table, "val")
    features = penultimate_features(
        erm_model, ImageTable(root, val, eval_transform(config.data.image_size))
    )
    head = fit_head(features, val["y"].to_numpy(), val["group"].to_numpy(), cfg.C, cfg.seed)
    model = install_head(erm_model, head, groups.n_classes)
    return TrainResult(model, best_epoch=0, history=head.history)
