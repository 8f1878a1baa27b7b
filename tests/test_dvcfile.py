"""ddb.dvcfile: dvc.yaml is the one list of stages (the CLI, the benchmarks, the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ddb import cli
from ddb.dvcfile import covers, pipeline_stages, read_stages, stages_listing

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def test_stages_are_dvc_yamls_in_its_order():
    raw = yaml.safe_load(DVC_YAML.read_text())["stages"]
    stages = read_stages(DVC_YAML)
    assert list(stages) == list(raw)
    assert stages["prune"].params == ("data.class_names", "prune")
    assert "reports/prune.json" in stages["prune"].outs  # metrics count as outs
    assert "models/prune" in stages["prune"].outs
    frozen = {name for name, entry in raw.items() if entry.get("frozen")}
    assert {"foundation", "backbone"} <= frozen
    assert pipeline_stages(DVC_YAML) == [name for name in raw if name not in frozen]


def test_pipeline_order_puts_each_stage_after_what_it_reads():
    # time_pipeline runs the stages one by one in this order (`dvc repro --single-item`)
    stages = read_stages(DVC_YAML)
    order = pipeline_stages(DVC_YAML)
    written_by = {out: name for name, stage in stages.items() for out in stage.outs}
    for position, name in enumerate(order):
        for dep in stages[name].deps:
            for out, writer in written_by.items():
                if writer in order and (dep == out or dep.startswith(f"{out}/")):
                    assert order.index(writer) < position, f"{name} reads {dep} of {writer}"


def test_a_listed_section_covers_its_keys_only():
    assert covers("data", "data.root") and covers("data.root", "data.root")
    assert not covers("data.root", "data") and not covers("data", "database.x")
    stages = read_stages(DVC_YAML)
    assert stages_listing("prune.threshold", stages) == ["prune"]
    # index lists data.root itself, erm the whole data section
    assert {"index", "erm"} <= set(stages_listing("data.root", stages))
    assert "prune" not in stages_listing("data.root", stages)


def test_a_missing_dvc_yaml_says_where_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc.yaml.*repository root"):
        read_stages(tmp_path / "dvc.yaml")


def test_the_cli_has_a_command_for_each_stage_and_help_only_for_stages(capsys):
    stages = set(read_stages(DVC_YAML))
    assert set(cli.STAGE_HELP) <= stages  # no help left for a removed stage
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = capsys.readouterr().out
    for name in stages:
        assert f"    {name} " in shown or f"    {name}\n" in shown, name
