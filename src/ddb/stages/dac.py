"""dac: Decompose-and-Compose on the ERM model (see ddb/methods/dac.py).

Writes models/dac/: `model.pt` (the ERM model with its retrained last layer, the val-WGA
epoch), `history.csv` (per-epoch train loss/accuracy and val WGA/mean accuracy, as erm's),
`masks.npz` (`packed`: each train image's adaptive mask, np.packbits of the flattened
data.image_size square, rows in train-split order; `size`: its height and width) and
`masks.csv` (per train image: ERM's loss, the quantile its mask keeps, ERM's loss at each
candidate quantile). The masks are computed once per run (about a third of the stage's
time on the embedded benchmark), not resumed.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import ImageTable, load_indexed, split_table
from ddb.distributed import main_process_output
from ddb.methods import dac
from ddb.models.classifier import eval_transform, load_classifier
from ddb.training import resolve_device, save_result
from ddb.utils import check_writable

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    check_writable(paths.DAC)
    root, table, groups = load_indexed(config.data)
    train = split_table(table, "train")
    erm_model = load_classifier(paths.ERM / "model.pt").to(resolve_device(config.classifier.device))
    train_set = ImageTable(root, train, eval_transform(config.data.image_size))
    masks = dac.adaptive_masks(
        erm_model, train_set, config.dac.batch_size, config.classifier.num_workers
    )
    log.info(
        "dac: mask quantiles chosen %s",
        dict(zip(*np.unique(masks.quantile, return_counts=True), strict=True)),
    )
    result = dac.train(config, root, table, groups, erm_model, masks)
    with main_process_output(paths.DAC) as out:
        save_result(result, config.classifier.arch, groups.n_classes, out)
        np.savez(out / "masks.npz", packed=masks.packed, size=np.array(masks.size))
        mask_table(train, masks).to_csv(out / "masks.csv", index=False)


def mask_table(train: pd.DataFrame, masks: dac.Masks) -> pd.DataFrame:
    """Per train image: ERM's loss, its mask's quantile and the loss curve it came from
    (no group column: DaC reads no train group)."""
    frame = pd.DataFrame(
        {
            "img_filename": train["img_filename"],
            "y": train["y"],
            "erm_loss": masks.erm_loss,
            "quantile": masks.quantile,
        }
    )
    for i, q in enumerate(dac.QUANTILES):
        frame[f"masked_loss_{q}"] = masks.masked_loss[:, i]
    return frame
