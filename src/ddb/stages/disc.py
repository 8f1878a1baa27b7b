"""disc: DISC, Discover and Cure (see ddb/methods/disc.py), after erm.

Checks the concept bank (`disc.concept_bank`) before any work, then writes
models/disc/model.pt (the val-WGA-selected checkpoint), models/disc/history.csv (per epoch,
as every trained classifier's) and models/disc/concepts.json (each class's concepts, the
cluster sizes and the sampling probabilities of every epoch).
"""

from __future__ import annotations

from pathlib import Path

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import load_indexed
from ddb.distributed import main_process_output
from ddb.methods import disc
from ddb.models.classifier import load_classifier
from ddb.training import save_result
from ddb.utils import write_json


def run(config: Config) -> None:
    cfg = config.disc
    bank = Path(cfg.concept_bank)
    names = disc.bank_concepts(bank, cfg.concept_categories, cfg.n_concept_imgs)
    root, table, groups = load_indexed(config.data)
    erm_model = load_classifier(paths.ERM / "model.pt")
    result, summary = disc.train(config, root, table, groups, erm_model, bank, names)
    arch = config.classifier.arch
    with main_process_output(paths.DISC) as out:
        save_result(result, arch, groups.n_classes, out)
        write_json(out / "concepts.json", summary)
