"""No-op `dvc repro` at dataset scale: the index design against the old one.

Goal (the issue): 200k image files must not make DVC slow. A no-op `dvc repro` (nothing
changed, nothing runs) takes <= 2 s on the embedded benchmark (~11k files) and <= 10 s on
a CelebA-sized folder (200k files), while every dep stays honest: a change to any image
still re-runs what reads it. The design: only the index stage lists `${data.root}`; every
stage that reads images lists `models/index/table.csv`, which holds the md5 of each image
(src/ddb/stages/index.py). The old design listed `${data.root}` in each of those 11 stages,
so DVC walked and looked up every file of the dataset 11 times.

Everything runs in a throwaway copy of the working tree under a temp dir (dvc.yaml,
params.yaml, conf/, src/, .dvc/config, .dvcignore, data/sources.json, models/foundation,
models/backbone, reports/discussion.md, reports/backbone.md), a fresh git + DVC repository;
the repository's own dvc.lock, params.yaml, models/ and DVC cache are never touched. The
copy's src/ is first on PYTHONPATH, so its stages run the copied code.

What is real and what is a placeholder. Real: data/prepared (the embedded benchmark, built
by `python -m ddb prepare`), the generated CelebA folder, and the index stage's output
(`python -m ddb index`, which decodes and hashes every image). Every other stage's outs
are small placeholder files (a folder holding the files that other stages name as deps),
so that `dvc commit -f` can record each stage's deps, outs and params as they are without
hours of training. A no-op `dvc repro` costs DVC's own work: collecting the stages, then
for each stage checking its params, walking and looking up each dep and each out in its
state database. That cost is set by the number of files DVC walks, which the dataset
dominates; the real outs of the trained stages are a few MB in a few hundred files, so they
would hardly change it.

Measured, for each dataset (embedded, then the generated CelebA folder):
- the index stage's time, then `dvc commit -f`;
- the no-op `dvc repro`: one warm-up run, then --repeats counted runs (median, min, max
  wall seconds, and the CPU seconds of DVC's process, which a busy machine changes less),
  each asserted to run nothing, and `dvc status` asserted clean;
- the old design on the same copy: dvc.yaml with the index stage removed and
  `models/index/table.csv` replaced by `${data.root}` in the stages that list it (11 stages,
  as before), the same no-op timing; then the new design is restored. Its dvc.lock is the
  new one with the same replacement (the index stage's recorded entry of data.root: what
  `dvc commit -f` records, which at 200k files takes that design ~9 minutes of hashing
  lookups); the clean `dvc status` after the no-op checks that it matches.

Honesty check (after the timing, on the embedded data, or on the generated folder with
--skip-embedded): one image's bytes change; `dvc status` must report the index stage's
data.root dep changed; after `dvc repro --single-item index`, exactly the stages that list
table.csv must report it changed; the image is restored, the index re-run, and `dvc status`
must be clean again.

The generated CelebA folder is the official layout: img_align_celeba/000001.jpg ... (8x8
px JPEGs, --distinct different images written round-robin, so all decode and md5s repeat),
list_attr_celeba.txt (the count, the 40 attribute names, rows of random -1/1 with every
(Blond_Hair, Male) group in every split) and list_eval_partition.txt (CelebA's split
proportions, 162,770 / 19,867 / 19,962 of 202,599). It lies inside the copy at
data/celeba, where conf/dataset/celeba.yaml expects the download, so DVC's collection walk
of the workspace sees it too.

Runs under `nice -n 10` (it sets that itself). Prints a table, with the machine's load
average beside each timing (another test suite may share the machine), and writes a JSON.
Usage:

    python benchmarks/dvc_noop.py --report     # the full run (~12 min on 2 cores); writes
                                               # reports/dvc_noop.json and its section of
                                               # reports/benchmarks.md
    python benchmarks/dvc_noop.py --skip-embedded --images 2000 --repeats 1 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import io
import itertools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling time_pipeline.py
from ddb.paths import COMMITTED_OUTPUTS  # noqa: E402
from time_pipeline import machine, write_section  # noqa: E402

SECTION = "dvc_noop"
TABLE = "models/index/table.csv"
GOALS_S = {"embedded": 2.0, "celeba": 10.0}
COPIED = (  # the working tree the pipeline needs (not its outputs)
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    "conf",
    "src",
    "data/sources.json",
    *map(str, COMMITTED_OUTPUTS),  # the frozen one-offs' outputs, committed to git
    "reports/discussion.md",  # written by hand, a dep of report
)
CELEBA_PARAMS = [
    "data.root=data/celeba",
    "data.format=celeba",
    "data.class_names=[non_blond,blond]",
    "data.place_names=[female,male]",
]
# the official split sizes (list_eval_partition.txt): train, val, test
CELEBA_SPLITS = (162_770, 19_867, 19_962)
ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
UP_TO_DATE = "Data and pipelines are up to date."


class BenchmarkError(RuntimeError):
    pass


# --- running commands in the copy ---------------------------------------------------------


def project_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(root / "src"),  # the copy's code, not the editable install's
    }


def run(args: list[str], root: Path, stdout_only: bool = False) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process tree, stdout + stderr, or stdout only) of
    a command run in the copy; BenchmarkError if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(args, cwd=root, env=project_env(root), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise BenchmarkError(
            f"{' '.join(args)} failed ({out.returncode}):\n"
            f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return wall, cpu, out.stdout if stdout_only else out.stdout + out.stderr


def git(root: Path, *args: str) -> None:
    run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args], root)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def build_copy(root: Path) -> None:
    """The working tree's pipeline files in a fresh git + DVC repository at `root`."""
    root.mkdir(parents=True)
    for name in COPIED:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")  # analytics off, hydra on
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the working tree's pipeline")


