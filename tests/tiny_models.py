"""Tiny random-weight models with the real architectures, shared by several test files."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from ddb.models.tokenizer import clip_tokenizer


def tiny_inpaint_pipeline() -> StableDiffusionInpaintPipeline:
    """SD-inpainting's architecture at toy size: 9-channel UNet, 2-level VAE, 2-layer CLIP."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        latent_channels=4,
        layers_per_block=1,
        sample_size=64,
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9,  # noisy latents + mask + masked-image latents
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=49408,
            max_position_embeddings=77,
            eos_token_id=49407,
        )
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_text2image_pipeline() -> StableDiffusionPipeline:
    """SD-2-base's architecture at toy size: a 4-channel UNet, with the VAE, text encoder and
    tokenizer of `tiny_inpaint_pipeline` (the same weights, as SD 2 base and inpainting
    share theirs), and the PNDM scheduler as SD 2 base ships it."""
    inpaint = tiny_inpaint_pipeline()
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,  # the noisy latents only
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    scheduler = PNDMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=inpaint.vae,
        text_encoder=inpaint.text_encoder,
        tokenizer=inpaint.tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
