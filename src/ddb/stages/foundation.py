"""foundation: train the small offline stand-ins for SD-2 inpainting and CLIPSeg.

A one-off, like downloading weights: its outputs are committed to git (dvc.yaml marks
them `cache: false`) and the stage is frozen, so a fresh clone never re-runs it; `dvc repro
-f foundation` rebuilds them. Writes:
  models/foundation/inpaint/   a StableDiffusionInpaintPipeline folder (fp16 weights)
  models/foundation/clipseg/   CLIPSegProcessor + CLIPSegForImageSegmentation
  models/foundation/train.json where and how long it trained, final losses
The corpus (data/corpus.py) never uses the benchmark's images or its land/water scenes.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ddb import paths
from ddb.config import Config
from ddb.data import corpus as corpus_lib
from ddb.models import diffusion
from ddb.models.segmenter import build_segmenter, train_segmenter
from ddb.models.tokenizer import clip_tokenizer
from ddb.training import resolve_device
from ddb.utils import atomic_path, seed_everything, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.foundation
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if device.type == "cuda":  # deterministic CUDA kernels are slow and GPU runs differ anyway
        torch.use_deterministic_algorithms(False)
    start = time.perf_counter()
    sources = corpus_lib.load_sources()
    corpus = corpus_lib.build_corpus(sources, cfg.corpus_size, cfg.image_size, cfg.seed)
    log.info("corpus: %d composites of %d objects", cfg.corpus_size, len(sources.objects))
    tokenizer = clip_tokenizer()
    log.info("corpus built in %.0f s", time.perf_counter() - start)
    pipe, inpaint_losses = train_inpainting_pipeline(cfg, corpus, tokenizer, device)
    log.info("inpainting pipeline trained, %.0f s so far", time.perf_counter() - start)
    processor, segmenter, seg_losses = train_clipseg(cfg, corpus, tokenizer, device)
    seconds = time.perf_counter() - start
    with atomic_path(paths.FOUNDATION) as out:
        out.mkdir()
        pipe.to(torch.float16).save_pretrained(out / "inpaint", safe_serialization=True)
        segmenter.to(torch.float16).save_pretrained(out / "clipseg", safe_serialization=True)
        processor.save_pretrained(out / "clipseg")
        write_json(
            out / "train.json",
            {
                "train_seconds": round(seconds, 1),
                "train_device": device.type,
                "device_name": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else "cpu",
                "corpus_size": cfg.corpus_size,
                "objects": len(sources.objects),
                "steps": {
                    "vae": len(inpaint_losses["vae"]),
                    "unet": len(inpaint_losses["unet"]),
                    "clipseg": len(seg_losses),
                },
                "final_losses": {
                    "vae": float(np.mean(inpaint_losses["vae"][-100:])),
                    "unet": float(np.mean(inpaint_losses["unet"][-200:])),
                    "clipseg": float(np.mean(seg_losses[-100:])),
                },
            },
        )
    log.info("foundation models trained in %.0f s on %s", seconds, device)


def _sampler(corpus: dict, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    n = len(corpus["images"])
    return lambda: corpus["images"][rng.integers(0, n, batch_size)]


def train_inpainting_pipeline(cfg, corpus: dict, tokenizer, device):
    latent_size = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    vae = diffusion.build_vae(cfg.vae_channels, cfg.latent_channels, cfg.image_size)
    vae_losses = diffusion.train_vae(
        vae, _sampler(corpus, cfg.batch_size, cfg.seed), cfg.vae_steps, cfg.vae_lr, device
    )
    scale = diffusion.set_latent_scale(vae, corpus["images"][:512], device)
    log.info("vae: final L1 %.4f, latent scale %.3f", np.mean(vae_losses[-100:]), scale)
    text_encoder = diffusion.build_text_encoder(
        len(tokenizer), cfg.text_width, cfg.text_layers, tokenizer.pad_token_id
    )
    unet = diffusion.build_unet(
        cfg.unet_channels, cfg.latent_channels, latent_size, cfg.text_width, cfg.unet_layers
    )
    unet_losses = diffusion.train_inpainting(
        vae,
        unet,
        text_encoder,
        tokenizer,
        corpus,
        steps=cfg.unet_steps,
        batch_size=cfg.batch_size,
        lr=cfg.unet_lr,
        caption_dropout=cfg.caption_dropout,
        ema_decay=cfg.ema_decay,
        seed=cfg.seed,
        device=device,
        max_seconds=cfg.unet_max_seconds,
    )
    pipe = diffusion.make_pipeline(vae, unet, text_encoder, tokenizer)
    return pipe, {"vae": vae_losses, "unet": unet_losses}


def train_clipseg(cfg, corpus: dict, tokenizer, device):
    """Prompts name the object or its category ("duck", "bird"), so "bird" segments birds;
    one in five names something absent (target: an empty mask), so the text matters."""
    processor, model = build_segmenter(
        tokenizer, image_size=cfg.image_size, width=cfg.seg_width, layers=cfg.seg_layers
    )
    rng = np.random.default_rng(cfg.seed + 1)
    n = len(corpus["images"])

    def batches():
        while True:
            index = rng.integers(0, n, cfg.batch_size)
            masks = corpus["object_masks"][index].copy()
            prompts = []
            for row, i in enumerate(index):
                names = corpus["categories"] if rng.random() < 0.5 else corpus["objects"]
                prompt = str(names[i])
                if rng.random() < 0.2:  # a negative: name an absent category or object
                    other = str(names[rng.integers(0, n)])
                    if other not in (corpus["categories"][i], corpus["objects"][i]):
                        prompt = other
                        masks[row] = False
                prompts.append(prompt)
            yield corpus["images"][index], masks, prompts

    losses = train_segmenter(processor, model, batches(), cfg.seg_steps, cfg.seg_lr, device)
    return processor, model.eval(), losses
