"""Classifier factory: torchvision ResNets by name, saved and loaded with their recipe."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms as T

from ddb.config import ConfigError

# name -> (constructor, ImageNet weights enum). V1 for every depth: the torchvision weights
# `pretrained=True` loaded when ERM, JTT, GroupDRO, DFR and DaC were published, so the
# paper profiles start where the published numbers did (V2 is a later, stronger recipe).
ARCHITECTURES = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_classifier(
    arch: str, num_classes: int, pretrained: bool = False, weights: str | Path = ""
) -> nn.Module:
    """A ResNet with a fresh `num_classes` head, started from ImageNet weights (pretrained:
    only from the local torch cache), from a state dict file (weights: the backbone stage's,
    or any torchvision checkpoint of that architecture), or from scratch.

    Its weights are channels_last: the convolutions then run in oneDNN's (and cuDNN's)
    preferred layout whatever the input's, on CPU 1.15x faster training steps and 1.5x
    faster inference for ResNet-18 at 64 px (AMD EPYC, AVX-512; issue 26,
    reports/benchmarks.md). Values are the same; the last digits are another kernel's."""
    return _build(arch, num_classes, pretrained, weights).to(memory_format=torch.channels_last)


def _build(arch: str, num_classes: int, pretrained: bool, weights: str | Path) -> nn.Module:
    if arch not in ARCHITECTURES:
        close = difflib.get_close_matches(arch, ARCHITECTURES, n=3)
        raise ConfigError(
            f"unknown classifier '{arch}'; did you mean {close or list(ARCHITECTURES)}?"
        )
    constructor, imagenet = ARCHITECTURES[arch]
    if weights:
        model = constructor(weights=None)
        load_backbone(model, arch, Path(weights))
        reset_head(model, num_classes)
        return model
    if not pretrained:
        return constructor(weights=None, num_classes=num_classes)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet.url).name
    if not cached.is_file():
        raise ConfigError(
            f"params.yaml: 'classifier.pretrained' is true but the ImageNet weights of {arch} are "
            f"not in the local torch cache ({cached}). Download them on a machine with internet "
            '(python -c "import torchvision; '
            f"torchvision.models.{arch}(weights='IMAGENET1K_V1')\") and copy the file there, or "
            "set classifier.pretrained: false."
        )
    model = constructor(weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    reset_head(model, num_classes)
    return model


def load_backbone(model: nn.Module, arch: str, path: Path) -> None:
    """Load a state dict file into `model` (every layer but the head, whose size is the
    pretraining task's); a missing, unreadable or other-architecture file is a ConfigError
    naming classifier.weights."""
    where = f"params.yaml: 'classifier.weights' names {str(path)!r}"
    if not path.is_file():
        raise ConfigError(
            f"{where}, which does not exist. The offline profile's file is committed with the "
            "repository (models/backbone/, written by the frozen `backbone` stage: `git "
            'checkout models/backbone`); set classifier.weights: "" to train from scratch.'
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and format errors all mean: not a state dict
        raise ConfigError(f"{where}, which is not a torch state dict ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where}, which is not a state dict of tensors")
    body = {k: v.float() for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("fc.")}
    wrong = sorted(set(expected) ^ set(body)) or sorted(
        k for k in expected if body[k].shape != expected[k]
    )
    if wrong:
        raise ConfigError(
            f"{where}, which does not hold a torchvision {arch} (classifier.arch): "
            f"{len(wrong)} layer(s) missing or of another shape, e.g. {wrong[0]}"
        )
    model.load_state_dict(body, strict=False)


def reset_head(model: nn.Module, num_classes: int) -> None:
    """Replace the final layer with a freshly initialised one."""
    model.fc = nn.Linear(model.fc.in_features, num_classes)


def train_transform(image_size: int, augment: bool, crop_scale=(0.7, 1.0)):
    steps = (
        [T.RandomResizedCrop(image_size, scale=tuple(crop_scale)), T.RandomHorizontalFlip()]
        if augment
        else _resize_center(image_size)
    )
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(image_size: int):
    """Resize to 8/7 of the side then center-crop (224 <- 256, as DFR and torchvision do)."""
    return T.Compose(
        [*_resize_center(image_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def _resize_center(image_size: int):
    return [T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size)]


def save_classifier(
    model: nn.Module, arch: str, num_classes: int, path: str | Path, **extra
) -> None:
    from ddb.utils import atomic_path

    with atomic_path(path) as tmp:
        torch.save(
            {"arch": arch, "num_classes": num_classes, "state_dict": model.state_dict(), **extra},
            tmp,
        )


def load_classifier(path: str | Path) -> nn.Module:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: classifier checkpoint not found; run `dvc repro` first")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_classifier(checkpoint["arch"], checkpoint["num_classes"], pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
