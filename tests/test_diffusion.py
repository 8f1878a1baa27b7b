"""The small SD-style inpainting model on tiny sizes: training lowers the loss, the saved
pipeline reloads through the real loader, and paste-back keeps unmasked pixels exact."""

import numpy as np
import pytest
import torch

from ddb.models import diffusion
from ddb.models.loaders import load_inpaint_pipeline
from ddb.models.tokenizer import clip_tokenizer


def _corpus(n=8, size=32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    images[:, 8:24, 8:24] = (250, 200, 0)  # an "object"
    obj = np.zeros((n, size, size), bool)
    obj[:, 8:24, 8:24] = True
    return {
        "images": images,
        "object_masks": obj,
        "box_masks": obj.copy(),
        "random_masks": obj.copy(),
        "captions": np.array(["a photo of a duck"] * n),
    }


def tiny_models():
    """(tokenizer, vae, unet, text encoder) at toy size, seeded."""
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    vae = diffusion.build_vae([16, 32], 4, 32)
    unet = diffusion.build_unet([16, 32], 4, 16, 32, layers_per_block=1)
    text = diffusion.build_text_encoder(len(tokenizer), 32, 1, tokenizer.pad_token_id)
    return tokenizer, vae, unet, text


@pytest.fixture(scope="module")
def tiny():
    return tiny_models()


def test_unet_has_the_inpainting_inputs(tiny):
    _, vae, unet, _ = tiny
    assert unet.config.in_channels == 9  # latents, mask, masked-image latents
    assert vae.config.latent_channels == 4
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 2


def test_vae_and_inpainting_training_lower_their_loss(tiny):
    tokenizer, vae, unet, text = tiny
    data = _corpus()
    losses = diffusion.train_vae(vae, lambda: data["images"], steps=30, lr=3e-3, device="cpu")
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    scale = diffusion.set_latent_scale(vae, data["images"], "cpu")
    assert vae.config.scaling_factor == pytest.approx(scale) and scale > 0
    losses = diffusion.train_inpainting(
        vae, unet, text, tokenizer, data, steps=30, batch_size=8, lr=3e-3,
        caption_dropout=0.0, ema_decay=0.5, seed=0, device="cpu",
    )  # fmt: skip
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_saved_pipeline_reloads_and_paste_back_is_exact(tiny, tmp_path):
    tokenizer, vae, unet, text = tiny
    pipe = diffusion.make_pipeline(vae, unet, text, tokenizer)
    pipe.save_pretrained(tmp_path / "inpaint")
    loaded = load_inpaint_pipeline(str(tmp_path / "inpaint"))
    loaded.set_progress_bar_config(disable=True)
    data = _corpus(n=2)
    masks = data["object_masks"]
    out = diffusion.inpaint(loaded, data["images"], masks, ["a photo of a crow"] * 2, steps=2)
    assert out.shape == data["images"].shape and out.dtype == np.uint8
    assert np.array_equal(out[~masks], data["images"][~masks])  # outside: the source's
    assert not np.array_equal(out[masks], data["images"][masks])  # inside: repainted
    again = diffusion.inpaint(loaded, data["images"], masks, ["a photo of a crow"] * 2, steps=2)
    assert np.array_equal(out, again)  # seeded


def test_dpm_solver_keeps_the_checkpoints_noise_schedule_and_paste_back(tiny):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    tokenizer, vae, unet, text = tiny
    pipe = diffusion.make_pipeline(vae, unet, text, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    checkpoint = pipe.scheduler
    assert diffusion.use_scheduler(pipe, "checkpoint").scheduler is checkpoint
    data = _corpus(n=2)
    masks, prompts = data["object_masks"], ["a photo of a crow"] * 2
    ddim = diffusion.inpaint(pipe, data["images"], masks, prompts, steps=3)
    diffusion.use_scheduler(pipe, "dpmsolver++")
    assert isinstance(checkpoint, DDIMScheduler)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    # the same trained noise schedule: only the sampler changes
    assert torch.equal(pipe.scheduler.alphas_cumprod, checkpoint.alphas_cumprod)
    assert pipe.scheduler.config.prediction_type == checkpoint.config.prediction_type
    dpm = diffusion.inpaint(pipe, data["images"], masks, prompts, steps=3)
    assert np.array_equal(dpm[~masks], data["images"][~masks])
    assert not np.array_equal(dpm, ddim)  # another sampler, another image
    assert np.array_equal(dpm, diffusion.inpaint(pipe, data["images"], masks, prompts, steps=3))
    with pytest.raises(ValueError, match="unknown scheduler"):
        diffusion.use_scheduler(pipe, "euler")


def test_latent_corpus_holds_the_vae_encoding_of_each_masked_image(tiny):
    from ddb.data.corpus import dilate

    tokenizer, vae, _, _ = tiny
    data = _corpus(n=3)
    data["random_masks"] = np.zeros_like(data["random_masks"])
    data["random_masks"][:, :5] = True
    latents = diffusion.LatentCorpus(data, vae, tokenizer, "cpu", chunk=2)
    for v, (kind, grow) in enumerate(diffusion.MASK_VARIANTS):
        mask = np.stack([dilate(m, grow) for m in data[f"{kind}_masks"]])
        blanked = np.where(mask[..., None], 127.5, data["images"].astype(float))
        with torch.no_grad():  # blanked pixels are 0 in [-1, 1], as the pipeline blanks them
            expected = vae.encode(diffusion.to_unit(blanked, "cpu")).latent_dist.mean
        stored = latents.stats[:, 1 + v, 0].float()  # float16 on the device
        assert torch.allclose(stored, expected, rtol=1e-2, atol=5e-3)
    small = latents.small_masks
    assert small.shape == (3, len(diffusion.MASK_VARIANTS), 16, 16)
    assert small[:, 0].sum() < small[:, 1].sum() < small[:, 2].sum()  # dilation grows
    assert torch.equal(small[:, 3], small[:, 0])  # this corpus's boxes are its objects
    assert not small[:, 4, 3:].any()  # the random region: top rows only
    weights = latents.variant_weights
    assert torch.isclose(weights[:3].sum(), torch.tensor(0.4))  # object's weight, split
    ids = diffusion.tokenize(tokenizer, ["a photo of a duck"])
    lat, masked, masks, drawn_ids = latents.draw(64, 1.0, torch.Generator().manual_seed(0))
    assert lat.shape == masked.shape == (64, 4, 16, 16) and masks.shape == (64, 1, 16, 16)
    assert (drawn_ids == diffusion.tokenize(tokenizer, [""])).all()  # dropout 1: all empty
    _, _, _, kept = latents.draw(8, 0.0, torch.Generator().manual_seed(0))
    assert (kept == ids).all()


def test_a_time_budget_stops_training_early():
    vae = diffusion.build_vae([16, 32], 4, 32)
    data = _corpus(n=4)
    losses = diffusion.train_vae(
        vae, lambda: data["images"], steps=1000, lr=1e-3, device="cpu", max_seconds=1e-6
    )
    assert len(losses) == 1  # the budget ran out during the first step
