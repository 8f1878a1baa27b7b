"""Baseline methods, looked up by name (as SubpopBench does).

Each module exposes `train(config, root, table, groups) -> TrainResult` and the group
labels it uses: TRAIN_GROUPS (train group labels) and VAL_GROUPS (val group labels).
"""

from __future__ import annotations

from types import ModuleType

from ddb.methods import dfr, group_balanced, group_dro, jtt

METHODS: dict[str, ModuleType] = {
    "group_balanced": group_balanced,
    "jtt": jtt,
    "group_dro": group_dro,
    "dfr": dfr,
}
