"""Baseline methods, looked up by name (as SubpopBench does).

Each module exposes `train(config, root, table, groups) -> TrainResult`. LABELS says, for
each, its display name and which group labels it reads; it lives here rather than in the
modules so that the report can label methods without importing torch (every stage is a
new process, and importing torch and torchvision costs seconds).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

# name -> (display name, uses train group labels, uses val group labels)
LABELS: dict[str, tuple[str, str, str]] = {
    "group_balanced": ("Group-balanced ERM (oracle)", "yes", "yes (model selection)"),
    "jtt": ("JTT", "no", "yes (model selection)"),
    "group_dro": ("GroupDRO", "yes", "yes (model selection)"),
    "dfr": ("DFR", "no", "yes (trains the last layer)"),
    "lisa": ("LISA", "yes", "yes (model selection)"),
    "dac": ("DaC", "no", "yes (model selection)"),
    # its own stage; train groups only with disc.reweight_groups (their Waterbirds script)
    "disc": ("DISC", "no (yes with reweight_groups)", "yes (model selection)"),
}


def method(name: str) -> ModuleType:
    """The module of the method called `name` (imported on first use)."""
    if name not in LABELS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(LABELS)}")
    return import_module(f"ddb.methods.{name}")
