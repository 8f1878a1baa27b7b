"""judge: the fixed classifier that foundation_report scores repaints with.

A repaint "as a waterbird" counts as recognised when an independent classifier calls it a
waterbird. That classifier is a measuring instrument, so it must not move when the thing
measured does not: it is group-balanced ERM (`ddb.methods.group_balanced`, the oracle
baseline's own code) fine-tuned from the backbone on the embedded benchmark's train split
(data/prepared, the prepare stage's output), never on data.root, with its own copy of the
embedded default's recipe (`judge.classifier`), never a profile's `classifier`.

Trained once and committed, like the backbone (a frozen stage; outputs in git), rather than
retrained inside the report on every run: the same weights then judge the small models and a
paper profile's checkpoints, on any machine (a GPU retrains to other weights), and the
report does not pay a classifier training each time it runs. The price is one 22 MB file.

Writes models/judge/: model.pt (the classifier checkpoint of models/classifier.py, weights in
fp16), history.csv, and report.json (its val WGA on the embedded val split, the sha256 of
data/prepared.md5 it was trained on, the recipe, the training time).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pandas as pd

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import WATERBIRDS_GROUPS, read_metadata
from ddb.methods import method
from ddb.models.classifier import save_classifier
from ddb.training import resolve_device
from ddb.utils import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.judge
    groups = WATERBIRDS_GROUPS  # the embedded benchmark's classes and places
    table = read_metadata(paths.PREPARED, groups)
    start = time.perf_counter()
    result = method("group_balanced").train(judge_config(config), paths.PREPARED, table, groups)
    seconds = time.perf_counter() - start
    best = result.history[result.best_epoch - 1]
    report = {
        "method": "group_balanced",
        "trained_on": str(paths.PREPARED),
        "data_sha256": sha256_file(paths.PREPARED_MD5),
        "image_size": config.prepare.image_size,
        "class_names": list(groups.class_names),
        "val_wga": best["val_wga"],
        "val_mean_acc": best["val_mean_acc"],
        "best_epoch": result.best_epoch,
        "seed": cfg.seed,
        "mode": cfg.mode,
        "recipe": dataclasses.asdict(cfg.classifier),
        "train_seconds": round(seconds, 1),
        "train_device": resolve_device(cfg.classifier.device).type,
    }
    with atomic_path(paths.JUDGE) as out:
        out.mkdir()
        # fp16 halves the committed file; load_classifier copies it into a float32 model
        save_classifier(
            result.model.half(),
            cfg.classifier.arch,
            groups.n_classes,
            out / "model.pt",
            best_epoch=result.best_epoch,
        )
        pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
        write_json(out / "report.json", report)
    log.info(
        "judge: val WGA %.3f (epoch %d) in %.0f s on %s",
        report["val_wga"],
        result.best_epoch,
        seconds,
        report["train_device"],
    )


def judge_config(config: Config) -> Config:
    """`config` as the group_balanced method reads it, with everything it reads taken from
    `judge` and the embedded benchmark: data.root, data.image_size, classifier,
    baselines.seed and baselines.group_balanced.mode."""
    cfg = config.judge
    baselines = dataclasses.replace(
        config.baselines,
        seed=cfg.seed,
        group_balanced=dataclasses.replace(config.baselines.group_balanced, mode=cfg.mode),
    )
    groups = WATERBIRDS_GROUPS  # the embedded benchmark's classes and places
    data = dataclasses.replace(
        config.data,
        profile="embedded",
        root=str(paths.PREPARED),
        format="auto",
        class_names=list(groups.class_names),
        place_names=list(groups.place_names),
        image_size=config.prepare.image_size,
    )
    return dataclasses.replace(config, data=data, classifier=cfg.classifier, baselines=baselines)