# --- the stages as declared ---------------------------------------------------------------


def declared(entries) -> list[str]:
    """Paths of a stage's deps / outs / metrics / plots list (a string or a one-key dict)."""
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries or []]


def stages_of(root: Path) -> dict[str, dict]:
    """dvc.yaml's stages, with each `${section.key}` resolved from params.yaml as DVC does."""
    params = yaml.safe_load((root / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        return str(functools.reduce(lambda node, key: node[key], match[1].split("."), params))

    text = re.sub(r"\$\{([\w.]+)\}", value, (root / "dvc.yaml").read_text())
    return yaml.safe_load(text)["stages"]


def outs_of(stage: dict) -> list[str]:
    return [*declared(stage.get("outs")), *declared(stage.get("metrics"))]


def make_placeholders(root: Path) -> list[str]:
    """A small file (or a folder of the files other stages name as deps) for each declared
    out that does not exist; the index stage's outs are left to the real stage."""
    stages = stages_of(root)
    deps = {dep for stage in stages.values() for dep in declared(stage.get("deps"))}
    made = []
    for name, stage in stages.items():
        if name == "index":
            continue
        for out in outs_of(stage):
            if (root / out).exists():
                continue
            inside = sorted(dep for dep in deps if dep.startswith(out + "/"))
            files = inside or ([f"{out}/placeholder.txt"] if not Path(out).suffix else [out])
            for file in files:
                path = root / file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n" if path.suffix == ".json" else f"placeholder: {file}\n")
            made.append(out)
    missing = sorted(dep for dep in deps if not (root / dep).exists())
    if missing:
        raise BenchmarkError(f"deps neither copied nor an out of a stage: {', '.join(missing)}")
    return made


def stages_listing(root: Path, path: str) -> list[str]:
    return [name for name, s in stages_of(root).items() if path in declared(s.get("deps"))]


@contextlib.contextmanager
def old_design(root: Path):
    """dvc.yaml as before the index stage: no index stage, and `${data.root}` where the
    stages now list table.csv; dvc.lock to match, each table.csv entry replaced by the
    index stage's entry of data.root (what `dvc commit -f` would record: the same path and
    tree hash; the no-op's clean `dvc status` checks it). Both restored on exit."""
    data_root = yaml.safe_load((root / "params.yaml").read_text())["data"]["root"]
    pipeline, lockfile = root / "dvc.yaml", root / "dvc.lock"
    texts = {pipeline: pipeline.read_text(), lockfile: lockfile.read_text()}
    spec, lock = yaml.safe_load(texts[pipeline]), yaml.safe_load(texts[lockfile])
    entry = next(dep for dep in lock["stages"]["index"]["deps"] if dep["path"] == data_root)
    for document, root_entry in ((spec, "${data.root}"), (lock, entry)):
        del document["stages"]["index"]
        for stage in document["stages"].values():
            stage["deps"] = [
                root_entry if (dep if isinstance(dep, str) else dep["path"]) == TABLE else dep
                for dep in stage.get("deps", [])
            ]
    pipeline.write_text(yaml.safe_dump(spec, sort_keys=False))
    lockfile.write_text(yaml.safe_dump(lock, sort_keys=False))
    try:
        yield
    finally:
        for path, text in texts.items():
            path.write_text(text)


# --- measurements -------------------------------------------------------------------------


def dvc_status(root: Path) -> dict:
    return json.loads(run(["dvc", "status", "--json"], root, stdout_only=True)[2] or "{}")


def check_noop(output: str) -> None:
    if "Running stage" in output or UP_TO_DATE not in output:
        raise BenchmarkError(f"`dvc repro` was not a no-op:\n{output[-3000:]}")


def time_noop(root: Path, repeats: int) -> dict:
    """One warm-up `dvc repro`, then `repeats` counted ones (fewer, at least 3, where one
    takes over 20 s), each checked to run nothing; then `dvc status` checked clean."""
    load_before = load1()
    wall, _, output = run(["dvc", "repro"], root)
    check_noop(output)
    count = repeats if wall < 20 else min(repeats, 3)
    walls, cpus = [], []
    for _ in range(count):
        wall, cpu, output = run(["dvc", "repro"], root)
        check_noop(output)
        walls.append(wall)
        cpus.append(cpu)
    status = dvc_status(root)
    if status:
        raise BenchmarkError(f"`dvc status` is not clean after the no-op: {status}")
    return {
        "runs": count,
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "cpu_median_s": round(statistics.median(cpus), 3),
        "walls_s": [round(w, 3) for w in walls],
        "nothing_ran": True,
        "status_clean": True,
        "load1_before": load_before,
        "load1_after": load1(),
    }


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def measure(root: Path, label: str, repeats: int) -> dict:
    """Index for real, placeholders, then the no-op of the new and the old design."""
    data_root = yaml.safe_load((root / "params.yaml").read_text())["data"]["root"]
    result = {"data_root": data_root, "files": count_files(root / data_root)}
    load_before = load1()
    index_s, index_cpu, _ = run([sys.executable, "-m", "ddb", "index"], root)
    result["index"] = {
        "wall_s": round(index_s, 1),
        "cpu_s": round(index_cpu, 1),
        "load1_before": load_before,
        "load1_after": load1(),
    }
    result["placeholders"] = make_placeholders(root)
    result["new"] = {
        "stages_listing_data_root": len(stages_listing(root, data_root)),
        "commit_s": round(run(["dvc", "commit", "-f"], root)[0], 1),
    }
    result["new"]["noop"] = time_noop(root, repeats)
    print(f"{label}: new design no-op {result['new']['noop']['median_s']:.2f} s", flush=True)
    with old_design(root):
        result["old"] = {"stages_listing_data_root": len(stages_listing(root, data_root))}
        result["old"]["noop"] = time_noop(root, repeats)
    print(f"{label}: old design no-op {result['old']['noop']['median_s']:.2f} s", flush=True)
    result["ratio_old_over_new"] = round(
        result["old"]["noop"]["median_s"] / result["new"]["noop"]["median_s"], 2
    )
    result["goal_s"] = GOALS_S[label]
    result["goal_met"] = result["new"]["noop"]["median_s"] <= GOALS_S[label]
    return result


def changed_deps(status: dict) -> dict[str, set[str]]:
    """stage -> the deps `dvc status --json` reports changed."""
    changed = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict) and "changed deps" in entry:
                changed.setdefault(stage, set()).update(entry["changed deps"])
    return changed


def honesty_check(root: Path) -> dict:
    """A changed image invalidates index; once index re-runs, every stage that lists
    table.csv; restoring the image makes the project clean again."""
    data_root = yaml.safe_load((root / "params.yaml").read_text())["data"]["root"]
    with open(root / TABLE, newline="") as handle:
        first = next(csv.DictReader(handle))["img_filename"]  # the first image it lists
    image = root / data_root / first
    original = image.read_bytes()
    with Image.open(image) as opened:
        fmt, changed = opened.format, opened.convert("RGB")
    pixel = changed.getpixel((0, 0))
    changed.putpixel((0, 0), tuple(255 - c for c in pixel))
    buffer = io.BytesIO()
    changed.save(buffer, fmt)
    if buffer.getvalue() == original:
        raise BenchmarkError(f"{image}: the changed image has the same bytes")
    start = time.perf_counter()
    expected = set(stages_listing(root, TABLE))
    try:
        image.write_bytes(buffer.getvalue())
        after_change = changed_deps(dvc_status(root))
        run(["dvc", "repro", "--single-item", "index"], root)
        after_index = changed_deps(dvc_status(root))
    finally:
        image.write_bytes(original)
    run(["dvc", "repro", "--single-item", "index"], root)
    restored = dvc_status(root)
    invalidated = sorted(s for s, deps in after_index.items() if TABLE in deps)
    result = {
        "image": str(image.relative_to(root)),
        "index_invalidated": data_root in after_change.get("index", set()),
        "stages_invalidated_after_index": invalidated,
        "stages_listing_table": sorted(expected),
        "clean_after_restore": restored == {},
        "seconds": round(time.perf_counter() - start, 1),
    }
    result["passed"] = (
        result["index_invalidated"]
        and set(invalidated) == expected
        and result["clean_after_restore"]
    )
    if not result["passed"]:
        raise BenchmarkError(
            f"honesty check failed: {result}\nafter the change: {after_change}\n"
            f"after index: {after_index}\nafter restoring: {restored}"
        )
    return result


# --- the generated CelebA folder ----------------------------------------------------------


def write_celeba(folder: Path, n_images: int, distinct: int = 200, seed: int = 0) -> None:
    """A CelebA download in the official layout, with `n_images` 8x8 px JPEGs."""
    rng = np.random.default_rng(seed)
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    blobs = []
    for _ in range(distinct):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "JPEG")
        blobs.append(buffer.getvalue())
    names = [f"{i:06d}.jpg" for i in range(1, n_images + 1)]
    for i, name in enumerate(names):
        with open(images / name, "wb") as handle:
            handle.write(blobs[i % distinct])
    total = sum(CELEBA_SPLITS)
    n_train = round(n_images * CELEBA_SPLITS[0] / total)
    n_val = round(n_images * CELEBA_SPLITS[1] / total)
    split = np.repeat([0, 1, 2], [n_train, n_val, n_images - n_train - n_val])
    values = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_images, len(ATTRIBUTES)))
    blond, male = ATTRIBUTES.index("Blond_Hair"), ATTRIBUTES.index("Male")
    for code in range(3):  # every (Blond_Hair, Male) group in every split
        rows = np.flatnonzero(split == code)[:4]
        for row, (b, m) in zip(rows, itertools.product((-1, 1), (-1, 1))):
            values[row, blond], values[row, male] = b, m
    cells = np.where(values == 1, " 1", "-1")
    rows = (f"{name} {' '.join(row)}\n" for name, row in zip(names, cells.tolist()))
    with open(folder / "list_attr_celeba.txt", "w") as handle:
        handle.write(f"{n_images}\n{' '.join(ATTRIBUTES)}\n")
        handle.writelines(rows)
    with open(folder / "list_eval_partition.txt", "w") as handle:
        handle.writelines(f"{name} {code}\n" for name, code in zip(names, split.tolist()))


