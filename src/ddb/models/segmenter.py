"""A small CLIPSeg, trained from scratch offline, and text-prompted segmentation with it.

DDB segments the object a prompt names (CLIPSeg) to pick the region to inpaint. Real
CLIPSeg (CIDAS/clipseg-rd64-refined) cannot be downloaded here, so this module builds the
same architecture at a small size with the CLIP tokenizer: the stand-in and the real model
load, run and save through the same transformers classes, and params swap one for the other
(`models.segmenter`).

Real CLIPSeg keeps its CLIP backbone frozen (it was pretrained on 400M pairs), and
`CLIPSegForImageSegmentation.forward` runs the backbone under `torch.no_grad()`. Ours starts
from random weights, so training runs the same computation with gradients everywhere
(`segmentation_logits`) and trains every parameter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import (
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    CLIPTokenizer,
    ViTImageProcessor,
)

log = logging.getLogger(__name__)

# OpenAI CLIP's normalisation, which our small CLIPSeg's processor uses (the real
# CIDAS/clipseg-rd64-refined processor normalises with ImageNet's: TensorInputs reads it).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_DIM = 64  # CLIP's attention head width
GRAD_CLIP = 1.0  # max gradient norm: from-scratch transformers spike early without it

Batch = tuple[np.ndarray, np.ndarray, list[str]]  # uint8 B×H×W×3, bool B×H×W, B prompts


def extract_layers(layers: int) -> list[int]:
    """Encoder layers the decoder reads: at 1/4, 1/2 and 3/4 depth, like CLIPSeg's (3, 6, 9)
    of 12, clipped to the layers that exist (fewer entries for shallow encoders)."""
    return sorted({min(layers - 1, max(0, round(layers * k / 4))) for k in (1, 2, 3)})


def build_segmenter(
    tokenizer: CLIPTokenizer,
    image_size: int = 64,
    width: int = 128,
    layers: int = 4,
    patch_size: int = 8,
    reduce_dim: int = 64,
) -> tuple[CLIPSegProcessor, CLIPSegForImageSegmentation]:
    """A randomly initialised CLIPSeg of the given size, with its processor.

    Text and vision towers share `width` and `layers`; the vocabulary is the tokenizer's
    (49,408 for CLIP's, more with placeholders). The text tower pools at the first
    "<|endoftext|>" (eos_token_id 49407; the legacy value 2 would pool at the highest id).
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    heads = max(1, width // HEAD_DIM)
    decoder_heads = max(1, reduce_dim // 16)
    if width % heads or reduce_dim % decoder_heads:
        raise ValueError(f"width {width} / reduce_dim {reduce_dim} must split into heads")
    tower = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }
    config = CLIPSegConfig(
        text_config={
            **tower,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**tower, "image_size": image_size, "patch_size": patch_size},
        projection_dim=width,
        extract_layers=extract_layers(layers),
        reduce_dim=reduce_dim,
        decoder_num_attention_heads=decoder_heads,
        decoder_intermediate_size=4 * reduce_dim,
    )
    image_processor = ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return processor, CLIPSegForImageSegmentation(config)


def model_inputs(
    processor: CLIPSegProcessor, images: np.ndarray, prompts: list[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """Pixel values, token ids and attention mask for a batch, on `device`."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    inputs = processor(text=list(prompts), images=list(images), padding=True, return_tensors="pt")
    return {key: value.to(device) for key, value in inputs.items()}


class TensorInputs:
    """The processor's inputs built from device tensors, for training: uint8 B×H×W×3 images
    at the processor's size are rescaled and normalised on the device with the processor's
    own factor, mean and std (a checkpoint's, never CLIP's constants), and each distinct
    prompt is tokenized once, then padded to the batch's longest as the processor pads.
    Equal to `model_inputs` (a test checks it), without its per-image PIL round trip, which
    bound GPU training to the host's speed."""

    def __init__(self, processor: CLIPSegProcessor, device: torch.device):
        self.tokenizer = processor.tokenizer
        images = processor.image_processor
        self.size = (images.size["height"], images.size["width"])
        self.scale = images.rescale_factor if images.do_rescale else 1.0
        mean, std = (images.image_mean, images.image_std) if images.do_normalize else (0, 1)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).reshape(-1, 1, 1)
        self.device = device
        self.ids: dict[str, list[int]] = {}

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        if tuple(images.shape[1:3]) != self.size:
            raise ValueError(f"images are {tuple(images.shape[1:3])}, the model takes {self.size}")
        pixels = images.to(self.device).permute(0, 3, 1, 2).float() * self.scale
        for prompt in set(prompts) - self.ids.keys():
            self.ids[prompt] = self.tokenizer(prompt).input_ids
        longest = max(len(self.ids[p]) for p in prompts)
        ids = torch.full((len(prompts), longest), self.tokenizer.pad_token_id)
        attention = torch.zeros((len(prompts), longest), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(self.ids[prompt])] = torch.tensor(self.ids[prompt])
            attention[row, : len(self.ids[prompt])] = 1
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": attention.to(self.device),
            "pixel_values": (pixels - self.mean) / self.std,
        }


def segmentation_logits(
    model: CLIPSegForImageSegmentation, inputs: dict[str, torch.Tensor]
) -> torch.Tensor:
    """CLIPSeg's forward pass with gradients through both CLIP towers: logits B×h×w.

    The same computation as `model(**inputs).logits` (a test checks it), minus the
    `torch.no_grad()` that freezes the backbone there.
    """
    vision = model.clip.get_image_features(
        pixel_values=inputs["pixel_values"], output_hidden_states=True
    )
    # hidden_states[0] is the embedding output, hence the +1 (as in CLIPSeg's forward)
    activations = [vision.hidden_states[i + 1] for i in model.extract_layers]
    text = model.clip.get_text_features(
        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
    )
    logits = model.decoder(activations, text.pooler_output).logits
    return logits.reshape(len(inputs["pixel_values"]), *logits.shape[-2:])


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize B×H×W maps (masks or probabilities); a no-op at the same size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", antialias=True)[:, 0]


def train_segmenter(
    processor: CLIPSegProcessor,
    model: CLIPSegForImageSegmentation,
    batches: Iterable[Batch],
    steps: int,
    lr: float,
    device: str | torch.device,
    log_every: int = 100,
    max_seconds: float = 0,
) -> list[float]:
    """Train every parameter for `steps` batches with BCE-with-logits; the loss per step.

    The masks are resized to the logits (the processor's square size) when they differ, so
    images of any size train the same model. AdamW with gradient clipping at GRAD_CLIP;
    seeding is the caller's. The model is left in eval mode. Batches of numpy arrays go
    through the processor; batches of tensors (uint8 images at the processor's size) take
    `TensorInputs`, the fast path for a GPU. `max_seconds` > 0 stops early at that
    wall-clock budget (checked when logging; the step count is then len(losses)).
    """
    device = torch.device(device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.perf_counter()
    batches = iter(batches)
    tensor_inputs = TensorInputs(processor, device)
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc="segmenter", unit="step")
    for step in bar:
        try:
            images, masks, prompts = next(batches)
        except StopIteration:
            raise ValueError(f"batches ran out after {step - 1} of {steps} steps") from None
        if torch.is_tensor(images):  # the fast path: a batch already on the device
            inputs = tensor_inputs(images, prompts)
        else:
            inputs = model_inputs(processor, images, prompts, device)
        logits = segmentation_logits(model, inputs)
        target = torch.as_tensor(masks, device=device).float()
        loss = F.binary_cross_entropy_with_logits(logits, resize_maps(target, logits.shape[-2:]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        losses.append(loss.detach())  # read back only when logged: each read syncs a GPU
        if log_every and step % log_every == 0:
            recent = torch.stack(losses[-log_every:]).mean().item()
            bar.set_postfix(loss=f"{recent:.4f}", refresh=False)
            log.info("segmenter step %d/%d: loss %.4f", step, steps, recent)
            if max_seconds and time.perf_counter() - start > max_seconds:
                log.info("segmenter: time budget of %.0f s reached at step %d", max_seconds, step)
                break
    model.eval()
    return torch.stack(losses).tolist()


@torch.inference_mode()
def segment(
    processor: CLIPSegProcessor,
    model: CLIPSegForImageSegmentation,
    images: np.ndarray,
    prompt: str,
    threshold: float = 0.5,
    batch_size: int = 64,
) -> np.ndarray:
    """Where `prompt` is in each image: bool B×H×W at the images' own size.

    sigmoid(logits) > threshold, after resizing the probabilities (not the hard mask) to
    the input size, so edges follow the model's confidence. Runs CLIPSeg's own forward
    (the path a real checkpoint takes) in eval mode.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    height, width = images.shape[1:3]
    device = next(model.parameters()).device
    model.eval()
    masks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        inputs = model_inputs(processor, chunk, [prompt] * len(chunk), device)
        logits = model(**inputs).logits
        logits = logits.reshape(len(chunk), *logits.shape[-2:])  # B×h×w even for B = 1
        probs = resize_maps(torch.sigmoid(logits.float()), (height, width))
        masks.append((probs > threshold).cpu().numpy())
    return np.concatenate(masks)


def mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean intersection-over-union over images (B×H×W or one H×W mask).

    An image where both masks are empty counts as 1: the segmenter correctly found nothing.
    """
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    inter = (pred & target).reshape(len(pred), -1).sum(axis=1)
    union = (pred | target).reshape(len(pred), -1).sum(axis=1)
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(iou.mean())
