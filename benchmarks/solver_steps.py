"""Choose generate's sampler and step count on validation images, never on test (issue 26).

Each val image of the embedded benchmark (data/prepared, balanced over its groups) has its
bird's ground-truth outline (dilated by foundation_eval.dilate) repainted as the *other*
class, exactly as `generate` repaints a source: generate's prompt with the learned token of
the target class (models/invert, so run `dvc repro invert` first), generate.guidance, one
seed per image, pasted back outside the mask. Every sampler of the grid repaints the same
images with the same seeds. The judge (models/judge, the frozen independent classifier that
foundation_report uses) must recognise the target class; the figure of merit is that
recognition rate, and the paired difference to the reference (the checkpoint's own DDIM at
generate's former 25 steps) with a bootstrap interval over images.

Writes its section of reports/benchmarks.md (with --write). Usage:

    python benchmarks/solver_steps.py                       # 200 val images, the grid below
    python benchmarks/solver_steps.py --images 40 --grid checkpoint:25 dpmsolver++:10
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ddb import paths
from ddb.config import load_config
from ddb.data.corpus import dilate
from ddb.data.dataset import WATERBIRDS_GROUPS, read_metadata, split_table
from ddb.models.diffusion import use_scheduler
from ddb.models.inversion import prompt_token
from ddb.stages.foundation_report import balanced_sample, classify, load_judge
from ddb.stages.generate import generate_batch, load_pipeline
from ddb.training import resolve_device

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling time_pipeline.py
from time_pipeline import REPO, machine, write_section  # noqa: E402

REFERENCE = "checkpoint:25"
GRID = [REFERENCE, "dpmsolver++:8", "dpmsolver++:10", "dpmsolver++:12", "dpmsolver++:15",
        "dpmsolver++:20"]  # fmt: skip


def paired_interval(correct, reference, seed: int = 0, draws: int = 2000, level: float = 0.95):
    """Bootstrap interval (over images) of mean(correct) - mean(reference), paired."""
    rng = np.random.default_rng(seed)
    diff = correct.astype(float) - reference.astype(float)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(diff.mean()), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200, help="val images (balanced)")
    parser.add_argument("--grid", nargs="+", default=GRID, help="scheduler:steps, reference first")
    parser.add_argument("--write", action="store_true", help="write reports/benchmarks.md")
    args = parser.parse_args()
    config = load_config(REPO / "params.yaml")
    config = dataclasses.replace(  # the grid sets the sampler; load the checkpoint's
        config, generate=dataclasses.replace(config.generate, scheduler="checkpoint")
    )
    judge, judge_info = load_judge()
    groups = WATERBIRDS_GROUPS
    val = balanced_sample(split_table(read_metadata(paths.PREPARED, groups), "val"),
                          args.images, config.foundation_eval.seed)  # fmt: skip
    images = [np.asarray(Image.open(paths.PREPARED / f).convert("RGB")) for f in val.img_filename]
    masks = [
        dilate(np.asarray(Image.open(paths.PREPARED / f)) > 0, config.foundation_eval.dilate)
        for f in val.mask_filename
    ]
    target = 1 - val.y.to_numpy()  # the other class, as generate repaints a source
    prompts = [
        config.generate.prompt.format(
            token=prompt_token(groups.class_names[t], config.invert.num_images > 0),
            class_name=config.invert.class_name,
        )
        for t in target
    ]
    seeds = [1000 + k for k in range(len(images))]
    pipe = load_pipeline(config, groups.class_names, resolve_device("auto"))
    checkpoint_scheduler = pipe.scheduler
    rows, reference = [], None
    for entry in args.grid:
        name, steps = entry.split(":")
        pipe.scheduler = checkpoint_scheduler
        use_scheduler(pipe, name)
        cfg = dataclasses.replace(config.generate, steps=int(steps))
        start = time.perf_counter()
        repaints = []
        for i in range(0, len(images), cfg.batch_size):
            part = slice(i, i + cfg.batch_size)
            repaints += generate_batch(
                pipe, images[part], masks[part], prompts[part], seeds[part], cfg
            )
        seconds = (time.perf_counter() - start) / len(images)
        correct = classify(judge, np.stack(repaints), judge_info["image_size"]) == target
        reference = correct if reference is None else reference
        diff, low, high = paired_interval(correct, reference)
        rows.append((entry, correct.mean(), diff, low, high, seconds))
        print(f"{entry}: recognised {correct.mean():.3f}, vs {args.grid[0]} {diff:+.3f} "
              f"[{low:+.3f}, {high:+.3f}], {seconds:.3f} s/image", flush=True)  # fmt: skip
    lines = [
        "## Sampler and steps for generate (`benchmarks/solver_steps.py`)",
        "",
        f"Measured {datetime.date.today()} on {machine()}: {len(images)} val images of "
        "data/prepared (balanced over groups), each bird outline repainted as the other class "
        f"as generate does (learned tokens, guidance {config.generate.guidance}, a seed per "
        "image, the same for every sampler); the judge (models/judge) must recognise the "
        "target class. Difference: paired, against the first row, 95% bootstrap interval "
        "over images. Never measured on test.",
        "",
        "| scheduler:steps | recognised | vs first row | 95% interval | s / image |",
        "|---|---|---|---|---|",
        *(
            f"| {entry} | {rate:.3f} | {diff:+.3f} | [{low:+.3f}, {high:+.3f}] | {sec:.3f} |"
            for entry, rate, diff, low, high, sec in rows
        ),
    ]
    body = "\n".join(lines)
    if args.write:
        write_section("solver_steps", body)
    print(body)


if __name__ == "__main__":
    main()
