"""erm: the plain ERM classifier (the model whose shortcut DDB fixes).

Writes models/erm/: `model.pt` (val-WGA-selected checkpoint), `history.csv` (per-epoch
train loss/accuracy and val WGA/mean accuracy) and `train_outputs.csv` (per-sample
cross-entropy and softmax of the selected checkpoint on every train image, under the eval
transform; DDB's `select` ranks its sources by these per-sample losses).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ddb import paths
from ddb.config import Config, with_recipe
from ddb.data.dataset import ImageTable, split_table
from ddb.distributed import main_process_output
from ddb.models.classifier import eval_transform
from ddb.training import fit_classifier, load_training_data, predict, save_result
from ddb.utils import check_writable

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    # Everything that can be checked is, before the images are decoded and ERM trains.
    check_writable(paths.ERM)
    root, table, groups = load_training_data(config)
    train = split_table(table, "train")
    result = fit_classifier(
        with_recipe(config, config.erm.recipe), root, table, groups.n_classes, config.erm.seed
    )
    train_set = ImageTable(root, train, eval_transform(config.data.image_size))
    outputs = per_sample_outputs(result.model, train_set, train)
    with main_process_output(paths.ERM) as out:
        save_result(result, config.classifier.arch, groups.n_classes, out)
        outputs.to_csv(out / "train_outputs.csv", index=False)
    log.info("saved %s", paths.ERM)


def per_sample_outputs(model, dataset, train: pd.DataFrame) -> pd.DataFrame:
    """Per-sample loss and softmax; no group column (DDB must not read train groups)."""
    out = predict(model, dataset)
    probs = out["probs"]
    loss = -np.log(np.clip(probs[np.arange(len(probs)), out["y"]], 1e-12, None))
    frame = pd.DataFrame({"img_filename": train["img_filename"], "y": out["y"], "loss": loss})
    for c in range(probs.shape[1]):
        frame[f"prob_{c}"] = probs[:, c]
    frame["pred"] = probs.argmax(1)
    return frame
