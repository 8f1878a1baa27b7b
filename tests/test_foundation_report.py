"""foundation_report and its fixed judge: measured on the embedded benchmark with the models
that models.* and segment.source name, judged by a classifier that data.root never reaches."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ddb import paths
from ddb.stages import foundation_report, judge, prepare
from ddb.utils import sha256_file
from tests.conftest import REPO, needs_sources, tiny_config, write_waterbirds_folder
from tests.tiny_langsam import save_pair, tiny_bert_tokenizer, tiny_grounding_dino, tiny_sam2
from tests.tiny_models import tiny_inpaint_pipeline

pytestmark = needs_sources


def tiny_judge(config):
    """`config` with a judge cheap enough for a test (its recipe is judge.classifier's)."""
    recipe = dataclasses.replace(config.classifier, epochs=1, batch_size=8)
    return dataclasses.replace(
        config, judge=dataclasses.replace(config.judge, seed=0, classifier=recipe)
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with the tiny embedded benchmark (32 px), the committed foundation
    models (linked) and a judge trained on that benchmark; no index, no baseline."""
    root = tmp_path_factory.mktemp("foundation_report")
    (root / "data").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        (root / "data/sources.json").write_text((REPO / paths.SOURCES).read_text())
        prepare.run(tiny_config())
        judge.run(tiny_judge(tiny_config()))
    (root / paths.FOUNDATION).symlink_to(REPO / paths.FOUNDATION)
    return root


def test_the_judge_ignores_data_root_and_the_profiles_classifier(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    first = torch.load(paths.JUDGE / "model.pt", weights_only=True)
    report = json.loads((paths.JUDGE / "report.json").read_text())
    # another dataset, classifier recipe, image size and baseline seed: none reaches it
    elsewhere = write_waterbirds_folder(tmp_path / "birds", {g: (6, 2, 2) for g in range(4)})
    config = tiny_judge(tiny_config(elsewhere))
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, image_size=48),
        classifier=dataclasses.replace(config.classifier, epochs=3, lr=0.1),
        baselines=dataclasses.replace(config.baselines, seed=7),
    )
    kept = shutil.copytree(paths.JUDGE, tmp_path / "judge")
    try:
        judge.run(config)
        again = torch.load(paths.JUDGE / "model.pt", weights_only=True)
        report_again = json.loads((paths.JUDGE / "report.json").read_text())
    finally:  # leave the module's judge as it was
        shutil.rmtree(paths.JUDGE)
        shutil.copytree(kept, paths.JUDGE)
    assert first["state_dict"].keys() == again["state_dict"].keys()
    for name, tensor in first["state_dict"].items():
        assert torch.allclose(tensor.float(), again["state_dict"][name].float(), atol=1e-3), name
    assert first["state_dict"]["conv1.weight"].dtype == torch.float16  # committed in fp16
    for key in ("data_sha256", "val_wga", "best_epoch", "image_size", "recipe"):
        assert report_again[key] == report[key], key
    assert report["trained_on"] == str(paths.PREPARED)
    assert report["data_sha256"] == sha256_file(paths.PREPARED_MD5)
    assert report["image_size"] == 32  # the tiny benchmark's side, not data.image_size
    assert 0 <= report["val_wga"] <= report["val_mean_acc"] <= 1


def test_dvc_yaml_keeps_data_root_and_the_baselines_out_of_the_report():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("foundation_report", "judge"):
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stages[name]["deps"]]
        assert not [d for d in deps if "baselines" in d or "data.root" in d or "index" in d]
        params = stages[name]["params"]
        assert not [p for p in params if p.split(".")[0] in ("data", "classifier", "baselines")]
    assert str(paths.JUDGE) in stages["foundation_report"]["deps"]
    judge_stage = stages["judge"]
    assert judge_stage["frozen"] is True
    assert judge_stage["outs"] == [{str(paths.JUDGE): {"cache": False}}]
    assert paths.JUDGE in paths.COMMITTED_OUTPUTS


def test_the_report_names_the_default_models_and_the_judge(project, monkeypatch):
    monkeypatch.chdir(project)
    (project / "reports").mkdir(exist_ok=True)
    foundation_report.run(tiny_config("somewhere/else"))  # data.root is never read
    metrics = json.loads((project / "reports/foundation.json").read_text())
    text = (project / "reports/foundation.md").read_text()
    judge_info = json.loads((paths.JUDGE / "report.json").read_text())
    assert "`models.diffusion` = `models/foundation/inpaint`, trained by the `foundation`" in text
    assert "`models.segmenter` = `models/foundation/clipseg`, trained by the" in text
    assert f"`{paths.JUDGE}`" in text and f"val WGA {judge_info['val_wga']:.3f}" in text
    assert "Warning" not in text  # the judge was trained on this build of the benchmark
    assert metrics["judge_val_wga"] == judge_info["val_wga"]
    assert metrics["diffusion_model"] == "models/foundation/inpaint"
    # the committed pipeline paints 64 px: the 32 px val images go up and come back pasted
    assert metrics["repaint_side"] == 64
    assert metrics["outside_mask_max_change"] == 0
    assert 0 <= metrics["repaint_recognised"] <= 1 and 0 <= metrics["seg_iou"] <= 1


@pytest.fixture
def one_thread():
    """As in test_langsam: on a busy 2-core machine two threads made the tiny GroundingDINO
    20x slower (spinning) than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_paper_profile_is_measured_with_its_own_checkpoints_and_langsam(
    project, tmp_path, monkeypatch, one_thread
):
    monkeypatch.chdir(project)
    (project / "reports").mkdir(exist_ok=True)
    pipeline, detector, sam = tmp_path / "sd", tmp_path / "dino", tmp_path / "sam"
    tiny_inpaint_pipeline().save_pretrained(pipeline)  # 64 px, untrained: repaints are noise
    save_pair(*tiny_grounding_dino(tiny_bert_tokenizer()))(detector)
    save_pair(*tiny_sam2())(sam)
    config = tiny_config()
    config = dataclasses.replace(
        config,
        models=dataclasses.replace(
            config.models, diffusion=str(pipeline), detector=str(detector), sam=str(sam)
        ),
        segment=dataclasses.replace(config.segment, source="langsam"),
    )
    # a judge trained on another build of the benchmark is named as such
    info_path = paths.JUDGE / "report.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "data_sha256": "0" * 64}))
    try:
        foundation_report.run(config)
    finally:
        info_path.write_text(json.dumps(info))
    text = (project / "reports/foundation.md").read_text()
    metrics = json.loads((project / "reports/foundation.json").read_text())
    assert "LangSAM" in text
    assert f"`models.diffusion` = `{pipeline}`, a checkpoint as downloaded" in text
    assert f"`models.detector` = `{detector}`" in text and f"`models.sam` = `{sam}`" in text
    assert "clipseg" not in text.lower()
    assert "Warning: it was trained on another build" in text
    assert metrics["segmenter_model"] == f"{detector} + {sam}"
    assert "train_seconds" not in metrics  # no foundation stage trained these
    assert metrics["repaint_side"] == 64 and metrics["outside_mask_max_change"] == 0
    grid = project / "reports/figures/foundation_repaint.png"
    assert grid.is_file() and grid.stat().st_size > 0
    assert np.isfinite(metrics["seg_iou"])
