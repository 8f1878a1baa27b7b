"""Time the foundation UNet's training step (issue 15): the eager path the committed build
trained with (AdamW foreach on CUDA, no compile) against the fast one (`foundation.compile:
true`: fused AdamW, `torch.compile`, with CUDA graphs on a GPU), in one run, on the same
models and batches. A step is what `train_inpainting` runs: a `LatentCorpus` draw and an
`InpaintingStep` (text encoder + UNet forward and backward, clipping, AdamW, EMA).

The models have params.yaml's `foundation` sizes (or `--toy` ones), the latents come from a
small synthetic corpus through the untrained VAE (the step does not care what they hold).
Rounds of each path alternate, and each path's figure is its median round, so a machine
whose speed drifts (a shared CPU) biases neither. On CUDA it writes its section of
reports/benchmarks.md (on CPU only with --write). Usage:

    python benchmarks/unet_step.py --toy                # CPU: tiny models, seconds
    python benchmarks/unet_step.py                      # the committed sizes, batch 256
    python benchmarks/unet_step.py --profile DIR        # also torch.profiler tables in DIR
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddb.config import load_config
from ddb.models import diffusion
from ddb.models.tokenizer import clip_tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling time_pipeline.py
from time_pipeline import REPO, machine, write_section  # noqa: E402

SECTION = "unet_step"
TOY = {  # the sizes of tests/test_diffusion.py
    "image_size": 32,
    "vae_channels": [16, 32],
    "unet_channels": [16, 32],
    "unet_layers": 1,
    "text_width": 32,
    "text_layers": 1,
    "batch_size": 8,
}


def synthetic_corpus(n: int, size: int, seed: int) -> dict:
    """A corpus dict as corpus.build_corpus returns: noise images, box masks."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((3, n, size, size), bool)
    for kind in range(3):
        for i, (y, x, h, w) in enumerate(rng.integers(0, size // 2, (n, 4))):
            masks[kind, i, y : y + h + 2, x : x + w + 2] = True
    captions = [f"a photo of a {a} on {b}" for a in ("duck", "fox", "pear") for b in ("sand", "")]
    return {
        "images": images,
        "object_masks": masks[0],
        "box_masks": masks[1],
        "random_masks": masks[2],
        "captions": np.array([captions[i % len(captions)] for i in range(n)]),
    }


def build(cfg, tokenizer, corpus: dict, device):
    latent_size = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    vae = diffusion.build_vae(cfg.vae_channels, cfg.latent_channels, cfg.image_size)
    diffusion.set_latent_scale(vae.to(device), corpus["images"][:256], device)
    text = diffusion.build_text_encoder(
        len(tokenizer), cfg.text_width, cfg.text_layers, tokenizer.pad_token_id
    )
    unet = diffusion.build_unet(
        cfg.unet_channels, cfg.latent_channels, latent_size, cfg.text_width, cfg.unet_layers
    )
    data = diffusion.LatentCorpus(corpus, vae, tokenizer, device)
    return vae, unet, text, data


class Trial:
    """One path under test: its own copy of the models, optimiser and generator."""

    def __init__(self, name, unet, text, scale, cfg, data, device, fast, backend, steps):
        def progress(s: int) -> float:
            return min(1.0, s / steps)

        self.name, self.data, self.cfg, self.device = name, data, cfg, device
        self.step = diffusion.InpaintingStep(
            copy.deepcopy(unet),
            copy.deepcopy(text),
            scale,
            cfg.unet_lr,
            diffusion.warmup_cosine(steps, progress),
            cfg.ema_decay,
            device,
            fused=None if fast else False,
            compile=fast,
            backend=backend,
        )
        self.generator = torch.Generator(device).manual_seed(cfg.seed)
        self.losses: list[torch.Tensor] = []
        self.rounds: list[float] = []

    def run(self, steps: int) -> float:
        """Seconds for `steps` training steps (the device drained before and after)."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            batch = self.data.draw(self.cfg.batch_size, self.cfg.caption_dropout, self.generator)
            self.losses.append(self.step(*batch, self.generator))
        sync(self.device)
        return time.perf_counter() - start


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_syncs(path: Trial) -> str:
    """Run 3 steps with CUDA's sync debug mode raising on any device-to-host wait."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        path.run(3)
        return "none in 3 steps (`torch.cuda.set_sync_debug_mode('error')`)"
    except RuntimeError as err:
        return f"FOUND: {str(err).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)


def profile(path: Trial, steps: int, folder: Path) -> Path:
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU]
    if path.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        path.run(steps)
    key = "self_cuda_time_total" if path.device.type == "cuda" else "self_cpu_time_total"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"unet_step_{path.name}.txt"
    out.write_text(
        f"{path.name} path, {steps} steps\n"
        + prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60)
    )
    return out