# --- report -------------------------------------------------------------------------------


def dvc_version() -> str:
    return subprocess.run(
        ["dvc", "--version"], env=project_env(REPO), capture_output=True, text=True
    ).stdout.strip()


def busy(load: float, cores: int) -> str:
    return " (busy)" if load >= 0.75 * cores else ""


def table_lines(results: dict) -> list[str]:
    cores = os.cpu_count() or 1
    lines = [
        "| dataset | files in data.root | design | stages listing data.root | "
        "no-op `dvc repro` median s (min-max) | CPU s | load (1 min) | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, result in results["datasets"].items():
        for design in ("new", "old"):
            noop = result[design]["noop"]
            load = max(noop["load1_before"], noop["load1_after"])
            goal = f"<= {result['goal_s']:g} s" if design == "new" else ""
            if design == "new":
                goal += " met" if result["goal_met"] else " NOT met"
            name = "index stage" if design == "new" else "old (no index)"
            lines.append(
                f"| {label} | {result['files']:,} | {name} | "
                f"{result[design]['stages_listing_data_root']} | "
                f"**{noop['median_s']:.2f}** ({noop['min_s']:.2f}-{noop['max_s']:.2f}, "
                f"{noop['runs']} runs) | {noop['cpu_median_s']:.2f} | {load:.2f}{busy(load, cores)}"
                f" | {goal} |"
            )
    return lines


def report_body(results: dict, args: argparse.Namespace) -> str:
    cores = os.cpu_count() or 1
    datasets = results["datasets"]
    command = "python benchmarks/dvc_noop.py --report"
    if args.images != 200_000 or args.skip_embedded:
        command += f" --images {args.images}" + (" --skip-embedded" * args.skip_embedded)
    lines = [
        "## DVC at dataset scale (`benchmarks/dvc_noop.py`)",
        "",
        "Goal (issue: 200k image files must not make DVC slow): a no-op `dvc repro` <= 2 s on "
        "the embedded benchmark and <= 10 s on a 200k-file CelebA folder, every dep honest. "
        "Only the index stage lists `${data.root}`; the stages that read images list "
        "`models/index/table.csv`, which holds each image's md5.",
        "",
        f"Measured {results['date']} on {results['machine']}, {results['dvc']}, under "
        f"`nice -n 10`, with `{command}`. In a scratch copy of the working tree: "
        "data/prepared and the index are real (`python -m ddb prepare`, `python -m ddb "
        "index`), the other stages' outs are small placeholder files recorded by "
        "`dvc commit -f` (a no-op costs DVC's walk of every dep and out, which the dataset "
        "dominates; the real outs would hardly change it). Each figure: one warm-up, then "
        "counted runs of `dvc repro`, each checked to run nothing (`dvc status` clean). "
        "Old: the same copy with dvc.yaml as before the index stage (`${data.root}` in each "
        "stage that now lists table.csv, no index stage). The CelebA folder is generated "
        "(official layout, 8x8 px JPEGs, CelebA's split proportions) at data/celeba; "
        f"params: `python -m ddb params {' '.join(CELEBA_PARAMS)}`. CPU s: user + system "
        f"seconds of DVC's process. Load: the 1-minute load average on this {cores}-core "
        "machine around the runs ('busy' at >= 0.75 x cores).",
        "",
        *table_lines(results),
        "",
    ]
    for label, result in datasets.items():
        index = result["index"]
        lines.append(
            f"- {label}: old / new no-op = **{result['ratio_old_over_new']:.1f}x**; the index "
            f"stage took {index['wall_s']:.1f} s ({index['cpu_s']:.1f} CPU s, load "
            f"{max(index['load1_before'], index['load1_after']):.2f}) to read, decode and "
            f"hash {result['files']:,} files; `dvc commit -f`: {result['new']['commit_s']:.1f} s."
        )
    honesty = results["honesty"]
    lines.append(
        f"- Honesty check ({honesty['image']} changed): `dvc status` reports the index stage's "
        f"data.root changed; after `dvc repro --single-item index` the stages that report "
        f"table.csv changed are exactly the {len(honesty['stages_listing_table'])} that list "
        f"it ({', '.join(honesty['stages_invalidated_after_index'])}); with the image "
        f"restored and the index re-run, `dvc status` is clean: "
        f"**{'passed' if honesty['passed'] else 'FAILED'}**."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200_000, help="CelebA folder size")
    parser.add_argument("--distinct", type=int, default=200, help="different JPEGs in it")
    parser.add_argument("--repeats", type=int, default=5, help="counted no-op runs (>= 1)")
    parser.add_argument(
        "--skip-embedded", action="store_true", help="only the generated CelebA folder"
    )
    parser.add_argument("--json", type=Path, help="write the results there")
    parser.add_argument(
        "--report",
        action="store_true",
        help="write reports/dvc_noop.json (unless --json) and this script's section of "
        "reports/benchmarks.md",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args(argv)
    os.nice(10)
    started = time.perf_counter()
    results: dict = {
        "date": str(datetime.date.today()),
        "machine": machine().replace(", no GPU used", ""),
        "dvc": f"DVC {dvc_version()}",
        "load1_start": load1(),
        "datasets": {},
    }
    tmp = tempfile.mkdtemp(prefix="ddb-dvc-noop-")
    root = Path(tmp) / "project"
    try:
        build_copy(root)
        if not args.skip_embedded:
            prepare_s = run([sys.executable, "-m", "ddb", "prepare"], root)[0]
            results["prepare_s"] = round(prepare_s, 1)
            results["datasets"]["embedded"] = measure(root, "embedded", args.repeats)
            results["honesty"] = honesty_check(root)
        start = time.perf_counter()
        write_celeba(root / "data/celeba", args.images, args.distinct)
        results["generate_celeba_s"] = round(time.perf_counter() - start, 1)
        run([sys.executable, "-m", "ddb", "params", *CELEBA_PARAMS], root)
        results["datasets"]["celeba"] = measure(root, "celeba", args.repeats)
        if args.skip_embedded:
            results["honesty"] = honesty_check(root)
    except BenchmarkError as err:
        print(f"error: {err}\n(scratch copy kept at {root})", file=sys.stderr)
        return 1
    if args.keep:
        print(f"scratch copy kept at {root}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    results["load1_end"] = load1()
    results["total_s"] = round(time.perf_counter() - started, 1)
    body = report_body(results, args)
    print(body)
    json_path = args.json or (REPO / "reports/dvc_noop.json" if args.report else None)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.report:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
