"""A small Stable-Diffusion-style inpainting model, built from diffusers' own classes.

Components are exactly those of `stabilityai/stable-diffusion-2-inpainting`, only small:
an `AutoencoderKL` whose latents are 4x smaller than the image, a
`UNet2DConditionModel` with 9 input channels (noisy latents, mask, masked-image latents),
a `CLIPTextModel` over the real CLIP vocabulary, and a DDIM scheduler. Trained here, saved
with `save_pretrained`, and loaded by the DDB stages with `from_pretrained` like the real one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from torch.nn import functional as F
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

log = logging.getLogger(__name__)

SCHEDULER = {  # Stable Diffusion's noise schedule
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
MASK_KINDS = ("object", "box", "random")


def build_vae(channels: list[int], latent_channels: int, image_size: int) -> AutoencoderKL:
    levels = len(channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=_groups(channels),
        sample_size=image_size,
    )


def build_text_encoder(
    vocab_size: int, width: int, layers: int, pad_token_id: int
) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 32),
        max_position_embeddings=77,
        projection_dim=width,
        pad_token_id=pad_token_id,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet(
    channels: list[int],
    latent_channels: int,
    latent_size: int,
    text_width: int,
    layers_per_block: int = 2,
):
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=2 * latent_channels + 1,  # noisy latents, mask, masked-image latents
        out_channels=latent_channels,
        block_out_channels=tuple(channels),
        # attention only below the top resolution: it dominates CPU inference at 16x16
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        layers_per_block=layers_per_block,
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=_groups(channels),
    )


def to_unit(images: np.ndarray, device) -> torch.Tensor:
    """uint8 BxHxWx3 -> float Bx3xHxW in [-1, 1] (the pipeline's convention)."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(
    vae: AutoencoderKL,
    next_images: Callable[[], np.ndarray],
    steps: int,
    lr: float,
    device,
    kl_weight: float = 1e-6,
) -> list[float]:
    """L1 reconstruction + a small KL term, as SD's autoencoder minus its GAN loss."""
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in (bar := tqdm(range(steps), desc="foundation vae", unit="step")):
        x = to_unit(next_images(), device)
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon.float(), x) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return losses


@torch.no_grad()
def set_latent_scale(vae: AutoencoderKL, images: np.ndarray, device) -> float:
    """Record 1/std of the latents as `scaling_factor`, as SD does (0.18215 for its VAE)."""
    vae.eval()
    latents = vae.encode(to_unit(images, device)).latent_dist.sample()
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return scale


def mask_batch(corpus: dict, index: np.ndarray, rng: np.random.Generator, weights) -> np.ndarray:
    """For each sample, its object outline (dilated 0-2 px), its box or a random region."""
    from ddb.data.corpus import dilate

    kinds = rng.choice(len(MASK_KINDS), size=len(index), p=weights)
    masks = np.empty((len(index), *corpus["images"].shape[1:3]), bool)
    for row, (i, kind) in enumerate(zip(index, kinds, strict=True)):
        mask = corpus[f"{MASK_KINDS[kind]}_masks"][i]
        masks[row] = dilate(mask, int(rng.integers(0, 3))) if kind == 0 else mask
    return masks


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return text_encoder(ids)[0]


def train_inpainting(
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tokenizer,
    corpus: dict,
    steps: int,
    batch_size: int,
    lr: float,
    caption_dropout: float,
    ema_decay: float,
    seed: int,
    device,
    mask_weights=(0.4, 0.35, 0.25),
    max_seconds: float = 0,
) -> list[float]:
    """The SD inpainting objective: predict the noise of the latents given the mask and
    the masked image's latents; the text encoder trains jointly (it has no pretraining).
    Captions are dropped with probability `caption_dropout` so classifier-free guidance
    has an unconditional model to contrast with. EMA weights are what gets saved.
    `max_seconds` > 0 stops early at that wall-clock budget (the step count is then in the
    returned losses)."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    noise_scheduler = DDPMScheduler(**SCHEDULER)
    vae.to(device).eval().requires_grad_(False)
    unet.to(device).train()
    text_encoder.to(device).train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warmup = min(500, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))),
    )
    ema_unet = EMAModel(unet.parameters(), decay=ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=ema_decay)
    ema_unet.to(device)
    ema_text.to(device)
    scale = vae.config.scaling_factor
    n = len(corpus["images"])
    generator = torch.Generator(device).manual_seed(seed)
    losses = []
    for _ in (bar := tqdm(range(steps), desc="foundation unet", unit="step")):
        index = rng.integers(0, n, batch_size)
        images = to_unit(corpus["images"][index], device)
        masks = torch.from_numpy(mask_batch(corpus, index, rng, mask_weights)).to(device)
        masks = masks[:, None].float()
        prompts = [
            "" if rng.random() < caption_dropout else str(c) for c in corpus["captions"][index]
        ]
        with torch.no_grad(), _autocast(device):
            latents = vae.encode(images).latent_dist.sample(generator) * scale
            masked = vae.encode(images * (masks < 0.5)).latent_dist.sample(generator) * scale
        latents, masked = latents.float(), masked.float()
        small_mask = F.interpolate(masks, size=latents.shape[-2:])
        noise = torch.randn(latents.shape, generator=generator, device=device)
        t = torch.randint(
            0, SCHEDULER["num_train_timesteps"], (batch_size,), device=device, generator=generator
        )
        noisy = noise_scheduler.add_noise(latents, noise, t)
        with _autocast(device):
            text = encode_prompts(tokenizer, text_encoder, prompts, device)
            pred = unet(torch.cat([noisy, small_mask, masked], 1), t, text).sample
        loss = F.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if max_seconds and time.perf_counter() - start > max_seconds:
            log.info("unet: time budget of %.0f s reached after %d steps", max_seconds, len(losses))
            break
    ema_unet.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    unet.eval()
    text_encoder.eval()
    return losses


def make_pipeline(vae, unet, text_encoder, tokenizer) -> StableDiffusionInpaintPipeline:
    scheduler = DDIMScheduler(
        **SCHEDULER, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def inpaint(
    pipe: StableDiffusionInpaintPipeline,
    images: np.ndarray,
    masks: np.ndarray,
    prompts: list[str],
    steps: int = 25,
    guidance: float = 2.0,
    strength: float = 1.0,
    seed: int | list[int] = 0,
) -> np.ndarray:
    """Repaint the masked region of each image, then paste it back onto the source.

    The VAE re-decodes the whole image, so pixels outside the mask would drift; pasting
    keeps them exactly the source's (diffusers' 9-channel pipeline does not do it).
    images: uint8 BxHxWx3; masks: bool BxHxW (True = repaint). Returns uint8 BxHxWx3.
    seed: one seed for the batch, or one per image (then an image's result does not depend
    on which batch it shares).
    """
    from PIL import Image

    size = images.shape[1]
    out = pipe(
        prompt=list(prompts),
        image=[Image.fromarray(im) for im in images],
        mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in masks],
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=guidance,
        strength=strength,
        generator=(
            [torch.Generator(pipe.device).manual_seed(s) for s in seed]
            if isinstance(seed, list)
            else torch.Generator(pipe.device).manual_seed(seed)
        ),
        output_type="np",
    ).images
    generated = np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    return np.where(masks[..., None], generated, images)


def _groups(channels: list[int]) -> int:
    """GroupNorm groups dividing every width (32 as in SD where possible)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def _autocast(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
