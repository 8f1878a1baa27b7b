"""generate: repaint each source's causal component as every other class (DDB step 5).

For each detected source x of class i (from `segment`), each target class i' != i and each
of `generate.samples_per_source` seeds, the masked region is repainted by the inpainting
pipeline (`models.diffusion`) with the prompt "a photo of a <token i'> bird" (the learned
tokens of `invert`, loaded with diffusers' `load_textual_inversion`), then pasted back onto
x so that every pixel outside the mask is the source's (the VAE re-decodes the whole image;
see models/diffusion.inpaint). With `invert.num_images: 0` (the no-inversion control) the
prompt names the class word instead of a learned token. With `generate.method: copy_paste`
(the control without diffusion) a real object of class i' (a train image's own mask, chosen
by the image's seed) is scaled into the mask's bounding box and pasted over the masked
region instead. The label of the new sample is the target i' (the public
code labels it with the source class; the paper means i').

Work is split into shards of `generate.shard_size` jobs, each written atomically into a work
folder beside the output, models/generate.partial/, so an interrupted run (Ctrl-C, a kill,
a lost machine) resumes at the first missing shard and ends equal to an uninterrupted one
(each image has its own seed, so its result does not depend on what else is in its batch).
Only when every shard is there is the work folder, with its manifest, renamed onto
models/generate: the output is absent or complete, never half written, and a run after a
complete one (`dvc repro --force`, changed deps) starts from scratch. A fingerprint of
everything the images depend on (params, inputs, the pipeline's weights, this code) guards
the resume: if any changed since the interruption, the old shards are discarded. Under
`accelerate launch` or `torchrun` the shards are spread over the processes by index; plain
`python -m ddb generate` runs them all in one process.

Speed on a GPU (`optimize_pipeline`, the one function a benchmark calls to do what this
stage does): the pipeline in `generate.dtype` (auto: float16 as the paper; bfloat16 where
the GPU has it, on request), PyTorch's fused attention (SDPA, diffusers' AttnProcessor2_0),
channels_last UNet and VAE, and with `generate.compile` the UNet and the VAE decoder
compiled by `torch.compile`. Every batch has the same shape there (a short last batch is
padded by repeating its last job, whose copies are discarded: with per-image seeds they
change no image), so compiled graphs and cuDNN's autotuned kernels are reused; a
background thread decodes and resizes the next batch's images, and saves the last batch's,
while the current one denoises. On CPU none of this applies (float32, no padding, no
compile): the committed outputs were made there, and stay bit-identical. The profiles'
batch sizes are a GPU's (32 images at 512 px: some 40 GiB in float32 on CPU, where two
images peaked at 7.6 GiB, 5.1 of it weights), so on CPU the batch is lowered, with a log
line, to what the memory available after loading the pipeline holds (`cpu_batch_size`);
each image has its own seed, so this changes no image.

Writes models/generate/: shards/shard_NNNNN/{NNNNNN.png, shard.csv}, fingerprint.json and
manifest.csv (Waterbirds columns img_filename (relative to models/generate), y = i',
split = 0, place = the source's place, for bookkeeping only; plus provenance:
source_filename, source_y, mask_filename, seed, prompt, donor_filename (copy_paste only)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from PIL import Image
from tqdm import tqdm

from ddb import paths
from ddb.config import Config, ConfigError
from ddb.data.corpus import dilate
from ddb.data.dataset import DataError, groups_of, load_image, load_indexed
from ddb.data.masks import load_mask
from ddb.distributed import process_state
from ddb.models.diffusion import inpaint, use_scheduler
from ddb.models.inversion import load_learned_embeds, prompt_token
from ddb.models.loaders import load_inpaint_pipeline
from ddb.utils import atomic_path, remove_stale_temporaries, sha256_file, write_json

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
    "donor_filename",
]


def run(config: Config) -> None:
    state = process_state()
    out = paths.GENERATE
    segments = pd.read_csv(paths.SEGMENT / "segments.csv")
    class_names = groups_of(config.data).class_names
    metadata = load_indexed(config.data)[1]
    jobs = plan_jobs(segments, class_names, config)
    if config.generate.method == "copy_paste":
        donors = choose_donors(jobs, metadata, config.data.root)
        jobs["donor_filename"] = donors.img_filename.to_numpy()
        jobs["donor_mask_filename"] = donors.mask_filename.to_numpy()
    fingerprint = job_fingerprint(config, jobs)
    work = partial_dir(out)
    shards = [
        jobs[i : i + config.generate.shard_size]
        for i in range(0, len(jobs), config.generate.shard_size)
    ]
    if state.is_main_process:
        prepare_output(work, fingerprint, len(shards))
    state.wait_for_everyone()
    todo = [k for k in range(len(shards)) if not shard_dir(work, k).is_dir()]
    mine = [k for k in todo if k % state.num_processes == state.process_index]
    log.info(
        "generate: %d images in %d shards; %d shards done, %d to do here",
        len(jobs),
        len(shards),
        len(shards) - len(todo),
        len(mine),
    )
    if mine:
        pipe = None
        if config.generate.method == "diffusion":
            pipe = load_pipeline(config, class_names, state.device)
            config = with_cpu_batch_size(config, pipe)
        for k in tqdm(mine, desc="generate", unit="shard", disable=not state.is_local_main_process):
            write_shard(pipe, shards[k], shard_dir(work, k), Path(config.data.root), config)
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = pd.concat(
            [pd.read_csv(shard_dir(work, k) / "shard.csv") for k in range(len(shards))]
            or [pd.DataFrame(columns=MANIFEST_COLUMNS)]
        )
        places = metadata.set_index("img_filename").place
        manifest["place"] = places.loc[manifest.source_filename].to_numpy()
        manifest[MANIFEST_COLUMNS].to_csv(work / "manifest.csv", index=False)
        with atomic_path(out) as tmp:  # the finished work folder becomes the output
            os.replace(work, tmp)
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
                token = prompt_token(class_names[target], config.invert.num_images > 0)
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
    jobs["donor_filename"] = ""
    jobs["seed"] = cfg.seed * 1_000_003 + np.arange(len(jobs))
    jobs["img_filename"] = [
        f"{shard_name(i // cfg.shard_size)}/{i:06d}.png" for i in range(len(jobs))
    ]
    jobs["split"] = 0
    return jobs


def choose_donors(jobs: pd.DataFrame, metadata: pd.DataFrame, root) -> pd.DataFrame:
    """Copy-paste control: per job, a train image of the target class and its true mask
    (img_filename, mask_filename), drawn with the job's own seed (so a resumed run draws
    the same donors)."""
    if "mask_filename" not in metadata.columns:
        raise DataError(
            f"{root}/metadata.csv has no mask_filename column: generate.method: copy_paste "
            "needs the dataset's own object masks; use generate.method: diffusion"
        )
    train = metadata[metadata.split == 0].sort_values("img_filename")
    pools = {y: part.reset_index(drop=True) for y, part in train.groupby("y")}
    donors = []
    for job in jobs.itertuples():
        pool = pools.get(job.y)
        if pool is None:
            raise DataError(f"{root}: no train image of class {job.y} to copy an object from")
        donors.append(pool.iloc[np.random.default_rng(int(job.seed)).integers(len(pool))])
    return pd.DataFrame(donors, columns=["img_filename", "mask_filename"])


def shard_name(k: int) -> str:
    return f"shards/shard_{k:05d}"


def shard_dir(folder: Path, k: int) -> Path:
    return folder / shard_name(k)


def partial_dir(out: Path) -> Path:
    """The work folder of an unfinished run: beside the output, not in it, so no later stage
    ever reads a half-generated models/generate."""
    return out.with_name(f"{out.name}.partial")


def job_fingerprint(config: Config, jobs: pd.DataFrame) -> dict:
    """Everything a generated image depends on; shards made under another one are stale."""
    embeds = sorted(paths.INVERT.glob("*/learned_embeds.safetensors"))
    return {
        "generate": dataclasses.asdict(config.generate),
        "class_name": config.invert.class_name,
        "diffusion": config.models.diffusion,
        # a local pipeline folder can be rebuilt under the same name (the foundation stage)
        "diffusion_files": _hash_folder(Path(config.models.diffusion)),
        # the code that makes the images (dvc.yaml's deps of generate): a fix since the
        # interruption must not be mixed with shards of the old code
        "code": _hash_code(),
        "data_root": config.data.root,
        "jobs": hashlib.sha256(jobs.to_csv(index=False).encode()).hexdigest(),
        "masks": _hash_files(paths.SEGMENT, sorted(set(jobs.mask_filename))),
        "sources": _hash_files(Path(config.data.root), sorted(set(jobs.source_filename))),
        "embeddings": {str(p): sha256_file(p) for p in embeds},
    }


def _hash_folder(folder: Path) -> str | None:
    """One hash of every file under a local folder; None for a hub id."""
    if not folder.is_dir():
        return None
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return _hash_files(folder, files)


def _hash_code() -> str:
    import ddb.data.masks
    import ddb.models.diffusion
    import ddb.models.inversion

    modules = [sys.modules[__name__], ddb.models.diffusion, ddb.models.inversion, ddb.data.masks]
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _hash_files(root: Path, names) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + bytes.fromhex(sha256_file(root / name)))
    return digest.hexdigest()


def prepare_output(work: Path, fingerprint: dict, n_shards: int) -> None:
    """Keep the finished shards of an interrupted run only if they were made under the same
    fingerprint; drop the temporary folders a killed process left (never a finished shard)."""
    stamp = work / "fingerprint.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == fingerprint:
        done = len(list((work / "shards").glob("shard_*")))
        log.info("generate: resuming the interrupted run in %s (%d shards done)", work, done)
        for k in range(n_shards):  # a shard's atomic_path folder, left by SIGKILL
            remove_stale_temporaries(shard_dir(work, k))
        return
    if work.exists():
        log.info("generate: params, inputs or code changed; discarding %s", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(stamp, fingerprint)


def load_pipeline(config: Config, class_names, device):
    """The inpainting pipeline with every class's learned token, in `generate.dtype`, with
    `generate.scheduler`'s sampler, made fast for its device by `optimize_pipeline`."""
    dtype = resolve_dtype(config.generate.dtype, device)
    pipe = use_scheduler(
        load_inpaint_pipeline(config.models.diffusion, device, dtype), config.generate.scheduler
    )
    if config.invert.num_images > 0:  # else the no-inversion control: class words
        for name in class_names:
            load_learned_embeds(pipe, paths.INVERT / name / "learned_embeds.safetensors")
    return optimize_pipeline(pipe, compile=config.generate.compile)


