"""The backbone stage (the offline ImageNet stand-in) and classifier.weights."""

import dataclasses
import json

import pytest
import torch
import torchvision

from ddb import paths
from ddb.config import ConfigError
from ddb.models.classifier import build_classifier
from ddb.stages import backbone
from tests.conftest import REPO, tiny_config


def test_backbone_stage_writes_weights_that_build_classifier_fine_tunes_from(in_tmp_repo):
    config = tiny_config()
    (in_tmp_repo / "reports").mkdir()
    backbone.run(config)
    weights = in_tmp_repo / paths.BACKBONE / "resnet18.pth"
    report = json.loads((in_tmp_repo / paths.BACKBONE / "report.json").read_text())
    state = torch.load(weights, weights_only=True)
    # an ordinary torchvision state dict in fp16, its head sized by the corpus task
    assert set(state) == set(torchvision.models.resnet18().state_dict())
    assert state["conv1.weight"].dtype == torch.float16
    assert state["fc.weight"].shape[0] == report["classes"] == len(report["class_names"])
    assert report["classes"] > 100  # the corpus's objects, not the benchmark's two classes
    assert 0 <= report["heldout_top1"] <= 1 and report["heldout_composites"] == 32
    assert "held-out top-1" in (in_tmp_repo / paths.BACKBONE_REPORT).read_text()

    # relative to the project, as params.yaml names it
    model = build_classifier("resnet18", 2, weights=str(paths.BACKBONE / "resnet18.pth"))
    assert torch.equal(model.conv1.weight, state["conv1.weight"].float())
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"].float())
    assert model.fc.out_features == 2  # a fresh head for the benchmark's classes
    assert model.conv1.weight.dtype == torch.float32


def test_any_torchvision_state_dict_of_the_architecture_loads_with_a_fresh_head(tmp_path):
    state = torchvision.models.resnet18(num_classes=7).state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.25)
    torch.save(state, tmp_path / "w.pth")
    model = build_classifier("resnet18", 2, weights=tmp_path / "w.pth")
    assert torch.all(model.conv1.weight == 0.25)
    scratch = build_classifier("resnet18", 2)
    assert not torch.all(scratch.conv1.weight == 0.25)


def test_missing_weights_file_is_an_error_naming_the_param(tmp_path):
    with pytest.raises(ConfigError, match=r"classifier.weights.*does not exist.*backbone"):
        build_classifier("resnet18", 2, weights=tmp_path / "nope.pth")


def test_weights_of_another_architecture_are_an_error_naming_the_param():
    with pytest.raises(ConfigError, match=r"classifier.weights.*not hold a torchvision resnet34"):
        build_classifier("resnet34", 2, weights=REPO / paths.BACKBONE / "resnet18.pth")


@pytest.mark.parametrize(
    "content", [b"not a checkpoint", "tensor", "dict of lists"], ids=["bytes", "tensor", "lists"]
)
def test_a_file_that_is_not_a_state_dict_is_an_error_naming_the_param(tmp_path, content):
    path = tmp_path / "w.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "dict of lists":
        torch.save({"conv1.weight": [1, 2]}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"classifier.weights.*not a (torch )?state dict"):
        build_classifier("resnet18", 2, weights=path)


def test_weights_and_imagenet_together_are_rejected_before_any_work():
    config = tiny_config()
    with pytest.raises(ConfigError, match=r"classifier.weights.*pretrained is true"):
        dataclasses.replace(config.classifier, pretrained=True).validate()


def test_random_crops_shift_each_image_within_the_padding():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(backbone.random_crops(images, generator, pad=0), images)
    crops = backbone.random_crops(images, generator, pad=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    for i in range(2):  # each crop is one window of its own padded image, all channels alike
        windows = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(crops[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(windows) == 1


def test_paper_profiles_use_imagenet_and_the_offline_one_the_backbone():
    from ddb.config import profile_config

    embedded = profile_config("embedded", REPO / "conf")
    assert embedded.classifier.weights == str(paths.BACKBONE / "resnet18.pth")
    assert not embedded.classifier.pretrained
    for name in ("waterbirds", "celeba", "metashift"):
        paper = profile_config(name, REPO / "conf").classifier
        assert paper.pretrained and paper.weights == ""


def test_the_paper_table_names_a_missing_weights_file_as_not_run(tmp_path):
    from ddb import experiments

    config = tiny_config()
    assert not any("classifier.weights" in m for m in experiments.missing_requirements(config))
    gone = str(tmp_path / "gone.pth")
    lost = dataclasses.replace(
        config, classifier=dataclasses.replace(config.classifier, weights=gone)
    )
    assert f"classifier.weights {gone}" in experiments.missing_requirements(lost)
