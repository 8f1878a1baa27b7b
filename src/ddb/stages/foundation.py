"""foundation: train the small offline stand-in for SD-2 inpainting.

A one-off, like downloading weights: its outputs are committed to git (dvc.yaml marks
them `cache: false`) and the stage is frozen, so a fresh clone never re-runs it; `dvc repro
-f foundation` rebuilds them (README). Writes models/foundation/inpaint/, a
StableDiffusionInpaintPipeline folder (fp16 weights) with train.json (where and how long it
trained, steps, final losses). CLIPSeg is its own stage, foundation_segmenter: it trains in
minutes on a CPU, where this one needs a GPU. The corpus (data/corpus.py) never uses the
benchmark's images or its land/water scenes.
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
from ddb.models.tokenizer import clip_tokenizer
from ddb.training import resolve_device
from ddb.utils import atomic_path, seed_everything, train_info, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.foundation
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if device.type == "cuda":  # deterministic CUDA kernels are slow and GPU runs differ anyway
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    sources = corpus_lib.load_sources()
    corpus = corpus_lib.build_corpus(sources, cfg.corpus_size, cfg.image_size, cfg.seed)
    tokenizer = clip_tokenizer()
    log.info("corpus: %d composites of %d objects", cfg.corpus_size, len(sources.objects))
    pipe, losses = train_inpainting_pipeline(cfg, corpus, tokenizer, device)
    seconds = time.perf_counter() - start
    with atomic_path(paths.INPAINT) as out:
        pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
        write_json(
            out / "train.json",
            train_info(seconds, device, cfg.corpus_size, len(sources.objects), losses),
        )
    log.info("inpainting model trained in %.0f s on %s", seconds, device)


def _sampler(corpus: dict, batch_size: int, seed: int, device):
    """Random batches of corpus images, drawn on the device the images are copied to once;
    half are mirrored."""
    images = torch.from_numpy(corpus["images"]).to(device)
    generator = torch.Generator(device).manual_seed(seed)

    def draw():
        batch = images[
            torch.randint(0, len(images), (batch_size,), generator=generator, device=device)
        ]
        return corpus_lib.mirror_half(generator, (batch, 2))[0]

    return draw


def train_inpainting_pipeline(cfg, corpus: dict, tokenizer, device):
    latent_size = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    vae = diffusion.build_vae(cfg.vae_channels, cfg.latent_channels, cfg.image_size)
    vae_losses = diffusion.train_vae(
        vae,
        _sampler(corpus, cfg.batch_size, cfg.seed, device),
        cfg.vae_steps,
        cfg.vae_lr,
        device,
        max_seconds=cfg.vae_max_seconds,
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
        compile=cfg.compile,
    )
    pipe = diffusion.make_pipeline(vae, unet, text_encoder, tokenizer)
    return pipe, {"vae": vae_losses, "unet": unet_losses}