# Peak bytes one 512 px image adds to a float32 CPU batch of SD2 inpainting (UNet width
# 320) with classifier-free guidance: (7.6 - 5.1) GiB / 2, measured by hand
BYTES_PER_IMAGE_SD2_512 = 1.25 * 2**30


def image_bytes(pipe, guidance: float) -> float:
    """Estimated peak bytes of one image in a CPU batch: the SD2 figure scaled by the
    pipeline's pixels, its UNet's width and dtype, halved without guidance (one UNet pass)."""
    side = pipeline_size(pipe)
    width = pipe.unet.config.block_out_channels[0] / 320
    dtype = pipe.unet.dtype.itemsize / 4
    guided = 1.0 if guidance > 1 else 0.5  # diffusers runs the unconditional pass at > 1
    return BYTES_PER_IMAGE_SD2_512 * (side / 512) ** 2 * width * dtype * guided


def cpu_batch_size(batch_size: int, per_image: float, available: float) -> int:
    """The largest batch up to `batch_size` whose images fit in 80% of `available` bytes
    (at least 1)."""
    return max(1, min(batch_size, int(0.8 * available // per_image)))


def with_cpu_batch_size(config: Config, pipe) -> Config:
    """`config` with generate.batch_size lowered to what this machine's free memory holds,
    on CPU only (a GPU's memory is its own), with a log line when lowered."""
    if pipe.device.type != "cpu":
        return config
    cfg = config.generate
    per_image = image_bytes(pipe, cfg.guidance)
    available = psutil.virtual_memory().available
    batch = cpu_batch_size(cfg.batch_size, per_image, available)
    if batch == cfg.batch_size:
        return config
    log.info(
        "generate: generate.batch_size %d lowered to %d on CPU: %.1f GiB available, about "
        "%.2f GiB per image (each image has its own seed: no image changes)",
        cfg.batch_size,
        batch,
        available / 2**30,
        per_image / 2**30,
    )
    return dataclasses.replace(config, generate=dataclasses.replace(cfg, batch_size=batch))


def resolve_dtype(name: str, device) -> torch.dtype:
    """`generate.dtype`: auto is float16 on a GPU (the paper's, today's) and float32 on CPU."""
    kind = torch.device(device).type
    if name == "auto":
        return torch.float16 if kind == "cuda" else torch.float32
    if name == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"params.yaml: generate.dtype is bfloat16, which {torch.cuda.get_device_name()} "
            "does not compute in; use float16 (or auto)"
        )
    return getattr(torch, name)


def optimize_pipeline(pipe, compile: bool = False):
    """What the stage does to a loaded pipeline for speed (see the module doc); returns it.

    Fused attention (SDPA) everywhere diffusers would use the classic processor; on a GPU
    also channels_last weights, cuDNN autotuning (for the fixed batch shape) and, with
    `compile`, `torch.compile` of the UNet and the VAE decoder (the first batch pays for
    the compilation, minutes at 512 px). On CPU the pipeline is left as loaded, and
    `compile` is ignored with a log line: there it would cost more than the small models'
    whole run and could change the committed float32 outputs.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe.set_progress_bar_config(disable=True)
    for model in (pipe.unet, pipe.vae):
        processors = model.attn_processors
        if any(type(p) is AttnProcessor for p in processors.values()):
            model.set_attn_processor(
                {k: AttnProcessor2_0() if type(p) is AttnProcessor else p
                 for k, p in processors.items()}
            )  # fmt: skip
    if pipe.device.type != "cuda":
        if compile:
            log.info("generate: generate.compile is ignored on %s (GPU only)", pipe.device)
        return pipe
    torch.backends.cudnn.benchmark = True
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet.compile()  # in place: pipe.unet stays the UNet (its config, hooks)
        pipe.vae.decoder.compile()
    return pipe


def write_shard(pipe, jobs: pd.DataFrame, target: Path, root: Path, config: Config) -> None:
    """Generate one shard's images and its shard.csv; the folder appears only when complete.
    A background thread reads (and resizes) batch k + 1 and saves batch k - 1 while batch k
    is generated."""
    cfg = config.generate
    batches = [jobs.iloc[i : i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    size = None if pipe is None else pipeline_size(pipe)
    pad_to = None if pipe is None or pipe.device.type == "cpu" else cfg.batch_size
    with atomic_path(target) as tmp, ThreadPoolExecutor(1) as io:
        tmp.mkdir()
        saved = []
        upcoming = io.submit(read_batch, batches[0], root, cfg, size) if batches else None
        for k, batch in enumerate(batches):
            inputs = upcoming.result()
            if k + 1 < len(batches):
                upcoming = io.submit(read_batch, batches[k + 1], root, cfg, size)
            if cfg.method == "copy_paste":
                generated = list(map(copy_paste, *inputs))
            else:
                images, masks, resized = inputs
                generated = generate_batch(
                    pipe, images, masks, list(batch.prompt), list(batch.seed), cfg,
                    pad_to=pad_to, resized=resized,
                )  # fmt: skip
            saved.append(io.submit(save_images, generated, list(batch.img_filename), tmp))
        for future in saved:
            future.result()
        jobs.to_csv(tmp / "shard.csv", index=False)


def read_batch(batch: pd.DataFrame, root: Path, cfg, size: int | None) -> tuple:
    """A batch's sources and masks (each the size of its source, or a DataError naming the
    mask); copy_paste: also the donors and their masks; diffusion: also the sources and
    masks resized to the pipeline's `size`."""
    images = [np.asarray(load_image(root / f)) for f in batch.source_filename]
    masks = [load_mask(paths.SEGMENT / f, im.shape) for f, im in zip(batch.mask_filename, images)]
    if cfg.method == "copy_paste":
        donors = [np.asarray(load_image(root / f)) for f in batch.donor_filename]
        donor_masks = [
            load_mask(root / f, donor.shape) for f, donor in zip(batch.donor_mask_filename, donors)
        ]
        return images, masks, donors, donor_masks
    return images, masks, resize_inputs(images, masks, size)


def save_images(images, names: list[str], folder: Path) -> None:
    for name, image in zip(names, images):
        Image.fromarray(image).save(folder / Path(name).name)


def copy_paste(
    source: np.ndarray, mask: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray
) -> np.ndarray:
    """The copy-paste control: no diffusion. The masked region is filled with the mean colour
    of the source just outside it, then the donor's object (cropped to its mask, scaled to
    fit the mask's bounding box, centred) is pasted where it overlaps the mask. Pixels
    outside the mask stay the source's, as with diffusion."""
    out = source.copy()
    if not mask.any() or not donor_mask.any():
        return out
    ring = dilate(mask, 3) & ~mask
    out[mask] = source[ring if ring.any() else ~mask].mean(0).round().astype(source.dtype)
    (y0, y1), (x0, x1) = _extent(mask)
    (dy0, dy1), (dx0, dx1) = _extent(donor_mask)
    crop, crop_mask = donor[dy0:dy1, dx0:dx1], donor_mask[dy0:dy1, dx0:dx1]
    scale = min((y1 - y0) / crop.shape[0], (x1 - x0) / crop.shape[1])
    h = max(1, round(crop.shape[0] * scale))
    w = max(1, round(crop.shape[1] * scale))
    crop = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))
    crop_mask = np.asarray(Image.fromarray(crop_mask).resize((w, h), Image.NEAREST))
    top, left = y0 + (y1 - y0 - h) // 2, x0 + (x1 - x0 - w) // 2
    paste = np.zeros_like(mask)
    paste[top : top + h, left : left + w] = crop_mask
    paste &= mask
    placed = np.zeros_like(source)
    placed[top : top + h, left : left + w] = crop
    out[paste] = placed[paste]
    return out


