"""foundation_segmenter: train the small offline stand-in for CLIPSeg.

A one-off like `foundation` (frozen, outputs committed), but cheap: its step time is bound
by image preprocessing on CPU, so it trains on 2 CPU cores in about 20 minutes. Same corpus as
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
    if device.type == "cuda":  # as in foundation: GPU runs differ anyway
        torch.use_deterministic_algorithms(False)
    start = time.perf_counter()
    sources = corpus_lib.load_sources()
    corpus = corpus_lib.build_corpus(sources, cfg.corpus_size, cfg.image_size, cfg.seed)
    processor, model = build_segmenter(
        clip_tokenizer(),
        image_size=cfg.image_size,
        width=cfg.width,
        layers=cfg.layers,
        patch_size=cfg.patch_size,
    )
    rng = np.random.default_rng(cfg.seed + 1)
    batches = prompted_batches(corpus, cfg.batch_size, rng, device)
    losses = train_segmenter(
        processor, model, batches, cfg.steps, cfg.lr, device, max_seconds=cfg.max_seconds
    )
    seconds = time.perf_counter() - start
    with atomic_path(paths.CLIPSEG) as out:
        model.to(torch.float16).save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
        info = train_info(
            seconds, device, cfg.corpus_size, len(sources.objects), {"clipseg": losses}
        )
        write_json(out / "train.json", info)
    log.info("segmenter trained in %.0f s on %s", seconds, device)


def prompted_batches(corpus: dict, batch_size: int, rng: np.random.Generator, device=None):
    """Endless (images, masks, prompts) batches; 20% of prompts name an absent thing.

    With a device, images and masks are tensors there (the corpus is copied over once),
    augmented: half the backgrounds recoloured (`corpus.recolour_backgrounds`), half the
    images mirrored with their masks.
    """
    n = len(corpus["images"])
    images, object_masks = corpus["images"], corpus["object_masks"]
    if device is not None:
        images = torch.from_numpy(images).to(device)
        object_masks = torch.from_numpy(object_masks).to(device)
        generator = torch.Generator(device).manual_seed(int(rng.integers(2**31)))
    while True:
        index = rng.integers(0, n, batch_size)
        prompts, absent = [], []
        for row, i in enumerate(index):
            names = corpus["categories"] if rng.random() < 0.5 else corpus["objects"]
            prompt = str(names[i])
            if rng.random() < 0.2:
                other = str(names[rng.integers(0, n)])
                if other not in (corpus["categories"][i], corpus["objects"][i]):
                    prompt = other
                    absent.append(row)
            prompts.append(prompt)
        if device is None:
            masks = object_masks[index].copy()
            masks[absent] = False
            yield images[index], masks, prompts
            continue
        at = torch.from_numpy(index).to(device)
        batch, masks = images[at], object_masks[at]
        batch = corpus_lib.recolour_backgrounds(batch, masks, generator)
        batch, masks = corpus_lib.mirror_half(generator, (batch, 2), (masks, 2))
        masks[torch.tensor(absent, dtype=torch.long, device=device)] = False
        yield batch, masks, prompts
