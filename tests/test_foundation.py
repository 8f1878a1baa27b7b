"""The foundation stage on a tiny profile: it trains all three models and writes folders
that the real loaders read, like downloaded checkpoints."""

import dataclasses
import json

import numpy as np
import pytest

from ddb import paths
from ddb.models.loaders import load_inpaint_pipeline, load_segmenter
from ddb.models.segmenter import segment
from ddb.stages import foundation
from tests.conftest import needs_sources, tiny_config

pytestmark = [pytest.mark.slow, needs_sources]

TINY = {
    "corpus_size": 32, "batch_size": 4, "device": "cpu", "vae_channels": [16, 32, 64],
    "vae_steps": 2, "unet_channels": [32, 32, 64], "unet_layers": 1, "text_width": 32,
    "text_layers": 1, "unet_steps": 2, "unet_max_seconds": 0, "seg_width": 32,
    "seg_layers": 2, "seg_steps": 2,
}  # fmt: skip


def test_foundation_writes_loadable_checkpoints(in_tmp_repo):
    config = tiny_config()
    config = dataclasses.replace(config, foundation=dataclasses.replace(config.foundation, **TINY))
    foundation.run(config)
    info = json.loads((paths.FOUNDATION / "train.json").read_text())
    assert info["steps"] == {"vae": 2, "unet": 2, "clipseg": 2}
    assert info["train_device"] == "cpu"
    pipe = load_inpaint_pipeline(str(paths.FOUNDATION / "inpaint"))
    assert pipe.unet.config.in_channels == 9
    assert len(pipe.tokenizer) == 49408
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the corpus, not SD's
    processor, model = load_segmenter(str(paths.FOUNDATION / "clipseg"))
    masks = segment(processor, model, np.zeros((2, 64, 64, 3), np.uint8), "bird")
    assert masks.shape == (2, 64, 64) and masks.dtype == bool
