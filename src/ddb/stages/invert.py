"""invert: textual inversion of one token per class, `<class name>` (e.g. `<waterbird>`).

Trains only the new token's embedding row of the inpainting pipeline's text encoder
(`models.diffusion`), on the class's inversion images from `select` with the prompts
"a photo of a <waterbird> bird" and the other templates, where "bird" is
`invert.class_name`, the common noun, never the label word ("waterbird" would tokenize as
"water" + "bird", the spurious element). The model is an inpainting one, so each image is
given with its `segment` mask: the token must explain the masked causal component from its
context (an image without a detection is given whole). Output: per class,
models/invert/<class>/learned_embeds.safetensors in the diffusers format
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

from ddb import paths
from ddb.config import Config
from ddb.data.masks import load_mask
from ddb.data.waterbirds import groups_of, load_image
from ddb.models.inversion import (
    placeholder_token,
    prompt_token,
    save_learned_embeds,
    train_textual_inversion,
)
from ddb.models.loaders import load_inpaint_pipeline
from ddb.training import resolve_device
from ddb.utils import atomic_path, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.invert
    root = Path(config.data.root)
    segments = pd.read_csv(paths.SEGMENT / "segments.csv")
    device = resolve_device(cfg.device)
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
            images = np.stack([np.asarray(load_image(root / f)) for f in rows.img_filename])
            masks = np.stack([inversion_mask(r, images.shape[1:3]) for r in rows.itertuples()])
            pipe = load_inpaint_pipeline(config.models.diffusion, device)  # fresh: one token each
            start = time.perf_counter()
            result = train_textual_inversion(
                pipe,
                images,
                masks,
                token=placeholder_token(name),
                initializer=cfg.initializer,
                class_name=cfg.class_name,
                steps=cfg.steps,
                lr=cfg.lr,
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
                "whole_image_masks": int((~rows.detected).sum()),
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


def inversion_mask(row, shape) -> np.ndarray:
    """The segment mask of an inversion image; the whole image where nothing was detected."""
    if not row.detected:
        return np.ones(shape, bool)
    return load_mask(paths.SEGMENT / row.mask_filename, shape)
