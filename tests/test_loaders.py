"""Loading the foundation models: tiny random ones saved the way real checkpoints are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
)
from PIL import Image

from ddb.config import ConfigError
from ddb.models.loaders import (
    TAKEN_DOWN,
    load_inpaint_pipeline,
    load_segmenter,
    looks_like_hub_id,
    split_revision,
)
from ddb.models.segmenter import build_segmenter
from ddb.models.tokenizer import clip_tokenizer
from tests.tiny_models import tiny_inpaint_pipeline


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = 5e-5):
    """|actual - expected| <= rel * max|expected| everywhere: float32 rounding of another
    kernel, not a different computation."""
    scale = expected.abs().max().item()
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= rel * scale, (actual - expected).abs().max()


def test_inpaint_pipeline_round_trip_and_inference(tmp_path: Path):
    saved = tiny_inpaint_pipeline()
    saved.save_pretrained(tmp_path / "inpaint")

    pipe = load_inpaint_pipeline(str(tmp_path / "inpaint"))

    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(saved, name), getattr(pipe, name))
    assert pipe.unet.config.in_channels == 9
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.tokenizer("a photo")["input_ids"] == [49406, 320, 1125, 49407]
    assert pipe.safety_checker is None

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt="a photo of a duck on the sea",
        image=image,
        mask_image=Image.fromarray(mask),
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_segmenter_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    processor, model = build_segmenter(clip_tokenizer(), image_size=32, width=32, layers=2)
    processor.save_pretrained(tmp_path / "clipseg")
    model.save_pretrained(tmp_path / "clipseg")

    loaded_processor, loaded = load_segmenter(str(tmp_path / "clipseg"))

    assert_same_weights(model, loaded)
    assert not loaded.training
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    ours = processor(text=["a duck"], images=[image], return_tensors="pt")
    theirs = loaded_processor(text=["a duck"], images=[image], return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    with torch.inference_mode():
        built, reloaded = model.eval()(**ours).logits, loaded(**theirs).logits
    # Equal weights and inputs, but not one code path: the reloaded model can take other CPU
    # kernels (attention implementation, memory layout), and kernels differ by CPU vendor. On
    # an AMD EPYC logits of magnitude ~20 differed in the 4th decimal, so the tolerance is
    # relative to their scale; a wrong or missing weight moves them by O(1).
    assert_close_to_scale(reloaded, built)


def test_float16_checkpoints_load_as_float32_and_run_on_cpu(tmp_path: Path):
    """The foundation stage saves float16; left alone, the text encoder stayed float16."""
    tiny_inpaint_pipeline().to(torch.float16).save_pretrained(tmp_path / "inpaint")
    processor, model = build_segmenter(clip_tokenizer(), image_size=32, width=32, layers=2)
    model.to(torch.float16).save_pretrained(tmp_path / "clipseg")
    processor.save_pretrained(tmp_path / "clipseg")

    pipe = load_inpaint_pipeline(str(tmp_path / "inpaint"))
    _, segmenter = load_segmenter(str(tmp_path / "clipseg"))

    modules = [pipe.unet, pipe.vae, pipe.text_encoder, segmenter]
    assert all(p.dtype == torch.float32 for m in modules for p in m.parameters())
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (64, 64), (90, 120, 200))
    out = pipe(
        "a duck",
        image=image,
        mask_image=Image.new("L", (64, 64), 255),
        height=64,
        width=64,
        num_inference_steps=1,
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline (the constants are read at import, so patch them)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize(
    ("load", "key"),
    [(load_inpaint_pipeline, "models.diffusion"), (load_segmenter, "models.segmenter")],
)
def test_hub_id_not_in_cache_is_a_clear_error(empty_hf_cache: Path, load, key: str):
    with pytest.raises(ConfigError) as err:
        load("ddb-tests/not-a-cached-model")
    message = str(err.value)
    assert f"'{key}'" in message
    assert "not in the local Hugging Face cache" in message and str(empty_hf_cache) in message
    assert "hf download ddb-tests/not-a-cached-model" in message
    assert f"{key}: /path/to/that/folder" in message


@pytest.mark.parametrize(
    ("load", "key"),
    [(load_inpaint_pipeline, "models.diffusion"), (load_segmenter, "models.segmenter")],
)
def test_missing_folder_is_a_clear_error(tmp_path: Path, empty_hf_cache: Path, load, key: str):
    missing = tmp_path / "models" / "foundation" / "nothing"
    with pytest.raises(ConfigError) as err:
        load(str(missing))
    message = str(err.value)
    assert f"'{key}'" in message and f"no such folder ({missing})" in message
    assert "hf download" in message  # how to get a real checkpoint instead


def test_empty_folder_is_a_clear_error(tmp_path: Path):
    (tmp_path / "clipseg").mkdir()
    with pytest.raises(ConfigError, match="'models.segmenter'.*not a complete saved model"):
        load_segmenter(str(tmp_path / "clipseg"))


def test_looks_like_hub_id():
    assert looks_like_hub_id("CIDAS/clipseg-rd64-refined")
    assert looks_like_hub_id("gpt2")
    assert not looks_like_hub_id("models/foundation/inpaint")
    assert not looks_like_hub_id("./clipseg")
    assert not looks_like_hub_id("/data/sd2")


def test_split_revision_reads_the_hubs_at_notation_and_leaves_paths_alone(tmp_path: Path):
    sha = "5f74973cbb64c8568780732c17f43eb269d63a0d"
    assert split_revision("k", f"org/name@{sha}") == ("org/name", sha)
    assert split_revision("k", "org/name@main") == ("org/name", "main")
    assert split_revision("k", "org/name") == ("org/name", None)
    assert split_revision("k", "models/foundation/inpaint") == ("models/foundation/inpaint", None)
    folder = tmp_path / "sd@2"  # a local folder may contain "@"; hub ids cannot
    folder.mkdir()
    assert split_revision("k", str(folder)) == (str(folder), None)
    with pytest.raises(ConfigError, match="'models.diffusion'.*nothing after '@'"):
        split_revision("models.diffusion", "org/name@")


def test_the_taken_down_ids_map_to_pinned_mirrors():
    for old, (mirror, revision) in TAKEN_DOWN.items():
        assert old.startswith("stabilityai/stable-diffusion-2-")
        assert mirror == old.replace("stabilityai/", "sd2-community/")
        assert len(revision) == 40 and int(revision, 16) >= 0  # a full commit sha


def test_a_pinned_hub_id_not_in_the_cache_names_the_revision(empty_hf_cache: Path):
    with pytest.raises(ConfigError) as err:
        load_segmenter("ddb-tests/not-a-cached-model@abc123")
    message = str(err.value)
    assert "hf download ddb-tests/not-a-cached-model --revision abc123" in message
    assert "models.segmenter: ddb-tests/not-a-cached-model@abc123" in message


def test_a_pipeline_with_only_fp16_files_loads_them(tmp_path: Path):
    """`hf download <id> --include "*.fp16.safetensors" ...` leaves only the variant files;
    diffusers loads them only with variant="fp16"."""
    saved = tiny_inpaint_pipeline()
    saved.save_pretrained(tmp_path / "inpaint", variant="fp16")
    assert not list((tmp_path / "inpaint" / "unet").glob("diffusion_pytorch_model.safetensors"))

    pipe = load_inpaint_pipeline(str(tmp_path / "inpaint"))

    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(saved, name), getattr(pipe, name))
