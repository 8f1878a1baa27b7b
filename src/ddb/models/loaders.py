"""Load the foundation models named in params (`models.diffusion`, `models.segmenter`,
`models.inversion`, and LangSAM's `models.detector` and `models.sam`).

One code path for a local folder written by `save_pretrained` (the small offline models) and
a hub id (a real checkpoint): `from_pretrained(name_or_path, local_files_only=True)`. Nothing
is ever downloaded, and a model that is not here stops the stage with one message saying how
to get it here; there is no silent fallback to the small models, which would quietly change
what an experiment measures.
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

# The checkpoints of the paper, quoted in the error messages as examples.
EXAMPLES = {
    "models.diffusion": "stabilityai/stable-diffusion-2-inpainting",
    "models.segmenter": "CIDAS/clipseg-rd64-refined",
    "models.inversion": "stabilityai/stable-diffusion-2-base",
    "models.detector": "IDEA-Research/grounding-dino-base",  # LangSAM's GroundingDINO
    "models.sam": "facebook/sam2.1-hiera-small",  # LangSAM's SAM 2.1
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

    def load(source: str) -> StableDiffusionInpaintPipeline:
        return StableDiffusionInpaintPipeline.from_pretrained(
            source,
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
    (`stabilityai/stable-diffusion-2-base`)."""
    from diffusers import StableDiffusionPipeline

    def load(source: str) -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(
            source,
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

    def load(source: str) -> TextEncoderSpec:  # the classes SD pipelines load them with
        tokenizer = CLIPTokenizer.from_pretrained(
            source, subfolder="tokenizer", local_files_only=True
        )
        config = CLIPTextConfig.from_pretrained(
            source, subfolder="text_encoder", local_files_only=True
        )
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

    def load(source: str):
        processor = processor_class.from_pretrained(source, local_files_only=True)
        model = model_class.from_pretrained(
            source, local_files_only=True, dtype=dtype or torch.float32
        )
        return processor, model

    processor, model = load_or_explain(key, name_or_path, load)
    return processor, model.to(device).eval()


def load_or_explain(
    key: str,
    name_or_path: str,
    load: Callable[[str], T],
    check: Callable[[Path], None] | None = None,
) -> T:
    """Run `load` on the folder or hub id; turn "not found" into a ConfigError naming `key`.

    A local folder is first checked (`check`, then every .safetensors file in it), so that
    a missing component or a truncated weights file is named before the libraries' own,
    vaguer errors. Only the libraries' not-found errors (OSError; ValueError for a string
    that is neither a folder nor a valid hub id) are translated; a folder that exists and
    fails to load for another reason raises as it is, since that is a bug, not a missing
    download.
    """
    source = os.path.expanduser(name_or_path)
    exists = Path(source).exists()
    if Path(source).is_dir():
        if check is not None:
            check(Path(source))
        check_safetensors_files(key, name_or_path, Path(source))
    try:
        model = load(source)
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
    """What is missing, where it was looked for, and the two ways to make it available."""
    from huggingface_hub import constants

    if looks_like_hub_id(name_or_path):
        hub_id = name_or_path
        where = (
            f"no such folder here, and not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); this machine cannot download it"
        )
    else:
        hub_id = EXAMPLES.get(key, "<org>/<model>")
        where = f"no such folder ({Path(os.path.expanduser(name_or_path)).absolute()})"
    cache_folder = "models--" + hub_id.replace("/", "--")
    return (
        f"params.yaml: '{key}' is '{name_or_path}': {where}. Either (1) on a machine with "
        f"internet run `hf download {hub_id}` (`huggingface-cli download {hub_id}` with older "
        f"huggingface_hub), copy its cache folder ~/.cache/huggingface/hub/{cache_folder} into "
        f"{constants.HF_HUB_CACHE} here (or set HF_HOME to where you copied the cache) and set "
        f"{key}: {hub_id}; or (2) copy a folder written by `save_pretrained` (or the "
        f"downloaded snapshot folder) here and set {key}: /path/to/that/folder."
    )


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
