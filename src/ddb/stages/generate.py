"""generate: repaint each source's causal component as every other class (DDB step 5).

For each detected source x of class i (from `segment`), each target class i' != i and each
of `generate.samples_per_source` seeds, the masked region is repainted by the inpainting
pipeline (`models.diffusion`) with the prompt "a photo of a <token i'> bird" (the learned
tokens of `invert`, loaded with diffusers' `load_textual_inversion`), then pasted back onto
x so that every pixel outside the mask is the source's (the VAE re-decodes the whole image;
see models/diffusion.inpaint). The label of the new sample is the target i' (the public
code labels it with the source class; the paper means i').

Work is split into shards of `generate.shard_size` jobs, each written atomically, so an
interrupted run resumes at the first missing shard and ends equal to an uninterrupted one
(each image has its own seed, so its result does not depend on what else is in its batch).
A fingerprint of everything the images depend on guards the resume: if params or inputs
changed, the old shards are discarded. Under `accelerate launch` the shards are spread over
the processes by index; plain `python -m ddb generate` runs them all in one process.

Writes models/generate/: shards/shard_NNNNN/{NNNNNN.png, shard.csv}, fingerprint.json and
manifest.csv (Waterbirds columns img_filename (relative to models/generate), y = i',
split = 0, place = the source's place, for bookkeeping only; plus provenance:
source_filename, source_y, mask_filename, seed, prompt).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from ddb import paths
from ddb.config import Config
from ddb.data.waterbirds import groups_of, load_image, read_metadata
from ddb.models.diffusion import inpaint
from ddb.models.inversion import placeholder_token
from ddb.models.loaders import load_inpaint_pipeline
from ddb.utils import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "img_filename",
    "y",
    "split",
    "place",
    "source_filename",
    "source_y",
    "mask_filename",
    "seed",
    "prompt",
]


def run(config: Config) -> None:
    from accelerate import PartialState

    state = PartialState()
    out = paths.GENERATE
    segments = pd.read_csv(paths.SEGMENT / "segments.csv")
    class_names = groups_of(config.data).class_names
    jobs = plan_jobs(segments, class_names, config)
    fingerprint = job_fingerprint(config, jobs)
    if state.is_main_process:
        prepare_output(out, fingerprint)
    state.wait_for_everyone()
    shards = [
        jobs[i : i + config.generate.shard_size]
        for i in range(0, len(jobs), config.generate.shard_size)
    ]
    todo = [k for k in range(len(shards)) if not shard_dir(out, k).is_dir()]
    mine = [k for k in todo if k % state.num_processes == state.process_index]
    log.info(
        "generate: %d images in %d shards; %d shards done, %d to do here",
        len(jobs),
        len(shards),
        len(shards) - len(todo),
        len(mine),
    )
    if mine:
        pipe = load_pipeline(config, class_names, state.device)
        for k in tqdm(mine, desc="generate", unit="shard", disable=not state.is_local_main_process):
            write_shard(pipe, shards[k], shard_dir(out, k), Path(config.data.root), config)
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = pd.concat(
            [pd.read_csv(shard_dir(out, k) / "shard.csv") for k in range(len(shards))]
            or [pd.DataFrame(columns=MANIFEST_COLUMNS)]
        )
        metadata = read_metadata(config.data.root, groups_of(config.data)).set_index("img_filename")
        manifest["place"] = metadata.loc[manifest.source_filename, "place"].to_numpy()
        with atomic_path(out / "manifest.csv") as tmp:
            manifest[MANIFEST_COLUMNS].to_csv(tmp, index=False)
        log.info("generate: wrote %d samples to %s", len(manifest), out / "manifest.csv")


def plan_jobs(segments: pd.DataFrame, class_names, config: Config) -> pd.DataFrame:
    """One row per image to generate, in a fixed order; image k's seed is
    generate.seed * 1000003 + k (seeds of different generate.seed values do not overlap)."""
    cfg = config.generate
    sources = segments[(segments.role == "source") & segments.detected]
    rows = []
    for source in sources.itertuples():
        for target in range(len(class_names)):
            if target == source.y:
                continue
            for _ in range(cfg.samples_per_source):
                token = placeholder_token(class_names[target])
                rows.append(
                    {
                        "source_filename": source.img_filename,
                        "source_y": source.y,
                        "y": target,
                        "mask_filename": source.mask_filename,
                        "prompt": cfg.prompt.format(
                            token=token, class_name=config.invert.class_name
                        ),
                    }
                )
    jobs = pd.DataFrame(
        rows, columns=["source_filename", "source_y", "y", "mask_filename", "prompt"]
    )
    jobs["seed"] = cfg.seed * 1_000_003 + np.arange(len(jobs))
    jobs["img_filename"] = [
        f"{shard_name(i // cfg.shard_size)}/{i:06d}.png" for i in range(len(jobs))
    ]
    jobs["split"] = 0
    return jobs


def shard_name(k: int) -> str:
    return f"shards/shard_{k:05d}"


def shard_dir(out: Path, k: int) -> Path:
    return out / shard_name(k)


def job_fingerprint(config: Config, jobs: pd.DataFrame) -> dict:
    """Everything a generated image depends on; shards made under another one are stale."""
    embeds = sorted(paths.INVERT.glob("*/learned_embeds.safetensors"))
    return {
        "generate": dataclasses.asdict(config.generate),
        "class_name": config.invert.class_name,
        "diffusion": config.models.diffusion,
        "data_root": config.data.root,
        "jobs": hashlib.sha256(jobs.to_csv(index=False).encode()).hexdigest(),
        "masks": _hash_files(paths.SEGMENT, sorted(set(jobs.mask_filename))),
        "sources": _hash_files(Path(config.data.root), sorted(set(jobs.source_filename))),
        "embeddings": {str(p): sha256_file(p) for p in embeds},
    }


def _hash_files(root: Path, names) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + bytes.fromhex(sha256_file(root / name)))
    return digest.hexdigest()


def prepare_output(out: Path, fingerprint: dict) -> None:
    """Keep finished shards only if they were made under the same fingerprint."""
    stamp = out / "fingerprint.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == fingerprint:
        return
    if out.exists():
        log.info("generate: params or inputs changed; discarding %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_json(stamp, fingerprint)


def load_pipeline(config: Config, class_names, device):
    """The inpainting pipeline with every class's learned token (fp16 on a GPU, as the paper)."""
    dtype = torch.float16 if torch.device(device).type == "cuda" else None
    pipe = load_inpaint_pipeline(config.models.diffusion, device, dtype)
    for name in class_names:
        pipe.load_textual_inversion(str(paths.INVERT / name / "learned_embeds.safetensors"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_shard(pipe, jobs: pd.DataFrame, target: Path, root: Path, config: Config) -> None:
    """Generate one shard's images and its shard.csv; the folder appears only when complete."""
    cfg = config.generate
    with atomic_path(target) as tmp:
        tmp.mkdir()
        for start in range(0, len(jobs), cfg.batch_size):
            batch = jobs.iloc[start : start + cfg.batch_size]
            images = [np.asarray(load_image(root / f)) for f in batch.source_filename]
            masks = [np.asarray(Image.open(paths.SEGMENT / f)) > 0 for f in batch.mask_filename]
            generated = generate_batch(
                pipe, images, masks, list(batch.prompt), list(batch.seed), cfg
            )
            for name, image in zip(batch.img_filename, generated):
                Image.fromarray(image).save(tmp / Path(name).name)
        jobs.to_csv(tmp / "shard.csv", index=False)


def generate_batch(pipe, images, masks, prompts, seeds, cfg) -> list[np.ndarray]:
    """Inpaint at the pipeline's native size, then paste back at each source's own size."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    resized = np.stack([_resize(im, size, Image.BILINEAR) for im in images])
    resized_masks = np.stack(
        [_resize(m.astype(np.uint8) * 255, size, Image.NEAREST) > 127 for m in masks]
    )
    out = inpaint(
        pipe,
        resized,
        resized_masks,
        prompts,
        steps=cfg.steps,
        guidance=cfg.guidance,
        strength=cfg.strength,
        seed=[int(s) for s in seeds],
    )
    results = []
    for image, mask, generated in zip(images, masks, out):
        if generated.shape[:2] != image.shape[:2]:
            back = Image.fromarray(generated).resize(image.shape[1::-1], Image.BILINEAR)
            generated = np.where(mask[..., None], np.asarray(back), image)
        results.append(generated)
    return results


def _resize(array: np.ndarray, size: int, resample) -> np.ndarray:
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), resample))
