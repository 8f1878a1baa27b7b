"""The foundation stages on a tiny profile: they train the models and write folders that
the real loaders read, like downloaded checkpoints."""

import dataclasses
import json

import numpy as np
import pytest

from ddb import paths
from ddb.models.loaders import load_inpaint_pipeline, load_segmenter
from ddb.models.segmenter import segment
from ddb.stages import foundation, foundation_segmenter
from tests.conftest import needs_sources, tiny_config

pytestmark = [pytest.mark.slow, needs_sources]

TINY_INPAINT = {
    "corpus_size": 32, "batch_size": 4, "device": "cpu", "vae_channels": [16, 32, 64],
    "vae_steps": 2, "unet_channels": [32, 32, 64], "unet_layers": 1, "text_width": 32,
    "text_layers": 1, "unet_steps": 2, "unet_max_seconds": 0,
}  # fmt: skip
TINY_SEGMENTER = {
    "corpus_size": 32, "batch_size": 4, "device": "cpu", "width": 32, "layers": 2, "steps": 2,
}  # fmt: skip


def test_foundation_writes_a_loadable_inpainting_pipeline(in_tmp_repo):
    config = tiny_config()
    config = dataclasses.replace(
        config, foundation=dataclasses.replace(config.foundation, **TINY_INPAINT)
    )
    foundation.run(config)
    info = json.loads((paths.INPAINT / "train.json").read_text())
    assert info["steps"] == {"vae": 2, "unet": 2} and info["train_device"] == "cpu"
    pipe = load_inpaint_pipeline(str(paths.INPAINT))
    assert pipe.unet.config.in_channels == 9
    assert len(pipe.tokenizer) == 49408
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the corpus, not SD's


def test_foundation_segmenter_writes_a_loadable_clipseg(in_tmp_repo):
    config = tiny_config()
    config = dataclasses.replace(
        config,
        foundation_segmenter=dataclasses.replace(config.foundation_segmenter, **TINY_SEGMENTER),
    )
    foundation_segmenter.run(config)
    info = json.loads((paths.CLIPSEG / "train.json").read_text())
    assert info["steps"] == {"clipseg": 2}
    processor, model = load_segmenter(str(paths.CLIPSEG))
    masks = segment(processor, model, np.zeros((2, 64, 64, 3), np.uint8), "bird")
    assert masks.shape == (2, 64, 64) and masks.dtype == bool


def test_segmenter_batches_hold_negatives_with_empty_masks():
    rng = np.random.default_rng(0)
    n = 50
    corpus = {
        "images": np.zeros((n, 8, 8, 3), np.uint8),
        "object_masks": np.ones((n, 8, 8), bool),
        "objects": np.array([f"thing{i}" for i in range(n)]),
        "categories": np.array(["bird" if i % 2 else "fruit" for i in range(n)]),
    }
    _, masks, prompts = next(foundation_segmenter.prompted_batches(corpus, 400, rng))
    empty = ~masks.any(axis=(1, 2))
    assert 0.05 < empty.mean() < 0.3  # about one in five, minus same-name draws
    assert all(p in set(corpus["objects"]) | {"bird", "fruit"} for p in prompts)


def test_device_batches_mirror_masks_with_images_and_keep_negatives_empty():
    import torch

    rng = np.random.default_rng(0)
    n = 40
    images = np.zeros((n, 8, 8, 3), np.uint8)
    masks = np.zeros((n, 8, 8), bool)
    masks[:, 2:6, 0:3] = True  # an object on the left; mirrored, on the right
    images[masks] = (250, 10, 10)
    corpus = {
        "images": images,
        "object_masks": masks,
        "objects": np.array([f"thing{i}" for i in range(n)]),
        "categories": np.array(["bird" if i % 2 else "fruit" for i in range(n)]),
    }
    batch, batch_masks, prompts = next(
        foundation_segmenter.prompted_batches(corpus, 200, rng, torch.device("cpu"))
    )
    assert batch.dtype == torch.uint8 and batch_masks.dtype == torch.bool
    red = (batch[..., 0] == 250) & (batch[..., 1] == 10)  # the object keeps its colour
    positive = batch_masks.flatten(1).any(1)
    assert torch.equal(batch_masks[positive], red[positive])  # masks follow the mirroring
    mirrored = red[:, 3, 7]
    assert 0.25 < mirrored.float().mean() < 0.75
    assert 0.05 < (~positive).float().mean() < 0.3  # negatives: empty masks
