"""Classifier training speed on one GPU: ResNet-50 at 224 px, images/s of training, with
real JPEG decoding from disk (JPEGs of Waterbirds' size, decoded, RandomResizedCrop'd and
flipped by the erm stage's ImageTable and train transform), timed two ways in one run:

- fp32: float32, eager, NCHW, the plain optimizer (classifier.amp: false);
- ours: what training.py does on a GPU with the defaults (classifier.amp: true): bfloat16
  autocast, channels_last, fused optimizer, pinned memory; `--compile` adds torch.compile.

Both use training.py's own loader (`train_loader`: workers, persistent, pinned) and epoch
(`train_epoch`: no `.item()` per step), after one warm-up epoch (cuDNN's and the
compiler's first calls). A data-only pass (the loader alone) says whether decoding bounds it.

    python benchmarks/gpu_train.py            # on a GPU: writes the "train" key of
                                              # reports/gpu.json and its benchmarks.md section
    python benchmarks/gpu_train.py --toy      # CPU or GPU: ResNet-18, 32 px, 64 images;
                                              # prints only

Only figures measured on a GPU are written.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ddb.config import ClassifierConfig, load_config
from ddb.data.dataset import ImageTable
from ddb.models.classifier import build_classifier, train_transform
from ddb.training import Speed, make_optimizer, prepare_model, train_epoch, train_loader

HERE = Path(__file__).resolve().parent
REPO = HERE.parent  # where the figures are written
PARAMS = HERE.parent / "params.yaml"  # the classifier keys not set here
sys.path.insert(0, str(HERE))  # the sibling scripts
from gpu_generate import merge_json  # noqa: E402
from time_pipeline import write_section  # noqa: E402

FULL = {"arch": "resnet50", "size": 224, "images": 4096, "batch_size": 256, "side": 400}
TOY = {"arch": "resnet18", "size": 32, "images": 64, "batch_size": 16, "side": 48}


def write_jpegs(folder: Path, n: int, side: int, seed: int = 0) -> pd.DataFrame:
    """n JPEGs of side x side px (Waterbirds' are about 400 px; quality 90) with smooth
    random content, so that they decode like photographs rather than like noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        coarse = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((side, side), Image.BICUBIC)
        name = f"{i:06d}.jpg"
        image.save(folder / name, quality=90)
        rows.append({"img_filename": name, "y": i % 2, "group": i % 4})
    return pd.DataFrame(rows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(way: str, dataset, cfg: ClassifierConfig, device, epochs: int) -> float:
    """Training images/s of `epochs` timed epochs after one warm-up epoch."""
    torch.manual_seed(0)
    model = build_classifier(cfg.arch, 2).to(device)
    speed = Speed.for_device(device, cfg)
    loader = train_loader(dataset, cfg, seed=0, speed=speed)
    trained = prepare_model(model, cfg, speed)
    optimizer = make_optimizer(model, cfg, fused=speed.fused)
    train_epoch(trained, loader, optimizer, None, None, None, speed)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        train_epoch(trained, loader, optimizer, None, None, None, speed)
    sync(device)
    seconds = time.perf_counter() - start
    print(f"{way}: {epochs * len(dataset) / seconds:.1f} images/s", file=sys.stderr)
    return epochs * len(dataset) / seconds


def data_only_ips(dataset, cfg: ClassifierConfig, device) -> float:
    """The loader alone (decode, augment, collate, copy to the device): the ceiling the
    data path sets on training."""
    speed = Speed.for_device(device, cfg)
    loader = train_loader(dataset, cfg, seed=0, speed=speed)
    for _ in loader:  # warm-up: starts the persistent workers
        pass
    start = time.perf_counter()
    for images, *_ in loader:
        speed.to_device(images, device)
    sync(device)
    return len(dataset) / (time.perf_counter() - start)


def measure(toy: bool, device: torch.device, workers: int, epochs: int, compile: bool) -> dict:
    size = TOY if toy else FULL
    base = dataclasses.replace(
        load_config(PARAMS).classifier,
        arch=size["arch"],
        weights="",
        optimizer="sgd",
        lr=0.01,
        batch_size=size["batch_size"],
        num_workers=workers,
        device=device.type,
    )
    with tempfile.TemporaryDirectory() as folder:
        table = write_jpegs(Path(folder), size["images"], size["side"])
        dataset = ImageTable(folder, table, train_transform(size["size"], augment=True))
        fp32 = dataclasses.replace(base, amp=False)
        ours = dataclasses.replace(base, amp=True, compile=compile)
        result = {
            "toy": toy,
            "arch": size["arch"],
            "image_size": size["size"],
            "jpeg_side": size["side"],
            "batch_size": size["batch_size"],
            "num_workers": workers,
            "compile": compile,
            "data_only_ips": data_only_ips(dataset, ours, device),
            "fp32_ips": images_per_second("fp32", dataset, fp32, device, epochs),
            "ours_ips": images_per_second("ours", dataset, ours, device, epochs),
            "date": datetime.date.today().isoformat(),
        }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {"device": name, "train": result}


def section(figures: dict) -> str:
    t = figures["train"]
    return "\n".join(
        [
            "## GPU: classifier training (benchmarks/gpu_train.py)",
            "",
            f"{figures['device']}, {t['date']}. {t['arch']} at {t['image_size']} px, batch "
            f"{t['batch_size']}, SGD, JPEGs of {t['jpeg_side']} px decoded by "
            f"{t['num_workers']} DataLoader workers.",
            "",
            "| way | images/s | vs fp32 |",
            "|---|---:|---:|",
            f"| fp32 eager | {t['fp32_ips']:.0f} | 1.0x |",
            f"| ours (bf16 autocast, channels_last, fused, compile "
            f"{str(t['compile']).lower()}) | {t['ours_ips']:.0f} | "
            f"{t['ours_ips'] / t['fp32_ips']:.1f}x |",
            f"| the data path alone (decode, augment, copy) | {t['data_only_ips']:.0f} | |",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--toy", action="store_true", help="ResNet-18, 32 px, 64 images")
    parser.add_argument("--no-write", action="store_true", help="on a GPU: print only")
    parser.add_argument("--compile", action="store_true", help="ours with torch.compile")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per way")
    parser.add_argument(
        "--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader workers"
    )
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.toy and device.type != "cuda":
        sys.exit("gpu_train.py: full size needs a GPU (none here); --toy runs on CPU")
    figures = measure(args.toy, device, args.workers, args.epochs, args.compile)
    print(json.dumps(figures, indent=2))
    if device.type == "cuda" and not args.toy and not args.no_write:
        merge_json(REPO / "reports/gpu.json", figures)
        write_section("gpu_train", section(figures))
    return figures


if __name__ == "__main__":
    main()
