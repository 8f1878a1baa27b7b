"""select: DDB's sources and inversion images, chosen from ERM's outputs alone.

Reads models/erm/train_outputs.csv: the per-sample cross-entropy and softmax of ERM's
*val-selected* checkpoint on every train image, under the deterministic eval transform
(the checkpoint chosen by validation WGA, not the last epoch, so the losses are less those
of a model that has memorised the train set). No train group label is read.

Per class:
- sources: the `select.sources_per_class` images of lowest loss, the most typical
  (majority-group) images. Per-sample loss, not the batch mean the public code ranks by.
- inversion images: the `invert.num_images` images of highest loss among the rest: the ones
  ERM finds atypical, which are mostly the minority group (a waterbird on land), so the
  learned token carries the bird rather than its usual background (the paper prefers
  minority samples; the ablation's best count is 30).
Writes models/select/selected.csv (img_filename, y, loss, prob_y, role, rank) and
summary.json (counts and Psi_i, the mean ERM probability of class i over its sources, the
threshold of prune's condition (a)).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import DataError, groups_of
from ddb.utils import StageError, atomic_path, check_writable, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    check_writable(paths.SELECT)
    outputs_path = paths.ERM / "train_outputs.csv"
    outputs = read_train_outputs(outputs_path)
    class_names = groups_of(config.data).class_names
    check_enough_images(
        outputs.y.value_counts().to_dict(),
        class_names,
        config.select.sources_per_class,
        config.invert.num_images,
        where=str(outputs_path),
    )
    selected = select_images(
        outputs, len(class_names), config.select.sources_per_class, config.invert.num_images
    )
    summary = selection_summary(selected, groups_of(config.data).class_names)
    with atomic_path(paths.SELECT) as out:
        out.mkdir()
        selected.to_csv(out / "selected.csv", index=False)
        write_json(out / "summary.json", summary)
    log.info("select: %s", summary)


def check_enough_images(
    train_per_class: dict[int, int],
    class_names,
    sources_per_class: int,
    num_images: int,
    where: str,
) -> None:
    """Each class needs `select.sources_per_class` sources plus `invert.num_images`
    inversion images, all distinct train images. Checked here and at the start of every
    stage that trains on data.root (ddb.training.load_training_data), so that a small
    dataset stops before ERM and the baselines train, not at invert."""
    needed = sources_per_class + num_images
    for c, name in enumerate(class_names):
        have = int(train_per_class.get(c, 0))
        if have >= needed:
            continue
        fixes = []
        if have - num_images >= 1:
            fixes.append(f"lower select.sources_per_class to at most {have - num_images}")
        if num_images > 0 and have - sources_per_class >= 0:
            fixes.append(f"lower invert.num_images to at most {have - sources_per_class}")
        fixes.append(f"add train images of class {name}")
        raise DataError(
            f"{where}: class {name} has {have} train images, but select.sources_per_class "
            f"({sources_per_class}) + invert.num_images ({num_images}) = {needed} distinct "
            f"train images are needed per class (the sources, then the inversion images). "
            f"To fix: {'; or '.join(fixes)}."
        )


def read_train_outputs(path: Path) -> pd.DataFrame:
    """ERM's per-sample outputs, with the columns select reads."""
    if not path.is_file():
        raise StageError(f"{path}: not found; train ERM first (`dvc repro erm`)")
    outputs = pd.read_csv(path)
    missing = [c for c in ("img_filename", "y", "loss", "prob_0") if c not in outputs.columns]
    if missing:
        raise StageError(
            f"{path}: missing column(s) {', '.join(missing)}, so it was not written by this "
            "version of the erm stage; re-run it (`dvc repro -f erm`)"
        )
    return outputs


def select_images(
    outputs: pd.DataFrame, n_classes: int, sources_per_class: int, inversion_per_class: int
) -> pd.DataFrame:
    """Rows of `outputs` with role 'source' (lowest loss) or 'inversion' (highest loss of
    the rest), `rank` 0 = first chosen. Ties break by file name, so the choice is stable."""
    probs = outputs[[f"prob_{c}" for c in range(n_classes)]].to_numpy()
    outputs = outputs.assign(prob_y=probs[np.arange(len(outputs)), outputs.y.to_numpy()])
    parts = []
    for c in range(n_classes):
        of_class = outputs[outputs.y == c].sort_values(["loss", "img_filename"], kind="stable")
        sources = of_class.head(sources_per_class)
        rest = of_class.iloc[len(sources) :].sort_values(
            ["loss", "img_filename"], ascending=[False, True], kind="stable"
        )
        inversion = rest.head(inversion_per_class)
        parts.append(sources.assign(role="source", rank=range(len(sources))))
        parts.append(inversion.assign(role="inversion", rank=range(len(inversion))))
    columns = ["img_filename", "y", "loss", "prob_y", "role", "rank"]
    return pd.concat(parts)[columns].reset_index(drop=True)


def selection_summary(selected: pd.DataFrame, class_names) -> dict:
    """Counts per class and role, and Psi (mean ERM probability of the class over its sources)."""
    summary = {}
    for c, name in enumerate(class_names):
        sources = selected[(selected.y == c) & (selected.role == "source")]
        inversion = selected[(selected.y == c) & (selected.role == "inversion")]
        summary[name] = {
            "sources": len(sources),
            "inversion_images": len(inversion),
            "psi": float(sources.prob_y.mean()) if len(sources) else None,
            "max_source_loss": float(sources.loss.max()) if len(sources) else None,
            "min_inversion_loss": float(inversion.loss.min()) if len(inversion) else None,
        }
    return summary
