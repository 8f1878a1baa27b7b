"""The paper-table and ablation commands: queue arguments, collecting the experiments
through `dvc.api.exp_show`, and the tables they write."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import dvc.api
import numpy as np
import pytest

from ddb import experiments, tables
from tests.conftest import default_config, default_section


def _metrics(wga: float, mean: float = 0.9) -> dict:
    split = {
        "wga": wga,
        "mean_acc": mean,
        "adjusted_mean_acc": mean - 0.05,
        "ci": {"wga": [wga - 0.02, wga + 0.02]},
    }
    return {"val": split, "test": split}


# ---- collecting: fake `dvc.api.exp_show` rows over real git commits ------------------------


def _git(repo: Path, *args: str, env: dict | None = None) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return out.stdout.strip()


def _experiment_commit(repo: Path, files: dict[str, dict], when: int) -> str:
    """A commit holding these metrics files, made at unix time `when`, as DVC commits an
    experiment's results; its short rev, as `dvc.api.exp_show` gives it."""
    for path, data in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(json.dumps(data))
    _git(repo, "add", "-A")
    date = f"@{when} +0000"
    env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "PATH": "/usr/bin:/bin"}
    _git(repo, "commit", "-qm", "exp", "--allow-empty", env=env)
    return _git(repo, "rev-parse", "--short=7", "HEAD")


def _row(name: str | None, rev: str, typ: str, state: str | None = None) -> dict:
    """A row as dvc 3.67's `dvc.api.exp_show` returns it (recorded from a real queue): flat,
    metrics and params as dotted keys with numbers only (no lists), "Created" rounded."""
    return {
        "Experiment": name,
        "rev": rev,
        "typ": typ,
        "Created": "05:20 PM",
        "parent": None,
        "State": state,
        "Executor": "Dvc-task" if state else None,
        "erm.test.wga": 0.5,  # a baseline's or an unfinished run's: never read as a result
        "erm.seed": 0.0,
    }


@pytest.fixture
def exp_repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _git(tmp_path, "init", "-q")
    return tmp_path


def _fake_exp_show(monkeypatch, rows: list[dict]) -> list[dict]:
    calls = []

    def exp_show(**kwargs):
        calls.append(kwargs)
        return rows

    monkeypatch.setattr(dvc.api, "exp_show", exp_show)
    return calls


def test_collect_reads_the_newest_finished_experiment_of_each_name_from_git(exp_repo, monkeypatch):
    old = _experiment_commit(exp_repo, {"reports/metrics.json": {"erm": _metrics(0.1)}}, 1000)
    new = _experiment_commit(
        exp_repo,
        {"reports/metrics.json": {"erm": _metrics(0.3)}, "reports/prune.json": {"kept": 5}},
        2000,
    )
    failed = _experiment_commit(exp_repo, {}, 3000)
    rows = [
        _row(None, "workspace", "baseline"),
        _row(None, "main", "baseline"),
        _row("embedded-seed1", failed, "branch_base", "Failed"),  # shows its baseline's
        _row("embedded-seed2", "abc1234", "branch_base", "Queued"),
        _row("embedded-seed3", failed, "branch_base", "Running"),
        _row(None, "1a2b3c4", "baseline"),  # an older baseline commit, HEAD~1
        _row("embedded-seed0", old, "branch_commit"),  # run in the workspace: State None
        _row("embedded-seed0", new, "branch_base", "Success"),  # newer, listed later
    ]
    calls = _fake_exp_show(monkeypatch, rows)
    names = [f"embedded-seed{s}" for s in range(4)]
    found = experiments.collect(names)
    assert calls == [{"num": -1}]  # experiments of every first-parent commit, not HEAD's only
    assert set(found) == {"embedded-seed0"}
    # the whole file, interval lists included (the rows hold numbers only)
    assert found["embedded-seed0"]["reports/metrics.json"] == {"erm": _metrics(0.3)}
    assert found["embedded-seed0"]["reports/prune.json"] == {"kept": 5}


def test_a_metrics_file_git_lacks_is_left_out(exp_repo, monkeypatch):
    rev = _experiment_commit(exp_repo, {"reports/prune.json": {"kept": 1}}, 1000)
    _fake_exp_show(monkeypatch, [_row("ablation-ddb", rev, "branch_base", "Success")])
    assert experiments.collect(["ablation-ddb"]) == {
        "ablation-ddb": {"reports/prune.json": {"kept": 1}}
    }


# ---- the paper table -----------------------------------------------------------------------


def _files(metrics: dict | None) -> dict:
    return {} if metrics is None else {"reports/metrics.json": metrics}


WATERBIRDS_MISSING = ["the dataset at data.root data/wb", "models.sam sam2 (not in the cache)"]


def _paper_table(published: dict | None = None) -> str:
    wgas = {"erm": [0.20, 0.30, 0.25], "ddb_no_prune": [0.5] * 3, "ddb": [0.60, 0.70, 0.653]}
    found = {
        f"embedded-seed{s}": _files({m: _metrics(v[s]) for m, v in wgas.items()}) for s in range(3)
    }
    runs = experiments.paper_runs(["embedded"], seeds=3)
    results = experiments.collect_paper_results(found, runs)
    assert np.allclose(results["embedded"]["ddb"]["wga"], [60, 70, 65.3])
    missing = {"waterbirds": WATERBIRDS_MISSING}
    return experiments.paper_table_markdown(
        results, missing, ["embedded", "waterbirds"], 3, published
    )