def _extent(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row start, stop), (column start, stop) of the mask's bounding box."""
    ys, xs = np.nonzero(mask)
    return (int(ys.min()), int(ys.max()) + 1), (int(xs.min()), int(xs.max()) + 1)


def generate_batch(
    pipe, images, masks, prompts, seeds, cfg, pad_to: int | None = None, resized=None
) -> list[np.ndarray]:
    """Inpaint at the pipeline's native size, then paste back at each source's own size.

    pad_to: fill a short batch up to this size with copies of its last job (same prompt and
    seed), whose outputs are discarded; each image has its own seed, so padding changes no
    image. resized: `resize_inputs` of the batch, if already made (off the critical path).
    """
    if resized is None:
        resized = resize_inputs(images, masks, pipeline_size(pipe))
    resized_images, resized_masks = resized
    seeds = [int(s) for s in seeds]
    prompts = list(prompts)
    extra = max(0, (pad_to or 0) - len(images))
    if extra:
        resized_images = np.concatenate([resized_images, resized_images[[-1] * extra]])
        resized_masks = np.concatenate([resized_masks, resized_masks[[-1] * extra]])
        prompts, seeds = prompts + prompts[-1:] * extra, seeds + seeds[-1:] * extra
    out = inpaint(
        pipe,
        resized_images,
        resized_masks,
        prompts,
        steps=cfg.steps,
        guidance=cfg.guidance,
        strength=cfg.strength,
        seed=seeds,
    )[: len(images)]
    results = []
    for image, mask, generated in zip(images, masks, out):
        if generated.shape[:2] != image.shape[:2]:
            back = Image.fromarray(generated).resize(image.shape[1::-1], Image.BILINEAR)
            generated = np.where(mask[..., None], np.asarray(back), image)
        results.append(generated)
    return results


def pipeline_size(pipe) -> int:
    """The pipeline's native image side (512 for SD 2 inpainting)."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def resize_inputs(images, masks, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sources (bilinear) and masks (nearest) at the pipeline's side: uint8 BxSxSx3, bool."""
    resized = np.stack([_resize(im, size, Image.BILINEAR) for im in images])
    resized_masks = np.stack(
        [_resize(m.astype(np.uint8) * 255, size, Image.NEAREST) > 127 for m in masks]
    )
    return resized, resized_masks


def _resize(array: np.ndarray, size: int, resample) -> np.ndarray:
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), resample))
