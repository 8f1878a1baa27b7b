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
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from tqdm import tqdm

from ddb import paths
from ddb.config import ClassifierConfig, Config, ConfigError
from ddb.data.dataset import (
    Groups,
    ImageTable,
    load_indexed,
    split_table,
)
from ddb.distributed import process_state, split_sizes
from ddb.metrics import worst_group_accuracy
from ddb.models.classifier import (
    build_classifier,
    eval_transform,
    save_classifier,
    train_transform,
)
from ddb.stages.select import check_enough_images
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


def make_optimizer(
    model: nn.Module, cfg: ClassifierConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """cfg's optimizer; fused: one kernel per step for all parameters (CUDA only)."""
    extra = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            **extra,
        )
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    return optimizer(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


@dataclass(frozen=True)
class Speed:
    """How a training step runs on its device. On CPU everything is off, so CPU results do
    not change; on CUDA `classifier.amp` turns on bf16 autocast (no GradScaler: bf16 has
    fp32's range), channels_last, a fused optimizer and pinned host memory."""

    autocast: bool = False
    channels_last: bool = False
    fused: bool = False
    pin_memory: bool = False

    @classmethod
    def for_device(cls, device: torch.device, cfg: ClassifierConfig) -> Speed:
        fast = device.type == "cuda" and cfg.amp
        return cls(fast, fast, fast, device.type == "cuda")

    def autocast_context(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = images.to(device, non_blocking=self.pin_memory)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class RankBatches(torch.utils.data.Sampler):
    """This process's slice of each batch of `batches` (a BatchSampler every process builds
    with the same seed, so all see the same global batches): process r of w takes the r-th
    of w near-equal contiguous slices. One process takes whole batches, unchanged."""

    def __init__(self, batches: torch.utils.data.BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for batch in self.batches:
            sizes = split_sizes(len(batch), self.world)
            start = sum(sizes[: self.rank])
            yield batch[start : start + sizes[self.rank]]

    def __len__(self) -> int:
        return len(self.batches)


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    cfg: ClassifierConfig,
    seed: int,
    sample_weights: np.ndarray | None = None,
    sample_indices: np.ndarray | None = None,
    loss_weights: np.ndarray | None = None,
    group_loss: Callable | None = None,
    select_best: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train `model` for cfg.epochs; keep the epoch with the best validation WGA.

    sample_weights: draw training samples with these probabilities (with replacement);
    sample_indices: an epoch is these rows, repeats included, shuffled (JTT's upsampling);
    loss_weights: weight each training sample's loss (rescaled to mean 1 over the set);
    group_loss: reduce the per-sample losses with the batch's group labels instead of a
    mean (GroupDRO's `(losses, group) -> loss`; only methods that may read train groups);
    select_best=False keeps the last epoch (JTT's identification model).
    """
    device = next(model.parameters()).device
    speed = Speed.for_device(device, cfg)
    loader = train_loader(train_set, cfg, seed, speed, sample_weights, sample_indices)
    weights = None
    if loss_weights is not None:  # mean 1 over the train set, so the lr means the same
        weights = torch.as_tensor(loss_weights, dtype=torch.float32)
        weights = weights * len(weights) / weights.sum()
    trained = prepare_model(model, cfg, speed)  # what the steps call; `model` is saved
    world = loader.batch_sampler.world
    optimizer = make_optimizer(model, cfg, fused=speed.fused)
    scheduler = None
    if cfg.schedule == "cosine":  # per step, down to 0 at the last step
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * len(loader))
    best = (-1.0, -1.0)
    best_state, best_epoch, history = None, 0, []
    epochs = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch")
    for epoch in epochs:
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(
            trained, loader, optimizer, scheduler, weights, group_loss, speed
        )
        sync_buffers(model, world)  # BatchNorm's running statistics are per process
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


def train_loader(
    train_set: Dataset,
    cfg: ClassifierConfig,
    seed: int,
    speed: Speed,
    sample_weights: np.ndarray | None = None,
    sample_indices: np.ndarray | None = None,
) -> DataLoader:
    """Shuffled batches of cfg.batch_size, seeded by `seed`: an epoch is the whole set, or
    `sample_indices` (rows listed k times come k times, without replacement: JTT's
    upsampled set), or len(train_set) draws with `sample_weights` (with replacement: the
    group_DRO code's --reweight_groups); under several processes, this process's slice of
    each batch (RankBatches)."""
    if sample_weights is not None and sample_indices is not None:
        raise ValueError("train_loader: give sample_weights or sample_indices, not both")
    generator = torch.Generator().manual_seed(seed)
    procs = process_state()
    world = procs.num_processes
    epoch_size = len(train_set) if sample_indices is None else len(sample_indices)
    # a last batch of one sample (per process) would stop BatchNorm in training mode; drop
    # only that one
    drop_last = 0 < epoch_size % cfg.batch_size < 2 * world
    if sample_weights is not None:
        sampler = WeightedRandomSampler(
            torch.as_tensor(sample_weights, dtype=torch.double), len(train_set), generator=generator
        )
        loader_generator = None
    elif sample_indices is not None:
        sampler = SubsetRandomSampler(np.asarray(sample_indices).tolist(), generator=generator)
        loader_generator = generator  # shared, as in the uniform case below
    else:
        sampler = RandomSampler(train_set, generator=generator)
        # the loader shares it, as DataLoader(shuffle=True, generator=...) does (its workers'
        # base seed is drawn from it), so one process draws the batches it always drew
        loader_generator = generator
    batches = BatchSampler(sampler, cfg.batch_size, drop_last)
    return DataLoader(
        train_set,
        batch_sampler=RankBatches(batches, procs.process_index, world),
        generator=loader_generator,
        num_workers=cfg.num_workers,
        pin_memory=speed.pin_memory,
        persistent_workers=cfg.num_workers > 0,
    )


def prepare_model(model: nn.Module, cfg: ClassifierConfig, speed: Speed) -> nn.Module:
    """The module the training steps call: `model` in channels_last where `speed` says,
    wrapped for data parallelism under several processes, compiled with cfg.compile."""
    device = next(model.parameters()).device
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trained = data_parallel(model, device, process_state().num_processes)
    return torch.compile(trained) if cfg.compile else trained


def train_epoch(model, loader, optimizer, scheduler, weights, group_loss, speed):
    """One epoch; the loss and accuracy of the whole train set, read back once at the end
    (a `.item()` per step would wait for the GPU every step). Under several processes the
    loss is the one process's loss of the whole batch (see `_local_surrogate`)."""
    model.train()
    device = next(model.parameters()).device
    batches, world = loader.batch_sampler.batches, loader.batch_sampler.world
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    total_correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    for (images, y, group, index), batch_size in zip(loader, batch_sizes(batches)):
        images, y = speed.to_device(images, device), y.to(device, non_blocking=speed.pin_memory)
        with speed.autocast_context(device):
            logits = model(images)
        losses = nn.functional.cross_entropy(logits.float(), y, reduction="none")
        correct = logits.argmax(1) == y
        labels = torch.stack([y, group.to(device), index.to(device), correct.long()])
        if world > 1:
            sizes = split_sizes(batch_size, world)
            all_losses, labels = gather_batch(losses.detach(), labels, sizes)
            all_losses.requires_grad_()
        else:
            all_losses = losses
        y_all, group_all, index_all, correct_all = labels
        if group_loss is not None:
            loss = group_loss(all_losses, group_all)
        elif weights is None:
            loss = all_losses.mean()
        else:
            # not divided by the batch's own weight sum: a batch of zero weights gives 0
            loss = (all_losses * weights.to(device)[index_all]).mean()
        if world > 1:
            loss = _local_surrogate(loss, all_losses, losses, sizes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += all_losses.detach().sum().double()
        total_correct += correct_all.sum()
        total += y_all.numel()
    return total_loss.item() / total, total_correct.item() / total


def data_parallel(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """The model the steps call: itself, or under several processes wrapped in DDP (which
    averages the gradients), with BatchNorm synchronised where torch supports it (GPUs; on
    CPU each process normalises by its own slice of the batch)."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def batch_sizes(batches: BatchSampler) -> list[int]:
    """The size of each global batch of an epoch, known without drawing it."""
    n, size = len(batches.sampler), batches.batch_size
    last = [] if batches.drop_last or n % size == 0 else [n % size]
    return [size] * (n // size) + last


def gather_batch(losses: torch.Tensor, labels: torch.Tensor, sizes: list[int]):
    """Every process's per-sample losses (and its 4 x n label rows), in global batch order:
    the slices of RankBatches (`sizes`, one per process) put back together."""
    import torch.distributed as dist

    world, width = len(sizes), sizes[0]
    padded = torch.zeros(width, dtype=losses.dtype, device=losses.device)
    padded[: len(losses)] = losses
    padded_labels = torch.zeros(4, width, dtype=labels.dtype, device=labels.device)
    padded_labels[:, : labels.shape[1]] = labels
    parts = [torch.empty_like(padded) for _ in range(world)]
    label_parts = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(parts, padded)
    dist.all_gather(label_parts, padded_labels)
    return (
        torch.cat([p[:k] for p, k in zip(parts, sizes)]),
        torch.cat([p[:, :k] for p, k in zip(label_parts, sizes)], 1),
    )


def _local_surrogate(loss, all_losses, local_losses, sizes: list[int]) -> torch.Tensor:
    """A loss whose gradient in this process, averaged over the processes by DDP, is the
    gradient of `loss` (computed alike everywhere from every process's losses, so GroupDRO's
    group weights and the loss weights see the whole batch): each process back-propagates
    d loss / d its own losses, times the number of processes."""
    import torch.distributed as dist

    (grad,) = torch.autograd.grad(loss, all_losses)
    start = sum(sizes[: dist.get_rank()])
    mine = grad[start : start + len(local_losses)]
    return (local_losses * mine).sum() * len(sizes)


def sync_buffers(model: nn.Module, world: int) -> None:
    """Process 0's BatchNorm statistics everywhere, so every process evaluates (and selects
    the epoch of) one and the same model."""
    if world == 1:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


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
    """'auto' is the GPU when there is one (this process's own GPU under `accelerate
    launch` / `torchrun`); results are bit-for-bit reproducible on CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "params.yaml: 'classifier.device' is cuda but no GPU is visible; use auto or cpu"
        )
    if name == "cuda":
        device = process_state().device
        return device if device.index is not None else torch.device("cuda", 0)
    return torch.device(name)