def _table_rows(text: str) -> dict[str, list[str]]:
    """The WGA table's rows, name -> cells (the header row under "method")."""
    wga_table = text.split("## Mean accuracy")[0]
    rows = [line for line in wga_table.splitlines() if line.startswith("| ")]
    return {
        r.split(" | ")[0].strip("| "): [c.strip() for c in r.strip("|").split("|")] for r in rows
    }


def test_paper_runs_set_the_profile_and_every_seed_key():
    runs = experiments.paper_runs(["embedded"], seeds=3)
    assert set(runs) == {"embedded-seed0", "embedded-seed1", "embedded-seed2"}
    assert runs["embedded-seed2"][2] == {
        "dataset": "embedded",  # the profile: a Hydra group choice
        **dict.fromkeys(experiments.SEED_KEYS, 2),
    }


def test_paper_table_one_column_per_dataset_with_the_papers_figure_in_the_cell():
    rows = _table_rows(_paper_table())
    assert rows["method"] == ["method", "groups train/val", "embedded benchmark", "Waterbirds"]
    assert all(len(cells) == 4 for cells in rows.values())
    erm, ddb = rows["ERM"], rows["DDB"]
    assert erm[2] == "25.0 ± 5.0"  # mean ± std with ddof=1 over the 3 seeds
    assert ddb[2] == "65.1 ± 5.0"  # 60, 70, 65.3: mean 65.1, std sqrt(50.06 / 2)
    # the unrun column: no figure of ours, the paper's beside it (DDB's 93 as 93.0)
    assert erm[3] == "– (paper 74.6)" and ddb[3] == "– (paper 93.0)"
    assert rows["DDB without pruning"][3] == "– (paper 91.3)"  # published as 91.28
    assert erm[1] == "no / yes (model selection)"


def test_paper_table_has_one_decimal_everywhere():
    text = _paper_table()
    cells = [c for row in _table_rows(text).values() for c in row[2:]]
    mean_table = text.split("## Mean accuracy")[1]
    cells += [line for line in mean_table.splitlines() if line.startswith("| ")][2:]
    numbers = [n for c in cells for n in re.findall(r"\d+(?:\.\d+)?", c)]
    assert numbers and all(re.fullmatch(r"\d+\.\d", n) for n in numbers), numbers
    assert "90.0 ± 0.0 / 85.0 ± 0.0" in mean_table  # plain / adjusted mean accuracy


def test_a_missing_columns_reason_is_said_once_below_the_table_not_in_cells():
    text = _paper_table()
    rows = _table_rows(text)
    reason = "the dataset at data.root data/wb; models.sam sam2 (not in the cache)"
    assert text.count("the dataset at data.root data/wb") == 1
    assert "- **Waterbirds**: " + reason in text.split("## Mean accuracy")[0]
    assert not any("data/wb" in c or "not run" in c for r in rows.values() for c in r)
    mean_rows = [line for line in text.split("## Mean accuracy")[1].splitlines() if "| ERM" in line]
    assert mean_rows == ["| ERM | 90.0 ± 0.0 / 85.0 ± 0.0 | – |"]


def test_what_two_unrun_columns_both_lack_is_said_once():
    missing = {
        "waterbirds": ["the dataset at data.root data/wb", "models.sam sam2 (not cached)"],
        "celeba": ["the dataset at data.root data/celeba", "models.sam sam2 (not cached)"],
    }
    text = experiments.paper_table_markdown({}, missing, ["waterbirds", "celeba"], 3, {})
    assert text.count("models.sam sam2") == 1
    assert "- **Waterbirds, CelebA**, each: models.sam sam2 (not cached)." in text
    assert "- **CelebA**: the dataset at data.root data/celeba." in text
    assert _table_rows(text)["ERM"] == ["ERM", "no / yes (model selection)", "–", "–"]


def test_published_figures_come_from_the_data_file(tmp_path):
    edited = tmp_path / "published.yaml"
    edited.write_text(tables.PUBLISHED.read_text().replace("waterbirds: 74.6", "waterbirds: 12.34"))
    text = _paper_table(tables.published(edited))
    assert _table_rows(text)["ERM"][3] == "– (paper 12.3)"
    assert "ERM, DDB: arXiv:2503.17226, Table 1" in text  # the file's sources, once each


def test_a_failed_seed_is_left_out_not_counted_as_zero():
    found = {"embedded-seed0": _files({"ddb": _metrics(0.5)}), "embedded-seed1": _files(None)}
    runs = experiments.paper_runs(["embedded"], seeds=2)
    results = experiments.collect_paper_results(found, runs)
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
    config = default_config(
        data=default_section("data", root=str(nowhere)),
        models=default_section("models", diffusion="no-org/no-such-model"),
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
    monkeypatch.setattr(experiments, "exp_rows", lambda: pytest.fail("read the results"))
    message = experiments.ablations(default_config(), only=["ddb", "copy-paste"], queue_only=True)
    queued = [c for c in commands if c[:4] == ["dvc", "exp", "run", "--queue"]]
    assert [c[5] for c in queued] == ["ablation-ddb", "ablation-copy-paste"]
    assert not any("--run-all" in c for c in commands)
    assert "ablation-ddb, ablation-copy-paste" in message and "--collect-only" in message
