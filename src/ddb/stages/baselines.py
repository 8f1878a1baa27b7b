"""baselines: the from-scratch methods DDB is compared with (`baselines.methods`), looked
up by name in `ddb.methods`. Each writes models/baselines/<name>/ with
model.pt and history.csv. DFR, which retrains the ERM model's last layer, is its own stage.
"""

from __future__ import annotations

import logging

from ddb import paths
from ddb.config import Config, with_recipe
from ddb.data.dataset import split_table
from ddb.distributed import main_process_output
from ddb.methods import method
from ddb.training import load_training_data, save_result
from ddb.utils import check_writable

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    check_writable(paths.BASELINES)
    root, table, groups = load_training_data(config)
    if "lisa" in config.baselines.methods:  # a group with no image stops it before training
        lisa = config.baselines.lisa
        method("lisa").loader_rows(split_table(table, "train"), lisa.group_by, groups)
    with main_process_output(paths.BASELINES) as out:
        out.mkdir()
        for name in config.baselines.methods:
            log.info("baseline %s", name)
            recipe = getattr(config.baselines, name).recipe  # the method's own, where set
            result = method(name).train(with_recipe(config, recipe), root, table, groups)
            save_result(result, config.classifier.arch, groups.n_classes, out / name)
