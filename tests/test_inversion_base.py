"""Textual inversion as the paper runs it: plain text-to-image inversion on a base pipeline
(`models.inversion`, stable-diffusion-2-base), the token then loaded into the inpainting
pipeline (`models.diffusion`). A tiny SD-2-base stand-in is saved in a temporary Hugging
Face cache under the real hub id and loaded by it, as the real one would be."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, PNDMScheduler
from transformers import CLIPTextConfig, CLIPTextModel

from ddb import paths
from ddb.config import ConfigError
from ddb.models.inversion import (
    accumulate_gradient,
    draw_step,
    encode_latents,
    inversion_prompts,
    load_learned_embeds,
    save_learned_embeds,
    train_textual_inversion,
)
from ddb.models.loaders import SD2_BASE, SD2_BASE_REVISION, load_text2image_pipeline
from ddb.models.tokenizer import add_placeholder_tokens
from ddb.stages import invert
from tests.conftest import default_config, default_section
from tests.hub_cache import hub_snapshot
from tests.test_inversion import TOKEN, VOCAB, _data, write_inversion_inputs
from tests.tiny_models import tiny_inpaint_pipeline, tiny_text2image_pipeline

# the paper profiles' value: the live mirror, pinned
BASE = f"{SD2_BASE}@{SD2_BASE_REVISION}"


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    """A Hugging Face home whose cache holds the tiny text-to-image pipeline as SD2_BASE at
    the pinned revision."""
    home = tmp_path_factory.mktemp("hf")
    hub_snapshot(home, SD2_BASE, tiny_text2image_pipeline().save_pretrained, SD2_BASE_REVISION)
    return home


@pytest.fixture(scope="module")
def inpaint_dir(tmp_path_factory) -> Path:
    """The tiny inpainting pipeline saved as a folder (models.diffusion)."""
    folder = tmp_path_factory.mktemp("inpaint")
    tiny_inpaint_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def hub_cache(hf_home: Path, monkeypatch) -> Path:
    """That cache, offline (huggingface_hub reads its constants at import: patch them)."""
    from huggingface_hub import constants

    cache = hf_home / "hub"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def trained(hf_home):
    """One inversion on BASE loaded by hub id: (pipe, embeddings before, result)."""
    with pytest.MonkeyPatch.context() as patch:
        from huggingface_hub import constants

        patch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        pipe = load_text2image_pipeline(BASE)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    images, _ = _data()
    result = train_textual_inversion(
        pipe, images, None, TOKEN, "bird", "bird",
        steps=15, lr=1e-1, batch_size=2, grad_accum=1, seed=0,
    )  # fmt: skip
    return pipe, before, result


def test_base_pipeline_loads_by_hub_id_as_sd2_ships_it(trained):
    pipe, _, _ = trained
    assert pipe.unet.config.in_channels == 4
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.skip_prk_steps


def test_base_inversion_changes_only_the_new_row_and_fits(trained):
    pipe, before, result = trained
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    new_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert new_id == VOCAB and after.shape[0] == VOCAB + 1
    assert torch.equal(after[:VOCAB], before)  # every other row bit-identical
    bird = pipe.tokenizer.encode("bird", add_special_tokens=False)[0]
    assert not torch.allclose(after[new_id], before[bird])  # moved from the initializer
    assert torch.equal(result.embedding, after[new_id][None])
    assert len(result.losses) == 15 and np.isfinite(result.losses).all()
    assert result.final_loss < result.initial_loss


def test_base_embedding_loads_into_the_inpainting_pipeline(trained, tmp_path):
    _, _, result = trained
    path = tmp_path / "learned_embeds.safetensors"
    save_learned_embeds(path, TOKEN, result.embedding)
    pipe = tiny_inpaint_pipeline()
    assert load_learned_embeds(pipe, path) == TOKEN  # diffusers' load_textual_inversion
    ids = pipe.tokenizer.encode(TOKEN, add_special_tokens=False)
    assert len(ids) == 1
    row = pipe.text_encoder.get_input_embeddings().weight[ids[0]].detach()
    assert torch.equal(row, result.embedding[0])


def test_a_mask_for_a_text_to_image_unet_is_refused():
    images, masks = _data()
    with pytest.raises(ValueError, match="takes no mask"):
        train_textual_inversion(
            tiny_text2image_pipeline(), images, masks, TOKEN, "bird", "bird",
            steps=1, lr=1e-3, batch_size=1, grad_accum=1, seed=0,
        )  # fmt: skip


def test_accumulating_four_batches_of_one_equals_one_batch_of_four():
    pipe = tiny_text2image_pipeline()
    (token_id,) = add_placeholder_tokens(pipe.tokenizer, pipe.text_encoder, [TOKEN], "bird")
    for model in (pipe.vae, pipe.unet, pipe.text_encoder):
        model.eval().requires_grad_(False)  # no dropout anywhere
    weight = pipe.text_encoder.get_input_embeddings().weight.requires_grad_(True)
    images, _ = _data()
    generator = torch.Generator().manual_seed(0)
    both = np.concatenate([images, images[:, :, ::-1]])  # as training: i + n is i flipped
    data = encode_latents(pipe, both, None, generator, "cpu")
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    samples = draw_step(
        np.random.default_rng(0), generator, len(images), inversion_prompts(TOKEN, "bird"),
        4, data, 1000, "cpu",
    )  # fmt: skip
    grads, losses = [], []
    for batch_size in (4, 1):
        weight.grad = None
        losses.append(accumulate_gradient(pipe, scheduler, data, samples, batch_size, "cpu"))
        grads.append(weight.grad[token_id].clone())
    assert grads[0].abs().max() > 0
    scale = grads[0].abs().max()
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * scale
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_scale_lr_multiplies_by_the_effective_batch():
    keys = {"lr": 5e-4, "batch_size": 1, "grad_accum": 4}
    assert invert.learning_rate(default_section("invert", **keys, scale_lr=False)) == 5e-4
    scaled = default_section("invert", **keys, scale_lr=True)
    assert invert.learning_rate(scaled) == pytest.approx(2e-3)  # the public code's effective lr


def test_invert_stage_trains_on_models_inversion(in_tmp_repo, tmp_path, inpaint_dir, hub_cache):
    config = write_inversion_inputs(tmp_path / "images", inpaint_dir)  # images of several sizes
    config = dataclasses.replace(
        config,
        models=dataclasses.replace(config.models, inversion=BASE),
        invert=dataclasses.replace(
            config.invert, steps=1, batch_size=1, grad_accum=2, scale_lr=True
        ),
    )
    invert.run(config)
    summary = json.loads((paths.INVERT / "summary.json").read_text())
    assert [s["model"] for s in summary.values()] == ["models.inversion"] * 2
    assert summary["waterbird"]["lr"] == pytest.approx(config.invert.lr * 2)
    pipe = tiny_inpaint_pipeline()
    for name in ("landbird", "waterbird"):
        load_learned_embeds(pipe, paths.INVERT / name / "learned_embeds.safetensors")
    assert len(pipe.tokenizer) == VOCAB + 2


def _incompatible(kind: str):
    pipe = tiny_text2image_pipeline()
    if kind == "width":
        pipe.text_encoder = CLIPTextModel(
            CLIPTextConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, vocab_size=VOCAB, eos_token_id=49407)
        )  # fmt: skip
    else:
        pipe.tokenizer.add_tokens(["<extra>"])
    return pipe


@pytest.mark.parametrize(("kind", "detail"), [("width", "48 wide"), ("vocab", "49409 tokens")])
def test_an_incompatible_text_encoder_is_a_clear_error(tmp_path, inpaint_dir, kind, detail):
    _incompatible(kind).save_pretrained(tmp_path / "other")
    invert.check_text_encoders(str(inpaint_dir), str(inpaint_dir))  # the same: passes
    with pytest.raises(ConfigError) as err:
        invert.check_text_encoders(str(tmp_path / "other"), str(inpaint_dir))
    message = str(err.value)
    assert "'models.inversion'" in message and "'models.diffusion'" in message
    assert detail in message and "different text encoders" in message


def test_invert_checks_the_text_encoders_before_training(in_tmp_repo, tmp_path, inpaint_dir):
    _incompatible("width").save_pretrained(tmp_path / "other")
    config = write_inversion_inputs(tmp_path / "images", inpaint_dir)
    config = dataclasses.replace(
        config, models=dataclasses.replace(config.models, inversion=str(tmp_path / "other"))
    )
    with pytest.raises(ConfigError, match="different text encoders"):
        invert.run(config)
    assert not paths.INVERT.exists()


def test_an_inpainting_checkpoint_in_models_inversion_is_a_clear_error(inpaint_dir):
    config = default_config(models=default_section("models", inversion=str(inpaint_dir)))
    with pytest.raises(ConfigError, match="'models.inversion'.*9 input channels"):
        invert.load_pipeline(config, "cpu")


def test_models_inversion_not_in_the_cache_is_a_clear_error(hub_cache):
    with pytest.raises(ConfigError) as err:
        load_text2image_pipeline("ddb-tests/not-a-cached-model")
    message = str(err.value)
    assert "'models.inversion'" in message and "not in the local Hugging Face cache" in message
    assert "models.inversion: /path/to/that/folder" in message