def where(device) -> str:
    if device.type != "cuda":
        return machine()
    name = torch.cuda.get_device_name(device)
    return f"{name}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--toy", action="store_true", help="tiny models (tests' sizes)")
    parser.add_argument("--batch-size", type=int, help="default: foundation.batch_size")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, help="steps per timed round (default 50; toy 5)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compiles)")
    parser.add_argument("--corpus", type=int, default=512, help="synthetic corpus images")
    parser.add_argument(
        "--backend", default="inductor", help="torch.compile backend of the fast path"
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="write profiler tables")
    parser.add_argument("--write", action="store_true", help="write reports/benchmarks.md")
    args = parser.parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    cfg = load_config(REPO / "params.yaml").foundation
    cfg = dataclasses.replace(cfg, **(TOY if args.toy else {}))
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    steps = args.steps or (5 if args.toy else 50)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":  # as the foundation stage
        torch.backends.cudnn.benchmark = True
    tokenizer = clip_tokenizer()
    corpus = synthetic_corpus(args.corpus, cfg.image_size, cfg.seed)
    vae, unet, text, data = build(cfg, tokenizer, corpus, device)
    total = args.warmup + args.rounds * steps + 3 + 10  # the schedule's length: every step
    scale = vae.config.scaling_factor
    paths = [
        Trial(label, unet, text, scale, cfg, data, device, fast, args.backend, total)
        for label, fast in (("eager", False), ("fast", True))
    ]
    warmup = {path.name: path.run(args.warmup) for path in paths}
    for _ in range(args.rounds):
        for path in paths:
            path.rounds.append(path.run(steps))
    rate = {path.name: steps / statistics.median(path.rounds) for path in paths}
    first = [torch.stack(path.losses[: args.warmup]).float().cpu() for path in paths]
    drift = float(((first[1] - first[0]).abs() / first[0].abs()).max())
    syncs = host_syncs(paths[1]) if device.type == "cuda" else "not checked (CPU)"
    tables = []
    for path in paths if args.profile else []:
        try:  # a profiler that fails on this device must not lose the figures
            tables.append(profile(path, min(steps, 10), args.profile))
        except Exception as err:  # noqa: BLE001
            tables.append(f"{path.name} failed: {err!r}"[:300])
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    text_params = sum(p.numel() for p in text.parameters()) / 1e6
    mode = "reduce-overhead" if device.type == "cuda" and args.backend == "inductor" else "default"
    lines = [
        "## UNet training step (`benchmarks/unet_step.py`)",
        "",
        f"Measured {datetime.date.today()} on {where(device)}, torch {torch.__version__}; "
        f"{'toy' if args.toy else 'params.yaml `foundation`'} sizes: UNet {params:.1f}M and text "
        f"encoder {text_params:.1f}M parameters, {cfg.image_size} px images "
        f"({data.stats.shape[-1]}x{data.stats.shape[-1]} latents), batch {cfg.batch_size}. A step "
        "is a `LatentCorpus` draw and an `InpaintingStep`; median of "
        f"{args.rounds} alternating rounds of {steps} steps per path, after {args.warmup} "
        "warm-up steps.",
        "",
        "| path | steps/s | samples/s | warm-up s (compiles) |",
        "|---|---|---|---|",
        f"| eager: AdamW {'foreach' if device.type == 'cuda' else 'for-loop'}, no compile | "
        f"{rate['eager']:.1f} | {rate['eager'] * cfg.batch_size:,.0f} | {warmup['eager']:.1f} |",
        f"| fast: AdamW fused, torch.compile "
        f"({args.backend}, {mode}) | {rate['fast']:.1f} | {rate['fast'] * cfg.batch_size:,.0f} "
        f"| {warmup['fast']:.1f} |",
        "",
        f"Fast / eager: **{rate['fast'] / rate['eager']:.2f}x**. Losses of the first "
        f"{args.warmup} steps (same weights, same batches): largest relative difference "
        f"{drift:.1e}. Host syncs in a fast step: {syncs}.",
    ]
    lines += [f"Profile: {table}" for table in tables]
    body = "\n".join(lines)
    if device.type == "cuda" or args.write:
        write_section(SECTION, body)
    print(body)
    return body


if __name__ == "__main__":
    main()
