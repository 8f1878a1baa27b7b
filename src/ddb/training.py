"""The classifier training loop shared by ERM, the baselines and (later) DDB's retrain.

Checkpoint selection is by worst-group *validation* accuracy (val group labels are used
for model selection only, the protocol of JTT, DFR and DDB).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from ddb import paths
from ddb.config import ClassifierConfig, Config, ConfigError
from ddb.data.waterbirds import (
    Groups,
    ImageTable,
    check_enough_images,
    load_indexed,
    split_table,
)
from ddb.metrics import worst_group_accuracy
from ddb.models.classifier import (
    build_classifier,
    eval_transform,
    save_classifier,
    train_transform,
)
from ddb.utils import seed_everything

log = logging.getLogger(__name__)


def load_training_data(config: Config) -> tuple[Path, pd.DataFrame, Groups]:
    """data.root's dataset (as the index stage read and decoded it) for a stage that trains
    on it (erm, baselines), checked before any training: enough train images per class for
    DDB's select (else ERM and every baseline would train before select found too few; DVC
    may run either stage first)."""
    root, table, groups = load_indexed(config.data)
    check_enough_images(
        split_table(table, "train")["y"].value_counts().to_dict(),
        groups.class_names,
        config.select.sources_per_class,
        config.invert.num_images,
        where=str(paths.INDEX_TABLE),  # the table of data.root that the stage read
    )
    return root, table, groups


@dataclass
class TrainResult:
    model: nn.Module  # the selected checkpoint, in eval mode
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def make_optimizer(model: nn.Module, cfg: ClassifierConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return optimizer(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    cfg: ClassifierConfig,
    seed: int,
    sample_weights: np.ndarray | None = None,
    loss_weights: np.ndarray | None = None,
    group_loss: Callable | None = None,
    select_best: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train `model` for cfg.epochs; keep the epoch with the best validation WGA.

    sample_weights: draw training samples with these probabilities (with replacement);
    loss_weights: weight each training sample's loss (rescaled to mean 1 over the set);
    group_loss: reduce the per-sample losses with the batch's group labels instead of a
    mean (GroupDRO's `(losses, group) -> loss`; only methods that may read train groups);
    select_best=False keeps the last epoch (JTT's identification model).
    """
    generator = torch.Generator().manual_seed(seed)
    # a last batch of one sample would stop BatchNorm in training mode; drop only that one
    drop_last = len(train_set) % cfg.batch_size == 1
    if sample_weights is not None:
        sampler = WeightedRandomSampler(
            torch.as_tensor(sample_weights, dtype=torch.double), len(train_set), generator=generator
        )
        loader = DataLoader(
            train_set,
            cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            drop_last=drop_last,
        )
    else:
        loader = DataLoader(
            train_set,
            cfg.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=cfg.num_workers,
            drop_last=drop_last,
        )
    weights = None
    if loss_weights is not None:  # mean 1 over the train set, so the lr means the same
        weights = torch.as_tensor(loss_weights, dtype=torch.float32)
        weights = weights * len(weights) / weights.sum()
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, cfg)
    scheduler = None
    if cfg.schedule == "cosine":  # per step, down to 0 at the last step
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * len(loader))
    best = (-1.0, -1.0)
    best_state, best_epoch, history = None, 0, []
    epochs = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch")
    for epoch in epochs:
        start = time.perf_counter()
        train_loss, train_acc = _train_epoch(
            model, loader, optimizer, scheduler, weights, group_loss, device
        )
        val = evaluate_split(model, val_set, cfg.batch_size)
        # no wall time in the history: it is part of a DVC out, which must be bit-identical
        # between two runs of the same params (the time goes to the log instead)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_wga": val["wga"],
                "val_mean_acc": val["mean_acc"],
            }
        )
        log.info("%s: epoch %d took %.1f s", desc, epoch, time.perf_counter() - start)
        epochs.set_postfix(loss=f"{train_loss:.3f}", val_wga=f"{val['wga']:.3f}")
        if (val["wga"], val["mean_acc"]) > best or not select_best:
            best = (val["wga"], val["mean_acc"])
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    log.info("%s: selected epoch %d (val WGA %.3f)", desc, best_epoch, best[0])
    return TrainResult(model.eval(), best_epoch, history)


def save_result(result: TrainResult, arch: str, n_classes: int, folder: Path) -> None:
    """A trained classifier's folder: model.pt (the selected checkpoint) and history.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    save_classifier(
        result.model, arch, n_classes, folder / "model.pt", best_epoch=result.best_epoch
    )
    pd.DataFrame(result.history).to_csv(folder / "history.csv", index=False)


def _train_epoch(model, loader, optimizer, scheduler, weights, group_loss, device):
    model.train()
    total_loss, total_correct, total = 0.0, 0, 0
    for images, y, group, index in loader:
        images, y = images.to(device), y.to(device)
        logits = model(images)
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        if group_loss is not None:
            loss = group_loss(losses, group.to(device))
        elif weights is None:
            loss = losses.mean()
        else:
            # not divided by the batch's own weight sum: a batch of zero weights gives 0
            loss = (losses * weights[index].to(device)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += losses.detach().sum().item()
        total_correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    return total_loss / total, total_correct / total


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Softmax outputs with labels and groups, in dataset order."""
    model.eval()
    device = next(model.parameters()).device
    # Written into arrays sized once: a list of per-batch tensors held several KB of
    # resident memory per sample on CPU (allocator fragmentation; +430 MiB for a 160k-image
    # train split in benchmarks/streaming_memory.py), where the outputs are 4 bytes a class.
    n = len(dataset)
    probs, ys, groups = None, np.empty(n, np.int64), np.empty(n, np.int64)
    start = 0
    for images, y, group, _ in DataLoader(dataset, batch_size, shuffle=False):
        batch = torch.softmax(model(images.to(device)), dim=1).cpu().numpy()
        if probs is None:
            probs = np.empty((n, batch.shape[1]), batch.dtype)
        end = start + len(batch)
        probs[start:end], ys[start:end], groups[start:end] = batch, y.numpy(), group.numpy()
        start = end
    if probs is None:
        probs = np.empty((0, 0), np.float32)
    return {"probs": probs, "y": ys, "group": groups}


def evaluate_split(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> dict[str, float]:
    out = predict(model, dataset, batch_size)
    correct = out["probs"].argmax(1) == out["y"]
    return {"wga": worst_group_accuracy(correct, out["group"]), "mean_acc": float(correct.mean())}


def fit_classifier(
    config: Config, root, table, n_classes: int, seed: int, **weights
) -> TrainResult:
    """Seed, build and train a classifier with the shared recipe (config.classifier) on
    the train split, selecting on val; `weights` go to train_classifier."""
    cfg = config.classifier
    seed_everything(seed)
    size = config.data.image_size
    train_set = ImageTable(
        root, split_table(table, "train"), train_transform(size, cfg.augment, cfg.crop_scale)
    )
    val_set = ImageTable(root, split_table(table, "val"), eval_transform(size))
    model = build_classifier(cfg.arch, n_classes, cfg.pretrained, cfg.weights)
    model = model.to(resolve_device(cfg.device))
    return train_classifier(model, train_set, val_set, cfg, seed, **weights)


def resolve_device(name: str) -> torch.device:
    """'auto' is the GPU when there is one; results are bit-for-bit reproducible on CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "params.yaml: 'classifier.device' is cuda but no GPU is visible; use auto or cpu"
        )
    return torch.device(name)
