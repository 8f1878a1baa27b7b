"""Streaming check: a CelebA-sized train split (160k images) needs no more memory than 1k.

For each N in --sizes (default 1,000 and 160,000) it writes a Waterbirds-format folder under
/tmp with N train images (plus VAL_TEST_PER_GROUP val and test images per group) of
IMAGE_SIZE-px JPEGs in nested folders, then runs the `erm` stage on it in a fresh process:
the stage's own code (ddb.stages.erm.run: read_metadata, check_images on every file,
ImageTable, one epoch through training.py's DataLoader, val selection, and the per-sample
outputs over the whole train split that erm writes for select), with one change: the
classifier factory builds TinyNet, a 2-layer conv net, instead of a ResNet, so 160k
images take minutes rather than an hour of CPU. Everything else as params.yaml commits it
(batch 64, Adam, augmentation). Memory, not accuracy, is the point: the images are
near-duplicates. Peak RSS is measured as memory.py measures a stage; each folder is deleted
after its run.

Writes the `memory/streaming` block of the memory section of reports/benchmarks.md. Usage:

    nice -n 10 python benchmarks/streaming_memory.py          # both sizes
    python benchmarks/streaming_memory.py --sizes 1000 5000   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling memory.py
from memory import MIB, REPO, machine, measure, venv_env, write_block  # noqa: E402

IMAGE_SIZE = 16  # data.image_size of the run (the smallest params.yaml allows)
VAL_TEST_PER_GROUP = 50  # val and test images per group (fixed, whatever N)
VARIANTS = 8  # distinct encoded images per group; files repeat them
TRAIN_CORRELATION = 0.95  # share of each class's train images on its own place
DEFAULT_SIZES = (1_000, 160_000)


def encoded_images(size: int = IMAGE_SIZE, variants: int = VARIANTS) -> dict[int, list[bytes]]:
    """Group -> JPEG bytes of `variants` images: a class-coloured square on a
    place-coloured, noisy background (group = 2 y + place)."""
    rng = np.random.default_rng(0)
    images = {}
    for group in range(4):
        y, place = divmod(group, 2)
        encoded = []
        for _ in range(variants):
            pixels = np.zeros((size, size, 3), np.uint8)
            pixels[...] = (40, 160, 40) if place == 0 else (40, 40, 200)
            pixels += rng.integers(0, 30, pixels.shape, dtype=np.uint8)
            lo, hi = size // 4, 3 * size // 4
            pixels[lo:hi, lo:hi] = (250, 250, 0) if y == 1 else (120, 60, 0)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
            encoded.append(buffer.getvalue())
        images[group] = encoded
    return images


def plan_rows(n_train: int) -> pd.DataFrame:
    """metadata.csv of the folder: n_train train rows, then balanced val and test rows."""
    k = np.arange(n_train)
    y = k % 2
    minority = (k // 2) % round(1 / (1 - TRAIN_CORRELATION)) == 0  # 1 in 20 off its place
    place = np.where(minority, 1 - y, y)
    split = np.zeros(n_train, int)
    eval_groups = np.repeat(np.arange(4), VAL_TEST_PER_GROUP)
    for code in (1, 2):
        y = np.concatenate([y, eval_groups // 2])
        place = np.concatenate([place, eval_groups % 2])
        split = np.concatenate([split, np.full(len(eval_groups), code)])
    img_id = np.arange(len(split))
    places = np.array(["/b/bamboo_forest/00000001.jpg", "/o/ocean/00002178.jpg"])
    return pd.DataFrame(
        {
            "img_id": img_id + 1,
            "img_filename": [f"{i // 1000:03d}.batch/{i:06d}.jpg" for i in img_id],
            "y": y,
            "split": split,
            "place": place,
            "place_filename": places[place],
        }
    )


def write_dataset(root: Path, n_train: int) -> pd.DataFrame:
    """A Waterbirds-format folder at `root`; each file is one of its group's encoded images."""
    table = plan_rows(n_train)
    images = encoded_images()
    for folder in {name.split("/", 1)[0] for name in table.img_filename}:
        (root / folder).mkdir(parents=True)
    groups = 2 * table.y.to_numpy() + table.place.to_numpy()
    for i, (name, group) in enumerate(zip(table.img_filename, groups)):
        (root / name).write_bytes(images[group][i % VARIANTS])
    table.to_csv(root / "metadata.csv", index=False)
    return table


