"""dfr: Deep Feature Reweighting of the ERM model (see ddb/methods/dfr.py).

Writes models/dfr/model.pt (the ERM model with its refit last layer) and
models/dfr/history.csv (held-out val WGA of each C on the grid).
"""

from __future__ import annotations

import logging

import pandas as pd

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import load_indexed
from ddb.distributed import main_process_output
from ddb.methods import dfr
from ddb.models.classifier import load_classifier, save_classifier

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    root, table, groups = load_indexed(config.data)
    erm_model = load_classifier(paths.ERM / "model.pt")
    result = dfr.train(config, root, table, groups, erm_model)
    with main_process_output(paths.DFR) as out:
        out.mkdir()
        save_classifier(result.model, config.classifier.arch, groups.n_classes, out / "model.pt")
        pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
