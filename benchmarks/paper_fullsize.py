"""Every stage of the waterbirds paper profile once, at the paper's model sizes, on CPU.

The checkpoints are tests/paper_world.py's stand-ins with `size="full"`: the real configs
(SD2's 866M-parameter UNet in its 9- and 4-channel forms, its VAE and OpenCLIP text encoder,
GroundingDINO-base, SAM 2.1 small, ResNet-50) with random weights, in the caches a user's
downloads would fill, and a Waterbirds-format folder of drawn JPEGs. The profile is composed
as a user composes it (`ddb params dataset=waterbirds`), with only counts cut (COUNTS): every
model, image size, batch size and threshold stays the profile's. Each stage's command from
dvc.yaml runs in a scratch project and is measured by benchmarks/memory.py's poller: wall
seconds and the peak of the process tree's summed PSS (proportional set size: shared pages
counted once; the figure that does not multiply forked DataLoader workers' shared pages).
Seconds per unit divide the stage's whole wall time, model loading included, by the work it
did (images, micro-steps, samples), so with these tiny counts they are upper bounds.

`--size tiny` runs the same on tests/paper_world.py's tiny stand-ins (a minute or two: the
test's mode); `--size full` (the default) takes some 20-30 minutes on 2 cores and about 6 GB
of disk for the world, and writes its block of reports/benchmarks.md. Usage:

    python benchmarks/paper_fullsize.py                  # full size, writes the report
    python benchmarks/paper_fullsize.py --size tiny      # toy size, prints the table
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling memory.py
sys.path.insert(0, str(REPO))  # tests.paper_world, the stand-ins' builder
from tests.paper_world import (  # noqa: E402
    DATA_ROOT_KEY,
    PROFILE_STAGES,
    WATERBIRDS_DIR,
    paper_world,
    write_concept_bank,
)

from memory import MIB, Measurement, machine, measure, replace_block, venv_env  # noqa: E402

SECTION = "paper_fullsize"
WORLDS = {"full": "the paper's configs, SD2's UNets 866M parameters", "tiny": "shrunk configs"}
# train, val, test images per group (2 y + place): 24 train images, 8 val, 8 test (DISC fits
# 3 Gaussians per class on its train images: fewer than about 12 a class collapse them)
PER_GROUP = {0: (10, 2, 2), 1: (2, 2, 2), 2: (2, 2, 2), 3: (10, 2, 2)}
# only counts are cut; models, image sizes, batch sizes, thresholds stay the profile's
COUNTS = [
    "classifier.epochs=1",
    "classifier.device=cpu",
    "classifier.num_workers=2",  # the profile's 8 DataLoader workers, fewer on 2 cores
    "baselines.jtt.identification_epochs=1",
    "baselines.jtt.recipe.epochs=1",
    "baselines.jtt.upweight=1",  # its epoch is N + upweight x errors draws: 100 x 6 errors
    "baselines.group_dro.recipe.epochs=1",
    "baselines.lisa.recipe.epochs=1",
    "dfr.tune_split=by_group",  # a random half of 2 val images per group misses groups
    "dac.epochs=1",
    "disc.recipe.epochs=1",
    "disc.n_concept_imgs=5",  # the stand-in bank's 6 images per concept
    "disc.concept_categories=color",  # the stand-in bank holds DISC's colour category only
    "select.sources_per_class=2",  # 2 sources per class: 4 generated images
    "invert.num_images=1",  # 1 inversion image per class
    "invert.steps=1",
    "invert.grad_accum=1",  # one micro-step (batch 1) per class; the profile's step is 4
    "invert.device=cpu",
    "generate.steps=2",
    "retrain.epochs=1",
    "evaluate.bootstrap=100",
]
# --size tiny (the test's mode) also shrinks the classifiers' input: ResNet-50 is full size
# in both worlds, and at 224 px its training alone would take minutes
TINY_COUNTS = ["data.image_size=32"]


def make_project(root: Path, world: dict[str, str], counts: list[str]) -> None:
    """A scratch project where the profile's stages run: the code, conf/, the committed
    outputs the stages list as deps, the data folder at the profile's data.root, and
    params.yaml composed from conf/ with `counts`."""
    for name in ("dvc.yaml", ".dvcignore", "src", "conf"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    from ddb.paths import COMMITTED_OUTPUTS

    for name in (*COMMITTED_OUTPUTS, "reports/discussion.md", "data/sources.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, root / name)
    shutil.copytree(world[DATA_ROOT_KEY], root / "data" / WATERBIRDS_DIR)
    write_concept_bank(root / "data/synthetic_concepts")  # where the profile reads DISC's bank
    compose = [sys.executable, "-m", "ddb", "params", "dataset=waterbirds", *counts]
    result = measure(compose, root, root / "params.log", venv_env())
    if result.returncode != 0:
        sys.exit(f"composing params failed:\n{(root / 'params.log').read_text()[-3000:]}")


def stage_commands() -> dict[str, list[str]]:
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {stage: declared[stage]["cmd"].split() for stage in PROFILE_STAGES}


def run_stages(root: Path, world: dict[str, str]) -> dict[str, Measurement]:
    """Each stage measured in turn; stops with the log's tail at the first failure."""
    env = {**venv_env(), **{k: v for k, v in world.items() if k != DATA_ROOT_KEY}}
    (root / "logs").mkdir()
    results = {}
    for stage, command in stage_commands().items():
        log_path = root / "logs" / f"{stage}.log"
        result = measure(command, root, log_path, env)
        if result.returncode != 0:
            tail = log_path.read_text()[-3000:]
            sys.exit(f"stage {stage} failed (exit {result.returncode}):\n{tail}")
        print(f"{stage}: {result.pss_bytes / MIB:.0f} MiB PSS, {result.seconds:.0f} s", flush=True)
        results[stage] = result
    return results


