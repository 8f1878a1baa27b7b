"""evaluate: group metrics of every trained model on val and test.

Writes `reports/metrics.json` (DVC metrics), shaped
{"<method>": {"val": {...}, "test": {"wga", "mean_acc", "adjusted_mean_acc", "groups",
"n", "ci"}}} with accuracies as fractions, and per-sample predictions to
models/evaluate/predictions.csv.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ddb import paths
from ddb.config import Config
from ddb.data.dataset import ImageTable, load_indexed, split_table
from ddb.metrics import summarize
from ddb.models.classifier import eval_transform, load_classifier
from ddb.training import predict
from ddb.utils import StageError, atomic_path, check_writable, write_json

log = logging.getLogger(__name__)


def trained_models(config: Config) -> dict[str, Path]:
    """Method name -> checkpoint, in the order the report lists them."""
    methods = ["erm", *config.baselines.methods, "dfr", "dac", "disc", "ddb_no_prune", "ddb"]
    return {method: paths.model_dir(method) / "model.pt" for method in methods}


def run(config: Config) -> None:
    check_writable(paths.METRICS, paths.PREDICTIONS)
    # read_metadata refuses a val or test split missing a group (its WGA would be undefined)
    root, table, groups = load_indexed(config.data)
    models = trained_models(config)
    missing = [str(checkpoint) for checkpoint in models.values() if not checkpoint.is_file()]
    if missing:
        raise StageError(
            f"no trained model at {', '.join(missing)}; train them first (`dvc repro`, or "
            "the stage that writes each: erm, baselines, dfr, dac, disc, retrain, retrain_no_prune)"
        )
    train_sizes = split_table(table, "train")["group"].value_counts().to_dict()
    cfg = config.evaluate
    metrics, predictions = {}, []
    for method, checkpoint in models.items():
        model = load_classifier(checkpoint)
        metrics[method] = {}
        for split in ("val", "test"):
            part = split_table(table, split)
            out = predict(model, ImageTable(root, part, eval_transform(config.data.image_size)))
            correct = out["probs"].argmax(1) == out["y"]
            metrics[method][split] = summarize(
                correct,
                out["group"],
                groups.names,
                train_sizes,
                cfg.confidence,
                cfg.bootstrap,
                cfg.seed,
            )
            predictions.append(
                pd.DataFrame(
                    {
                        "method": method,
                        "split": split,
                        "img_filename": part["img_filename"],
                        "y": out["y"],
                        "group": out["group"],
                        "pred": out["probs"].argmax(1),
                        "prob_y": out["probs"][range(len(part)), out["y"]],
                    }
                )
            )
        test = metrics[method]["test"]
        log.info("%s: test WGA %.3f, mean %.3f", method, test["wga"], test["mean_acc"])
    write_json(paths.METRICS, metrics)
    with atomic_path(paths.PREDICTIONS) as out:
        out.mkdir()
        pd.concat(predictions).to_csv(out / "predictions.csv", index=False)
