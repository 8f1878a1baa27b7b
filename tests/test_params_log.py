"""ddb.params_log: a recording copy of the Config logs each key read, nothing else changes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from ddb.config import with_recipe
from ddb.params_log import ENV, recorded, recording
from tests.conftest import REPO, default_config, recipe


def test_reads_are_recorded_by_dotted_key():
    reads: set[str] = set()
    plain = default_config()
    config = recorded(plain, "", reads)
    assert reads == set()  # building the copy reads nothing through it
    _ = config.prune.threshold, config.data.celeba.target
    assert reads == {"prune.threshold", "data.celeba.target"}  # sections are not reads
    assert isinstance(config.prune, type(plain.prune))
    assert dataclasses.asdict(config) == dataclasses.asdict(plain)  # the same values


def test_a_replaced_copy_keeps_recording():
    reads: set[str] = set()
    config = recorded(default_config(), "", reads)
    tuned = with_recipe(config, recipe(lr=0.5))
    reads.clear()
    assert tuned.classifier.lr == 0.5
    assert reads == {"classifier.lr"}
    reads.clear()
    dataclasses.asdict(tuned.generate)  # reads every generate key
    assert reads == {f"generate.{f.name}" for f in dataclasses.fields(tuned.generate)}


def test_without_the_variable_the_config_is_the_plain_one(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    config = default_config()
    assert recording(config, "erm") is config


def test_a_stage_process_appends_its_reads_at_exit(tmp_path):
    script = (
        "from ddb.config import load_config\n"
        "from ddb.params_log import recording\n"
        f"config = recording(load_config({str(REPO / 'params.yaml')!r}), 'prune')\n"
        "config.prune.threshold, config.data.root\n"
    )
    for _ in range(2):  # two runs of a stage append to one log
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, ENV: str(tmp_path / "log")},
            check=True,
            timeout=60,
        )
    lines = (tmp_path / "log/prune.txt").read_text().split()
    assert sorted(lines) == ["data.root", "data.root", "prune.threshold", "prune.threshold"]


def test_validating_a_replaced_copy_reads_nothing():
    # building a copy runs every check of the Config (retrain.gamma against data.class_names,
    # ...): those are not keys the stage reads
    reads: set[str] = set()
    config = recorded(default_config(), "", reads)
    with_recipe(config, recipe(lr=0.5))
    assert not any(key.startswith(("retrain.", "data.", "baselines.", "prune.")) for key in reads)
