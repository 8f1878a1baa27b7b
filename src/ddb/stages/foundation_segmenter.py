"""foundation_segmenter: train the small offline stand-in for CLIPSeg.

A one-off like `foundation` (frozen, outputs committed), but cheap: its step time is bound
by image preprocessing, so it trains on 2 CPU cores in about 20 minutes. Same corpus as
the inpainting model. Prompts name the object or its category ("duck", "bird"), so "bird"
segments birds; one in five names something absent (target: an empty mask), so the text
matters. Writes models/foundation/clipseg/ (processor + model, fp16) with train.json.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ddb import paths
from ddb.config import Config
from ddb.data import corpus as corpus_lib
from ddb.models.segmenter import build_segmenter, train_segmenter
from ddb.models.tokenizer import clip_tokenizer
from ddb.training import resolve_device
from ddb.utils import atomic_path, seed_everything, train_info, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.foundation_segmenter
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    sources = corpus_lib.load_sources()
    corpus = corpus_lib.build_corpus(sources, cfg.corpus_size, cfg.image_size, cfg.seed)
    processor, model = build_segmenter(
        clip_tokenizer(), image_size=cfg.image_size, width=cfg.width, layers=cfg.layers
    )
    batches = prompted_batches(corpus, cfg.batch_size, np.random.default_rng(cfg.seed + 1))
    losses = train_segmenter(processor, model, batches, cfg.steps, cfg.lr, device)
    seconds = time.perf_counter() - start
    with atomic_path(paths.CLIPSEG) as out:
        model.to(torch.float16).save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
        info = train_info(
            seconds, device, cfg.corpus_size, len(sources.objects), {"clipseg": losses}
        )
        write_json(out / "train.json", info)
    log.info("segmenter trained in %.0f s on %s", seconds, device)


def prompted_batches(corpus: dict, batch_size: int, rng: np.random.Generator):
    """Endless (images, masks, prompts) batches; 20% of prompts name an absent thing."""
    n = len(corpus["images"])
    while True:
        index = rng.integers(0, n, batch_size)
        masks = corpus["object_masks"][index].copy()
        prompts = []
        for row, i in enumerate(index):
            names = corpus["categories"] if rng.random() < 0.5 else corpus["objects"]
            prompt = str(names[i])
            if rng.random() < 0.2:
                other = str(names[rng.integers(0, n)])
                if other not in (corpus["categories"][i], corpus["objects"][i]):
                    prompt = other
                    masks[row] = False
            prompts.append(prompt)
        yield corpus["images"][index], masks, prompts