def work_units(root: Path) -> dict[str, tuple[float, str]]:
    """Per stage, how much work it did and in what unit, read from its outputs and params."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    metadata = pd.read_csv(root / params["data"]["root"] / "metadata.csv")
    train = int((metadata.split == 0).sum())
    selected = len(pd.read_csv(root / "models/select/selected.csv"))
    images = len(pd.read_csv(root / "models/generate/manifest.csv"))
    samples = len(pd.read_csv(root / "models/score/scores.csv"))
    invert, generate = params["invert"], params["generate"]
    classes = len(params["data"]["class_names"])
    micro_steps = classes * invert["steps"] * invert["grad_accum"]
    return {
        "index": (len(metadata), "image"),
        "erm": (train * params["classifier"]["epochs"], "train image"),
        "segment": (selected, "image"),
        "invert": (micro_steps, f"micro-step (batch {invert['batch_size']})"),
        "generate": (images * generate["steps"], "image x denoising step"),
        "score": (samples, f"sample ({params['score']['ig_steps']} IG steps)"),
    }


# a tqdm rate as it prints one: "13.24s/step", "1.52it/s", "2.10image/s"
RATE = re.compile(r"(\d+(?:\.\d+)?)(s/[a-z]+|[a-z]+/s)\b")


def logged_rate(log_path: Path) -> str:
    """The last progress-bar rate in a stage's log ('' if none): the work itself, without
    model loading or the stage's other passes (invert's eval loss, say)."""
    found = RATE.findall(log_path.read_text(errors="replace")) if log_path.is_file() else []
    return f"{found[-1][0]} {found[-1][1]}" if found else ""


def table(
    results: dict[str, Measurement],
    units: dict[str, tuple[float, str]],
    rates: dict[str, str] | None = None,
) -> list[str]:
    rates = rates or {}
    lines = [
        "| stage | wall s | work | s per unit | last bar rate | peak PSS MiB | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, result in results.items():
        work, per = "", ""
        if stage in units:
            count, unit = units[stage]
            work, per = f"{count:g} x {unit}", f"{result.seconds / count:.1f}"
        lines.append(
            f"| {stage} | {result.seconds:.0f} | {work} | {per} | {rates.get(stage, '')} | "
            f"{result.pss_bytes / MIB:.0f} | {result.peak_bytes / MIB:.0f} |"
        )
    peak = max(results.values(), key=lambda r: r.pss_bytes)
    stage = next(s for s, r in results.items() if r is peak)
    total = sum(r.seconds for r in results.values())
    lines.append(f"| **all** | {total:.0f} | | | | **{peak.pss_bytes / MIB:.0f}** ({stage}) | |")
    return lines


def report_block(
    size: str, counts: list[str], results, units, build_seconds: float, rates=None, notes=()
) -> str:
    cuts = ", ".join(f"`{c}`" for c in counts)
    lines = [
        "## The paper's models at full size on CPU (`benchmarks/paper_fullsize.py`)",
        "",
        f"Measured {datetime.date.today()} on {machine()}, under `nice -n 5` on a "
        "machine shared with other work (seconds are wall time, noisy). Models: "
        f'tests/paper_world.py\'s `size="{size}"` stand-ins ({WORLDS[size]}, random '
        "weights) of SD2 inpainting and base (UNets, VAE, OpenCLIP ViT-H text encoder), "
        "GroundingDINO-base, SAM 2.1 small, and ResNet-50 (full size in both); built in "
        f"{build_seconds:.0f} s. Profile: `ddb params dataset=waterbirds` with {cuts}; "
        f"data: {sum(sum(c) for c in PER_GROUP.values())} drawn JPEGs of CUB's sizes. Every "
        "model, image size, batch size and threshold is the profile's. Peak PSS: the "
        "process tree's summed proportional set size (shared pages once), polled every 0.1 s; "
        "peak RSS as in the memory section. s per unit: the stage's whole wall time, model "
        "loading included, over its work (an upper bound at these counts); last bar rate: "
        "the last rate the stage's progress bar printed (its loop alone). 1 MiB = 2^20 "
        "bytes.",
        "",
        *table(results, units, rates),
        "",
        "At these counts each unit also carries its image's fixed costs: generate's VAE "
        "encode and decode at 512 px (its bar rate is for the whole shard), invert's "
        "model loading and the eval loss before and after (its bar rate is one micro-step).",
    ]
    if notes:
        lines += ["", "The stages logged:", "", *(f"- `{note}`" for note in notes)]
    return "\n".join(lines)


def memory_notes(root: Path) -> list[str]:
    """What the stages logged about adapting to memory (generate's CPU batch, score's
    integrated-gradients passes), without the time stamps."""
    notes = []
    for stage in PROFILE_STAGES:
        log_path = root / "logs" / f"{stage}.log"
        if log_path.is_file():
            for line in log_path.read_text(errors="replace").splitlines():
                if "lowered to" in line or "passes of up to" in line:
                    notes.append(line.split(": ", 1)[-1].strip())
    return notes


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder, removed")
    parser.add_argument(
        "--report", type=Path, help="the benchmarks file to write (default: full size only, "
        "reports/benchmarks.md)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    report = args.report or (REPO / "reports/benchmarks.md" if args.size == "full" else None)
    with tempfile.TemporaryDirectory(prefix="ddb-fullsize-") as tmp:
        work = args.workdir or Path(tmp)
        start = time.perf_counter()
        world = paper_world(work / "world", PER_GROUP, size=args.size)
        build_seconds = time.perf_counter() - start
        print(f"world ({args.size}) built in {build_seconds:.0f} s", flush=True)
        project = work / "project"
        project.mkdir(parents=True)
        counts = COUNTS + (TINY_COUNTS if args.size == "tiny" else [])
        make_project(project, world, counts)
        results = run_stages(project, world)
        measured = {stage: dataclasses.asdict(m) for stage, m in results.items()}
        (work / "measurements.json").write_text(json.dumps(measured, indent=1))
        rates = {stage: logged_rate(project / "logs" / f"{stage}.log") for stage in results}
        units = work_units(project)
        notes = memory_notes(project)
        body = report_block(args.size, counts, results, units, build_seconds, rates, notes)
    if report is not None:
        text = report.read_text() if report.is_file() else "# Benchmarks\n"
        report.write_text(replace_block(text, SECTION, body))
    print(body)
    return body


if __name__ == "__main__":
    main()
