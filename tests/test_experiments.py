"""The paper-table and ablation commands: queue arguments and the tables they write."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ddb import experiments
from ddb.config import Config


def _metrics(wga: float, mean: float = 0.9) -> dict:
    split = {
        "wga": wga,
        "mean_acc": mean,
        "adjusted_mean_acc": mean - 0.05,
        "ci": {"wga": [wga - 0.02, wga + 0.02]},
    }
    return {"val": split, "test": split}


def _exp(name: str, timestamp: str, metrics: dict | None, prune: dict | None = None) -> dict:
    files = {}
    if metrics is not None:
        files["reports/metrics.json"] = {"data": metrics}
    if prune is not None:
        files["reports/prune.json"] = {"data": prune}
    return {
        "rev": name + "-rev",
        "name": name,
        "data": {"timestamp": timestamp, "params": {"params.yaml": {"data": {}}}, "metrics": files},
    }


def _show(*exps, state: str = "success") -> list[dict]:
    """The shape of `dvc exp show --json`: baselines with their experiments' revs."""
    return [
        {
            "rev": "abc",
            "name": "main",
            "data": {"timestamp": "2026-11-25T00:00:00", "params": {}, "metrics": {}},
            "experiments": [
                {"name": e["name"], "revs": [e], "executor": {"state": state}} for e in exps
            ],
        }
    ]


def test_running_queued_and_failed_experiments_are_not_results():
    # a running experiment shows its baseline's metrics: they must not count as its own
    for state in ("running", "queued", "failed"):
        exp = _exp("ablation-no-inversion", "t", {"ddb": _metrics(0.6)})
        assert experiments.experiments_by_name(_show(exp, state=state)) == {}


def test_experiments_by_name_keeps_the_newest_of_each_name():
    old = _exp("embedded-seed0", "2026-11-25T10:00:00", {"erm": _metrics(0.1)})
    new = _exp("embedded-seed0", "2026-11-25T12:00:00", {"erm": _metrics(0.3)})
    found = experiments.experiments_by_name(_show(old, new))
    assert experiments.metrics_file(found["embedded-seed0"], "reports/metrics.json") == {
        "erm": _metrics(0.3)
    }


def test_paper_table_means_stds_published_figures_and_not_run_column():
    wgas = {"erm": [0.20, 0.30, 0.25], "ddb": [0.60, 0.70, 0.65]}
    exps = [
        _exp(f"embedded-seed{s}", "t", {m: _metrics(v[s]) for m, v in wgas.items()})
        for s in range(3)
    ]
    runs = experiments.paper_runs(["embedded"], seeds=3)
    assert set(runs) == {"embedded-seed0", "embedded-seed1", "embedded-seed2"}
    assert runs["embedded-seed2"][2] == {
        "dataset": "embedded",  # the profile: a Hydra group choice
        **dict.fromkeys(experiments.SEED_KEYS, 2),
    }
    results = experiments.collect_paper_results(experiments.experiments_by_name(_show(*exps)), runs)
    assert np.allclose(results["embedded"]["ddb"]["wga"], [60, 70, 65])
    missing = {"waterbirds": ["data/waterbird_complete95_forest2water2/metadata.csv"]}
    text = experiments.paper_table_markdown(results, missing, ["embedded", "waterbirds"], 3)
    wga_table = text.split("## Mean accuracy")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in wga_table.splitlines()}
    assert "25.0 ± 5.0" in rows["ERM"]  # std with ddof=1 over the 3 seeds
    assert "65.0 ± 5.0" in rows["DDB"]
    assert (
        "not run: data/waterbird_complete95_forest2water2/metadata.csv, see README" in rows["ERM"]
    )
    assert "| 〃 |" in rows["DDB"]  # said once per column
    assert "| 93 |" in rows["DDB"] and "| 74.6 |" in rows["ERM"]  # the paper's figures
    assert "90.0 ± 0.0 / 85.0 ± 0.0" in text  # plain / adjusted mean accuracy


def test_a_failed_seed_is_left_out_not_counted_as_zero():
    exps = [
        _exp("embedded-seed0", "t", {"ddb": _metrics(0.5)}),
        _exp("embedded-seed1", "t", None),  # failed: no metrics
    ]
    runs = experiments.paper_runs(["embedded"], seeds=2)
    results = experiments.collect_paper_results(experiments.experiments_by_name(_show(*exps)), runs)
    assert results["embedded"]["ddb"]["wga"] == [50.0]


def test_override_args_are_what_dvc_set_param_parses():
    args = experiments.override_args(
        {"data.class_names": ["non_blond", "blond"], "classifier.pretrained": True, "erm.seed": 2}
    )
    assert args == [
        "-S",
        'data.class_names=["non_blond","blond"]',
        "-S",
        "classifier.pretrained=true",
        "-S",
        "erm.seed=2",
    ]


def test_missing_requirements_names_data_and_checkpoints(tmp_path):
    nowhere = tmp_path / "nowhere"
    config = dataclasses.replace(
        Config(),
        data=dataclasses.replace(Config().data, root=str(nowhere)),
        models=dataclasses.replace(Config().models, diffusion="no-org/no-such-model"),
    )
    missing = experiments.missing_requirements(config)
    assert f"the dataset at data.root {nowhere}" in missing
    assert "models.diffusion no-org/no-such-model (not in the Hugging Face cache)" in missing
    assert not any("models.detector" in m for m in missing)  # clipseg: no LangSAM needed
    (tmp_path / "data").mkdir()
    (tmp_path / "data/metadata.csv").write_text("img_filename,y,split,place\n")
    diffusion, segmenter = tmp_path / "pipe", tmp_path / "seg"
    diffusion.mkdir(), segmenter.mkdir()
    ready = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, root=str(tmp_path / "data")),
        models=dataclasses.replace(
            config.models, diffusion=str(diffusion), segmenter=str(segmenter)
        ),
    )
    assert experiments.missing_requirements(ready) == []
    langsam = dataclasses.replace(
        ready, segment=dataclasses.replace(ready.segment, source="langsam")
    )
    needed = [m.split(" ")[0] for m in experiments.missing_requirements(langsam)]
    assert needed == ["models.detector", "models.sam"]  # not in this (empty) HF cache


def test_queue_only_queues_every_run_and_starts_none(monkeypatch, tmp_path):
    """`--queue-only` leaves the workers to the user (one GPU each): every control queued
    under its name, no `--run-all`, no table read or written."""
    commands = []
    monkeypatch.setattr(experiments.subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    monkeypatch.setattr(experiments, "exp_show", lambda: pytest.fail("read the results"))
    message = experiments.ablations(Config(), only=["ddb", "copy-paste"], queue_only=True)
    queued = [c for c in commands if c[:4] == ["dvc", "exp", "run", "--queue"]]
    assert [c[5] for c in queued] == ["ablation-ddb", "ablation-copy-paste"]
    assert not any("--run-all" in c for c in commands)
    assert "ablation-ddb, ablation-copy-paste" in message and "--collect-only" in message
