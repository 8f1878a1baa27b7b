"""retrain: ERM fine-tuned on the original and the generated samples (DDB step 7).

Starts from ERM's weights (models/erm/model.pt) with a re-initialised head and trains every
layer with the `classifier` recipe, except `retrain.lr` and `retrain.epochs`, on the train
split together with the generated samples. The loss of a batch is

    L = mean CE(originals in it) + sum_c gamma_c * mean CE(generated samples of class c in it)

(per-subset means, as the paper's CE(original) + gamma_1 CE(generated 0) + gamma_2 CE(...);
a subset absent from the batch adds 0: the public code's CE of an empty subset is NaN).
No group label is read for training, neither of the train split nor of the generated
samples (their `place` is bookkeeping): the loss sees only a subset id. The checkpoint is
selected by worst-group *validation* accuracy, as for every method.

Two stages run this module: `retrain` on prune's kept samples (models/ddb, the `ddb` row) and
`retrain_no_prune` on every generated sample (models/ddb_no_prune, the paper's ablation).

An interrupted run restarts from scratch rather than resuming from an epoch checkpoint:
training is seeded (retrain.seed) and deterministic on one machine, so a restart ends
bit-identical to an uninterrupted run, whereas a resume is bit-identical only if it restores
the model, optimizer, schedule and every random state (the shuffling generator, the global
one of the augmentations) at the epoch boundary, state that a stale checkpoint could mix
with changed params or inputs. Retraining is a few epochs from ERM's weights, a fraction of
generate's cost, which is the stage that resumes. The output's temporary folder
(models/.ddb.*) appears when training starts and becomes the output only at the end; a run
killed outright leaves it behind, and the next run removes it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import ConcatDataset

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import ImageTable, load_indexed, split_table
from ddb.distributed import main_process_output, process_state
from ddb.models.classifier import (
    eval_transform,
    load_classifier,
    reset_head,
    train_transform,
)
from ddb.training import resolve_device, save_result, train_classifier
from ddb.utils import remove_stale_temporaries, seed_everything, write_json

log = logging.getLogger(__name__)

GENERATED_COLUMNS = ("img_filename", "y")  # all that retrain reads of a generated sample


def run(config: Config) -> None:
    """`ddb`: retrain on the samples that prune kept."""
    retrain(config, paths.PRUNE / "kept.csv", paths.DDB)


def run_no_prune(config: Config) -> None:
    """`ddb_no_prune`: retrain on every generated sample."""
    retrain(config, paths.GENERATE / "manifest.csv", paths.DDB_NO_PRUNE)


def retrain(config: Config, manifest_path: Path, out_dir: Path) -> None:
    root, table, groups = load_indexed(config.data)
    generated = pd.read_csv(manifest_path, usecols=list(GENERATED_COLUMNS))
    size = config.data.image_size
    cfg = dataclasses.replace(
        config.retrain.recipe.applied_to(config.classifier),
        lr=config.retrain.lr,
        epochs=config.retrain.epochs,
    )
    train_set = augmented_train_set(
        root, split_table(table, "train"), paths.GENERATE, generated, size, cfg
    )
    val_set = ImageTable(root, split_table(table, "val"), eval_transform(size))
    if process_state().is_main_process:
        remove_stale_temporaries(out_dir)
    with main_process_output(out_dir) as out:  # its temporary folder: the work in progress
        out.mkdir()
        seed_everything(config.retrain.seed)
        model = load_classifier(paths.ERM / "model.pt")
        reset_head(model, groups.n_classes)
        model.to(resolve_device(cfg.device))
        result = train_classifier(
            model,
            train_set,
            val_set,
            cfg,
            config.retrain.seed,
            group_loss=subset_loss(config.retrain.gamma),
            desc=out_dir.name,
        )
        counts = generated.y.value_counts().to_dict()
        save_result(result, config.classifier.arch, groups.n_classes, out)
        write_json(
            out / "summary.json",
            {
                "original": int((table.split == 0).sum()),
                "generated": {
                    groups.class_names[c]: int(counts.get(c, 0)) for c in range(groups.n_classes)
                },
                "best_epoch": result.best_epoch,
            },
        )
    log.info("%s: saved (selected epoch %d)", out_dir, result.best_epoch)


def augmented_train_set(root, train, generated_root, generated, size, cfg):
    """Train split ∪ generated samples; the third item of each sample is its subset id
    (0 = original, 1 + c = generated of class c), never a group label."""
    transform = train_transform(size, cfg.augment, cfg.crop_scale)
    original = train[["img_filename", "y"]].assign(group=0)
    new = generated[list(GENERATED_COLUMNS)].assign(group=1 + generated.y)
    parts = [ImageTable(root, original, transform)]
    if len(new):
        parts.append(ImageTable(generated_root, new, transform))
    return ConcatDataset(parts)


def subset_loss(gamma: list[float]):
    """The batch loss from per-sample losses and subset ids (see the module doc)."""
    weights = torch.tensor([1.0, *gamma])

    def loss(losses: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
        total = losses.new_zeros(())
        for s in torch.unique(subset).tolist():
            total = total + weights[s].to(losses.device) * losses[subset == s].mean()
        return total

    return loss
