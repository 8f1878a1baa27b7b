import pytest
import torch

from ddb.config import ConfigError
from ddb.models.classifier import build_classifier, eval_transform, load_classifier, save_classifier


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ConfigError, match="resnet18"):
        build_classifier("resnet81", 2)


def test_pretrained_weights_missing_from_the_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=r"classifier.pretrained.*not in the local torch cache"):
        build_classifier("resnet18", 2, pretrained=True)


def test_pretrained_weights_load_from_the_cache_with_a_new_head(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    imagenet = build_classifier("resnet18", 1000)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cache / "resnet18-f37072fd.pth")
    model = build_classifier("resnet18", 3, pretrained=True)
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert model.fc.out_features == 3


def test_save_load_round_trip(tmp_path):
    model = build_classifier("resnet18", 2).eval()
    save_classifier(model, "resnet18", 2, tmp_path / "m.pt", best_epoch=4)
    loaded = load_classifier(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        load_classifier(tmp_path / "missing.pt")


def test_eval_transform_keeps_the_requested_size():
    from PIL import Image

    out = eval_transform(64)(Image.new("RGB", (120, 90)))
    assert out.shape == (3, 64, 64)
