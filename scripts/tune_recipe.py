"""Choose the shared fine-tuning recipe on validation WGA (the figures params.yaml cites).

Trains ERM (the erm stage's own code: fit_classifier with erm.recipe) once per recipe in
a grid, in a folder where `ddb prepare` and `ddb index` have run, and prints per recipe the
best val WGA (the epoch it selects), and, for the shortcut check only, the selected
checkpoint's test WGA and mean accuracy. Test never picks a recipe. Usage, from that folder:

    python scripts/tune_recipe.py lr=0.0001,0.0003 epochs=2,3 optimizer=adam
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time

from ddb.config import load_config, with_recipe
from ddb.data.dataset import ImageTable, load_indexed, split_table
from ddb.models.classifier import eval_transform
from ddb.training import evaluate_split, fit_classifier


def grid(args: list[str]) -> list[dict]:
    keys, values = [], []
    for arg in args:
        key, _, options = arg.partition("=")
        keys.append(key)
        values.append([_value(v) for v in options.split(",")])
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def main() -> None:
    config = load_config()
    root, table, groups = load_indexed(config.data)
    test_set = ImageTable(root, split_table(table, "test"), eval_transform(config.data.image_size))
    for change in grid(sys.argv[1:]):
        trial = dataclasses.replace(
            config, classifier=dataclasses.replace(config.classifier, **change)
        )
        start = time.perf_counter()
        result = fit_classifier(
            with_recipe(trial, trial.erm.recipe), root, table, groups.n_classes, trial.erm.seed
        )
        test = evaluate_split(result.model, test_set)
        best = max(result.history, key=lambda row: (row["val_wga"], row["val_mean_acc"]))
        print(
            json.dumps(
                {
                    **change,
                    "val_wga": round(best["val_wga"], 3),
                    "val_mean_acc": round(best["val_mean_acc"], 3),
                    "best_epoch": result.best_epoch,
                    "val_wga_per_epoch": [round(row["val_wga"], 3) for row in result.history],
                    "test_wga": round(test["wga"], 3),
                    "test_mean_acc": round(test["mean_acc"], 3),
                    "seconds": round(time.perf_counter() - start),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