def worker_params(root: Path) -> str:
    """params.yaml for the measured erm run: as committed, but on `root`, at IMAGE_SIZE px,
    one epoch, on the CPU."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(root=str(root), image_size=IMAGE_SIZE)
    params["classifier"].update(epochs=1, device="cpu")
    return yaml.safe_dump(params, sort_keys=False)


class TinyNet(torch.nn.Module):
    """Two conv layers and a linear head (`fc`, as the ResNets name theirs)."""

    def __init__(self, num_classes: int):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def run_worker() -> None:
    """The erm stage on ./params.yaml, its classifier factory building TinyNet."""
    import logging

    import ddb.training
    from ddb.config import load_config
    from ddb.stages import erm

    logging.basicConfig(level=logging.INFO)
    # on a shared 2-core machine two OpenMP threads spin against the other jobs (a 2-layer
    # net's batch: 5 ms on one thread, 40-150 ms on two); memory does not depend on it
    torch.set_num_threads(1)
    ddb.training.build_classifier = lambda arch, num_classes, pretrained: TinyNet(num_classes)
    logging.getLogger(__name__).info("erm with TinyNet in place of the ResNet, 1 thread")
    erm.run(load_config("params.yaml"))


def metadata_bytes(root: Path) -> int:
    """Memory of the validated metadata table that every stage holds (pandas, deep)."""
    from ddb.data.dataset import WATERBIRDS_GROUPS, read_metadata

    return int(read_metadata(root, WATERBIRDS_GROUPS).memory_usage(deep=True).sum())


def measure_size(n_train: int, scratch: Path) -> dict:
    """Write the folder of n_train images, measure `python -m ddb erm` on it, delete it."""
    data = scratch / f"data_{n_train}"
    start = time.perf_counter()
    table = write_dataset(data, n_train)
    write_seconds = time.perf_counter() - start
    disk = subprocess.run(["du", "-sm", str(data)], capture_output=True, text=True).stdout
    project = scratch / f"project_{n_train}"
    project.mkdir()
    (project / "params.yaml").write_text(worker_params(data))
    worker = [sys.executable, str(HERE / "streaming_memory.py"), "--worker"]
    result = measure(worker, project, project / "erm.log", venv_env())
    if result.returncode != 0:
        tail = (project / "erm.log").read_text()[-3000:]
        sys.exit(f"erm on {n_train} images failed (exit {result.returncode}):\n{tail}")
    outputs = pd.read_csv(project / "models/erm/train_outputs.csv")
    if len(outputs) != n_train:  # the stage must have streamed every train image
        sys.exit(f"erm wrote {len(outputs)} per-sample outputs for {n_train} train images")
    table_bytes = metadata_bytes(data)
    shutil.rmtree(data)
    shutil.rmtree(project)
    return {
        "train": n_train,
        "files": len(table),
        "disk_mib": int(disk.split()[0]) if disk else None,
        "write_seconds": write_seconds,
        "peak_bytes": result.peak_bytes,
        "anon_bytes": result.anon_bytes,
        "seconds": result.seconds,
        "table_bytes": table_bytes,
    }


def streaming_block(rows: list[dict]) -> str:
    lines = [
        "### Streaming: train split of 1k vs 160k images (`benchmarks/streaming_memory.py`)",
        "",
        f"Measured {datetime.date.today()} on {machine()}, under `nice -n 10` on a shared "
        "machine. Each run is the `erm` stage's code (`ddb.stages.erm.run`, in a fresh "
        f"process) on a generated Waterbirds-format folder of {IMAGE_SIZE}-px JPEGs in "
        "nested folders: the project's reader (read_metadata, check_images on every file, "
        "ImageTable), one epoch at batch 64 through training.py's DataLoader, val selection "
        f"({VAL_TEST_PER_GROUP} val and test images per group) and per-sample outputs over "
        "the whole train split. The one change: the classifier is a 2-layer conv net "
        "(TinyNet) instead of resnet18, on one thread, for speed; neither changes with the "
        "number of images. Seconds include everything but writing the folder.",
        "",
        "| train images | files | on disk MiB | peak RSS MiB | peak anonymous MiB | seconds "
        "| metadata table MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['train']:,} | {row['files']:,} | {row['disk_mib']} | "
            f"{row['peak_bytes'] / MIB:.0f} | {row['anon_bytes'] / MIB:.0f} | "
            f"{row['seconds']:.0f} | {row['table_bytes'] / MIB:.1f} |"
        )
    small, large = rows[0], rows[-1]
    more = large["train"] - small["train"]
    growth = (large["peak_bytes"] - small["peak_bytes"]) / MIB
    anon_growth = large["anon_bytes"] - small["anon_bytes"]
    table_growth = (large["table_bytes"] - small["table_bytes"]) / MIB
    lines += [
        "",
        f"Peak RSS at {large['train']:,} / at {small['train']:,} train images: "
        f"**{large['peak_bytes'] / small['peak_bytes']:.3f}** ({growth:+.0f} MiB for "
        f"{large['train'] / small['train']:.0f}x the images; goal: within ~10-20%); peak "
        f"anonymous memory: {large['anon_bytes'] / small['anon_bytes']:.3f} "
        f"({anon_growth / MIB:+.0f} MiB, {anon_growth / max(more, 1):.0f} bytes per extra "
        "image). Anonymous memory is the process's own (heap, tensors, tables), without the "
        "file-backed pages of torch's libraries, whose count in RSS varies by up to ~100 MiB "
        f"from run to run. The metadata table alone grows by {table_growth:.1f} MiB; the "
        "rest of the growth is the other per-row data (the train split's copy of the table, "
        "ImageTable's file-name list, the sampler's index list, the per-sample outputs), "
        "never images.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="train images"
    )
    parser.add_argument("--dir", default="/tmp", help="where the folders are written")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # the measured process, started by measure_size
        run_worker()
        return
    if min(args.sizes) < 20:
        sys.exit("--sizes: each size needs at least 20 train images (every group in train)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddb-streaming-", dir=args.dir) as tmp:
        for n_train in sorted(args.sizes):
            rows.append(measure_size(n_train, Path(tmp)))
            row = rows[-1]
            print(
                f"{n_train} train images: peak {row['peak_bytes'] / MIB:.0f} MiB, "
                f"{row['seconds']:.0f} s (folder written in {row['write_seconds']:.0f} s)",
                flush=True,
            )
    body = streaming_block(rows)
    write_block("streaming", body)
    print(body)


if __name__ == "__main__":
    main()
