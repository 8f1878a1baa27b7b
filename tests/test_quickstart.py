"""The tiny profile as the conf group `debug=tiny`, and `ddb quickstart`'s pieces."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ddb.config import Config, compose_params, from_dict
from ddb.quickstart import select_default, summary_table

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def leaves(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_tiny_group_changes_only_what_its_file_sets():
    default, tiny = leaves(compose_params(CONF)), leaves(compose_params(CONF, ["debug=tiny"]))
    assert set(tiny) == set(default)  # every key a stage declares is present (DVC needs it)
    own = leaves(yaml.safe_load((CONF / "debug/tiny.yaml").read_text()))
    assert {k for k in default if default[k] != tiny[k]} <= set(own)
    assert {k: tiny[k] for k in own} == own
    assert tiny["data.root"] == default["data.root"]  # the embedded benchmark it builds
    assert (tiny["prepare.train_per_class"], tiny["generate.steps"]) == (20, 2)
    from_dict(Config, compose_params(CONF, ["debug=tiny"]), prefix="").validate()


def test_the_tiny_group_composes_over_a_dataset_profile():
    params = compose_params(CONF, ["dataset=waterbirds", "debug=tiny"])
    assert params["data"]["profile"] == "waterbirds" and params["data"]["image_size"] == 32


def test_select_default_sets_the_groups_entry_and_keeps_comments():
    text = (CONF / "config.yaml").read_text()
    selected = select_default(text, "debug", "tiny")
    assert yaml.safe_load(selected)["defaults"][-1] == {"debug": "tiny"}
    assert selected.count("#") == text.count("#")
    assert selected.replace("debug: tiny", "debug: null", 1) == text
    with pytest.raises(ValueError, match="no `- nothing: ...` entry"):
        select_default(text, "nothing", "x")


def test_summary_table_has_a_row_per_method_in_percent():
    split = {"wga": 0.5, "mean_acc": 0.755}
    table = summary_table({"erm": {"test": split, "val": {"wga": 1.0, "mean_acc": 0.25}}}, 61.2)
    assert "| erm | 50.0 | 75.5 | 100.0 | 25.0 |" in table.splitlines()
    assert "61 s" in table
