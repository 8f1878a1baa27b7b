"""benchmarks/paper_fullsize.py: its count cuts, its table, and its toy mode end to end."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from ddb.config import compose_params
from tests.conftest import REPO
from tests.test_benchmarks_memory import _flatten  # dotted key -> value, as that test reads params

MIB = 2**20


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "paper_fullsize_benchmark", REPO / "benchmarks/paper_fullsize.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fullsize = _load_benchmark()


def test_the_full_size_run_cuts_only_counts_of_the_waterbirds_profile():
    """Models, image sizes, batch sizes and thresholds stay the profile's: only epochs,
    steps, sample counts and the CPU switches differ."""
    profile = _flatten(compose_params(REPO / "conf", ["dataset=waterbirds"]))
    cut = _flatten(compose_params(REPO / "conf", ["dataset=waterbirds", *fullsize.COUNTS]))
    changed = {key for key in profile if cut[key] != profile[key]}
    assert changed == {override.split("=")[0] for override in fullsize.COUNTS}
    kept = ("models.", "batch_size", "threshold", "image_size", "ig_steps", "arch", "dtype")
    assert not [key for key in changed if any(word in key for word in kept)]
    assert cut["models.diffusion"] == profile["models.diffusion"]  # the SD2 inpainting id
    assert cut["segment.source"] == "langsam" and cut["data.image_size"] == 224


def test_table_divides_wall_time_by_work_and_names_the_peak_stage():
    def measured(seconds, pss_mib):
        return fullsize.Measurement(2 * pss_mib * MIB, seconds, 0, 0, pss_mib * MIB)

    results = {"segment": measured(60.0, 900), "generate": measured(80.0, 7000)}
    units = {"segment": (6, "image"), "generate": (8, "image x denoising step")}
    rates = {"segment": "8.50 s/image"}
    lines = fullsize.table(results, units, rates)
    assert "| segment | 60 | 6 x image | 10.0 | 8.50 s/image | 900 | 1800 |" in lines
    assert "| generate | 80 | 8 x image x denoising step | 10.0 |  | 7000 | 14000 |" in lines
    assert lines[-1].startswith("| **all** | 140 |") and "**7000** (generate)" in lines[-1]


def test_logged_rate_is_the_last_rate_a_progress_bar_printed(tmp_path):
    log = tmp_path / "stage.log"
    log.write_text(
        "invert: 100%|##| 1/1 [00:13<00:00, 13.24s/step, loss=1.2]\r"
        "score:  50%|#| 1/2 [00:02<00:02, 1.52it/s]\n12:00:01 done in 3.5 s\n"
    )
    assert fullsize.logged_rate(log) == "1.52 it/s"
    assert fullsize.logged_rate(tmp_path / "absent.log") == ""


@pytest.mark.slow
def test_toy_mode_measures_every_stage_and_writes_its_block(tmp_path):
    """The tiny world, every stage of the profile: each measured, and the report's block
    replaced with the others kept (minutes on 2 cores: the classifiers are ResNet-50)."""
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n<!-- begin: other -->\nkept\n<!-- end: other -->\n")
    args = ["--size", "tiny", "--workdir", str(tmp_path / "work"), "--report", str(report)]
    body = fullsize.main(args)
    text = report.read_text()
    assert "<!-- begin: other -->\nkept\n<!-- end: other -->" in text
    assert f"<!-- begin: paper_fullsize -->\n{body}\n<!-- end: paper_fullsize -->" in text
    rows = {line.split(" | ")[0][2:]: line for line in body.splitlines() if line.startswith("| ")}
    assert set(fullsize.PROFILE_STAGES) <= set(rows)
    measured = json.loads((tmp_path / "work/measurements.json").read_text())
    for stage, m in measured.items():
        assert m["returncode"] == 0
        assert 0 < m["pss_bytes"] <= m["peak_bytes"], stage  # PSS never exceeds RSS
    # the stages that load a model hold more than an interpreter's 100 MiB
    assert measured["generate"]["pss_bytes"] > 300 * MIB
    assert "x denoising step" in rows["generate"] and "50 IG steps" in rows["score"]
