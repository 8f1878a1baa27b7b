"""LISA, Learning Invariant predictors with Selective Augmentation (Yao et al., ICML 2022),
as its code runs it (huaxiuyao/LISA @c857a6b, `subpopulation_shifts/`: `run_expt.py` main,
`train.py` run_epoch_mix_every_batch, mix_forward, mix_up, cut_mix_up, rand_bbox, `loss.py`
LossComputer.loss with mix_up):

- one shuffled loader per train group g = 2y + place, `batch_size` images each; a step
  takes one batch from every loader, and an epoch is as many steps as the smallest group
  has batches (every loader starts a new shuffle each epoch);
- per step, with probability `mix_ratio`, intra-label pairs (y, place 0) x (y, place 1),
  else intra-domain pairs (class 0, a) x (class 1, a); the i-th image of one batch pairs
  with the i-th of the other (the longer batch is cut to the shorter);
- mixup: lambda ~ Beta(mix_alpha, mix_alpha) per pair, images and one-hot labels mixed
  alike; CutMix: one lambda ~ Beta(cutmix_alpha, cutmix_alpha) per pair of batches, one
  box pasted both ways (2 images per pair), each label weighted by its exact pixel share;
- loss: soft-label cross-entropy over the mixed images only (no unmixed image, no group
  weighting); the checkpoint is the epoch of best validation WGA (ties: mean accuracy).
- `group_by: label` (their `--group_by_label`, MetaShift): one loader per class, and each
  class batch's first half is mixed with its second half (mix_forward's other branch).

Group labels: train groups (class and place) in `group` mode, classes only in `label`
mode; val groups for checkpoint selection.

Departures from the reference: the randomness is a seeded `np.random.RandomState` (the
same draws, in the same order, as theirs from the global NumPy state), and the loaders
share one seeded torch generator; `rand_bbox`'s `np.int` (gone from NumPy >= 1.24) is
`int`; the checkpoint is kept in memory (theirs saves `best_model.pth` with `--save_best`);
the optimizer and schedule are the method's recipe (theirs: SGD, momentum 0.9, constant).
Under several processes every process draws the same mixed batch and trains on its slice.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from ddb.config import ConfigError, LisaConfig
from ddb.data.dataset import Groups, ImageTable, split_table
from ddb.distributed import process_state, split_sizes
from ddb.models.classifier import build_classifier, eval_transform, train_transform
from ddb.training import (
    Speed,
    TrainResult,
    evaluate_split,
    make_optimizer,
    prepare_model,
    resolve_device,
    sync_buffers,
)
from ddb.utils import seed_everything

log = logging.getLogger(__name__)

# The pairs of loaders (group ids 2y + place) that mix_forward mixes
INTRA_LABEL = ((0, 1), (2, 3))  # same class, other place
INTRA_DOMAIN = ((0, 2), (1, 3))  # same place, other class


def loader_rows(train: pd.DataFrame, group_by: str, groups: Groups) -> list[np.ndarray]:
    """The train rows of each loader, in key order: groups 0..3, or classes. Every key
    needs an image (theirs skips an empty group and then pairs the wrong loaders)."""
    n_keys = groups.n_groups if group_by == "group" else groups.n_classes
    key = train["group" if group_by == "group" else "y"].to_numpy()
    rows = [np.flatnonzero(key == k) for k in range(n_keys)]
    names = groups.names if group_by == "group" else list(groups.class_names)
    empty = [name for name, r in zip(names, rows) if len(r) == 0]
    if empty:
        raise ConfigError(
            f"baselines.lisa.group_by is {group_by!r} but the train split has no image of "
            f"{', '.join(empty)}; set baselines.lisa.group_by: label (LISA's --group_by_label) "
            "or drop lisa from baselines.methods"
        )
    return rows


def steps_per_epoch(sizes: list[int], batch_size: int) -> int:
    """Batches in the smallest loader (theirs: np.min of the loaders' lengths, last partial
    batch included)."""
    return min(math.ceil(n / batch_size) for n in sizes)


def mixup(x1, x2, y1, y2, alpha: float, rng: np.random.RandomState):
    """Pairs (x1[i], x2[i]) mixed with lambda_i ~ Beta(alpha, alpha), labels (one-hot) alike;
    the longer batch is cut to the shorter."""
    n = min(len(x1), len(x2))
    lam = torch.as_tensor(rng.beta(alpha, alpha, (n, 1)), dtype=torch.float32, device=x1.device)
    lam_x = lam.view(n, *[1] * (x1.dim() - 1))
    images = lam_x * x1[:n] + (1 - lam_x) * x2[:n]
    return images, lam * y1[:n] + (1 - lam) * y2[:n]


def cutmix_box(height: int, width: int, lam: float, rng: np.random.RandomState):
    """rand_bbox: a box of side sqrt(1 - lam) times the image's, centred uniformly, clipped
    to the image: (row0, row1, col0, col1)."""
    cut = np.sqrt(1.0 - lam)
    half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
    row, col = rng.randint(height), rng.randint(width)
    return (
        int(np.clip(row - half_h, 0, height)),
        int(np.clip(row + half_h, 0, height)),
        int(np.clip(col - half_w, 0, width)),
        int(np.clip(col + half_w, 0, width)),
    )


def cutmix(x1, x2, y1, y2, alpha: float, rng: np.random.RandomState):
    """cut_mix_up: one lambda ~ Beta(alpha, alpha); the box of x2[i] pasted into x1[i] and
    that of x1[i] into x2[i] (2n images); each label weighted by its exact pixel share."""
    n = min(len(x1), len(x2))
    images, partners = torch.cat([x1[:n], x2[:n]]), torch.cat([x2[:n], x1[:n]])
    labels, partner_labels = torch.cat([y1[:n], y2[:n]]), torch.cat([y2[:n], y1[:n]])
    lam = rng.beta(alpha, alpha)
    r0, r1, c0, c1 = cutmix_box(images.shape[2], images.shape[3], lam, rng)
    images[:, :, r0:r1, c0:c1] = partners[:, :, r0:r1, c0:c1]
    pasted = (r1 - r0) * (c1 - c0) / (images.shape[2] * images.shape[3])
    return images, (1 - pasted) * labels + pasted * partner_labels


def mix_batches(images: list, onehots: list, cfg: LisaConfig, rng: np.random.RandomState):
    """One step's mixed images and soft labels from one batch per loader (mix_forward)."""
    if cfg.group_by == "group":
        # drawn every step, as theirs, though only 4 loaders use it
        pairs = INTRA_LABEL if rng.rand() < cfg.mix_ratio else INTRA_DOMAIN
        halves = [(images[a], images[b], onehots[a], onehots[b]) for a, b in pairs]
    else:  # each class batch: first half with second half
        halves = [
            (x[: len(x) // 2], x[len(x) // 2 :], y[: len(y) // 2], y[len(y) // 2 :])
            for x, y in zip(images, onehots)
        ]
    if cfg.mixing == "cutmix":
        mixed = [cutmix(*pair, cfg.cutmix_alpha, rng) for pair in halves]
    else:
        mixed = [mixup(*pair, cfg.mix_alpha, rng) for pair in halves]
    return torch.cat([m[0] for m in mixed]), torch.cat([m[1] for m in mixed])


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -sum_c target_c log softmax_c (LossComputer.loss with mix_up)."""
    return -(nn.functional.log_softmax(logits, dim=-1) * target).sum(-1)


def group_loaders(
    dataset: ImageTable, rows: list[np.ndarray], batch_size: int, seed: int, workers: int
) -> list[DataLoader]:
    """One shuffled loader per key (no dropped last batch, as theirs); one seeded generator
    shared by all, so each epoch's shuffles follow from the seed."""
    generator = torch.Generator().manual_seed(seed)
    loaders = []
    for r in rows:
        subset = Subset(dataset, r.tolist())
        sampler = RandomSampler(subset, generator=generator)
        loaders.append(DataLoader(subset, batch_size, sampler=sampler, num_workers=workers))
    return loaders


def train_epoch(model, loaders, steps, optimizer, scheduler, cfg, n_classes, rng, speed):
    """One LISA epoch; mean soft-label loss of the mixed images and the share whose larger
    label weight the model predicts (theirs logs no train accuracy for mixed images), over
    this process's slices."""
    model.train()
    device = next(model.parameters()).device
    procs = process_state()
    world, rank = procs.num_processes, procs.process_index
    iterators = [iter(loader) for loader in loaders]
    total_loss, total_correct, total = 0.0, 0, 0
    for _ in range(steps):
        batches = [next(it) for it in iterators]
        images = [speed.to_device(b[0], device) for b in batches]
        onehots = [nn.functional.one_hot(b[1], n_classes).float().to(device) for b in batches]
        mixed, target = mix_batches(images, onehots, cfg, rng)
        # every process drew the same mixed batch; each trains on its slice, and DDP's
        # gradient average of (local sum / n) x world is the gradient of the batch mean
        sizes = split_sizes(len(mixed), world)
        start = sum(sizes[:rank])
        mixed, target = mixed[start : start + sizes[rank]], target[start : start + sizes[rank]]
        with speed.autocast_context(device):
            logits = model(mixed)
        losses = soft_cross_entropy(logits.float(), target)
        loss = losses.sum() / sum(sizes) * world
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += losses.detach().sum().item()
        total_correct += (logits.argmax(1) == target.argmax(1)).sum().item()
        total += len(losses)
    return total_loss / total, total_correct / total


def train(config, root, table, groups):
    """LISA with the method's recipe (config.classifier, its recipe applied), selected on
    val WGA; the history has train_classifier's columns."""
    cfg, recipe = config.baselines.lisa, config.classifier
    seed = config.baselines.seed
    seed_everything(seed)
    train_part = split_table(table, "train")
    rows = loader_rows(train_part, cfg.group_by, groups)
    size = config.data.image_size
    transform = train_transform(size, recipe.augment, recipe.crop_scale)
    train_set = ImageTable(root, train_part, transform)
    val_set = ImageTable(root, split_table(table, "val"), eval_transform(size))
    loaders = group_loaders(train_set, rows, recipe.batch_size, seed, recipe.num_workers)
    steps = steps_per_epoch([len(r) for r in rows], recipe.batch_size)
    log.info(
        "lisa: %d loaders of %s images, %d steps an epoch", len(rows), recipe.batch_size, steps
    )

    model = build_classifier(recipe.arch, groups.n_classes, recipe.pretrained, recipe.weights)
    model = model.to(resolve_device(recipe.device))
    speed = Speed.for_device(next(model.parameters()).device, recipe)
    trained = prepare_model(model, recipe, speed)
    optimizer = make_optimizer(model, recipe, fused=speed.fused)
    scheduler = None
    if recipe.schedule == "cosine":  # per step, down to 0 at the last step
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs * steps)
    rng = np.random.RandomState(seed)
    best, best_state, best_epoch, history = (-1.0, -1.0), None, 0, []
    for epoch in range(1, recipe.epochs + 1):
        start = time.perf_counter()
        loss, acc = train_epoch(
            trained, loaders, steps, optimizer, scheduler, cfg, groups.n_classes, rng, speed
        )
        sync_buffers(model, process_state().num_processes)
        val = evaluate_split(model, val_set, recipe.batch_size)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss,
                "train_acc": acc,
                "val_wga": val["wga"],
                "val_mean_acc": val["mean_acc"],
            }
        )
        log.info("lisa: epoch %d took %.1f s", epoch, time.perf_counter() - start)
        if (val["wga"], val["mean_acc"]) > best:
            best, best_epoch = (val["wga"], val["mean_acc"]), epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    log.info("lisa: selected epoch %d (val WGA %.3f)", best_epoch, best[0])
    return TrainResult(model.eval(), best_epoch, history)
