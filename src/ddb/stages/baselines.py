"""baselines: the from-scratch methods DDB is compared with (`baselines.methods`), looked
up in the registry `ddb.methods.METHODS`. Each writes models/baselines/<name>/ with
model.pt and history.csv. DFR, which retrains the ERM model's last layer, is its own stage.
"""

from __future__ import annotations

import logging

from ddb import paths
from ddb.config import Config
from ddb.data.waterbirds import load_dataset
from ddb.methods import METHODS
from ddb.training import save_result
from ddb.utils import atomic_path

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    root, table, groups = load_dataset(config.data)
    with atomic_path(paths.BASELINES) as out:
        out.mkdir()
        for name in config.baselines.methods:
            log.info("baseline %s", name)
            result = METHODS[name].train(config, root, table, groups)
            save_result(result, config.classifier.arch, groups.n_classes, out / name)
