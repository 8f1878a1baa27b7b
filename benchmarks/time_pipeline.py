"""Time `dvc repro` from scratch, stage by stage, the no-op `dvc repro`, and the
`dvc exp run -S prune.threshold=0.8` experiment (which stages it re-runs, and its share of
the full pipeline's time).

Runs in a scratch copy of the project (so the repo's own outputs are untouched) and
writes its section of reports/benchmarks.md. Usage:

    python benchmarks/time_pipeline.py            # pipeline and no-op
    python benchmarks/time_pipeline.py --setup    # also a fresh `pip install` of requirements
    python benchmarks/time_pipeline.py --keep DIR # keep the scratch project (git, DVC cache)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ddb.dvcfile import pipeline_stages
from ddb.paths import COMMITTED_OUTPUTS

REPO = Path(__file__).resolve().parents[1]
STAGES = pipeline_stages()  # dvc.yaml's order, each stage after those it depends on
PRUNE_EXPERIMENT = ["dvc", "exp", "run", "-S", "prune.threshold=0.8"]


def run_output(args: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.perf_counter()
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - start, out.stdout + out.stderr


def run(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.perf_counter()
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def scratch_project(root: Path) -> None:
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", "src"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    (root / "data").mkdir()
    shutil.copy(REPO / "data/sources.json", root / "data/sources.json")
    for name in (*COMMITTED_OUTPUTS, "reports/discussion.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, root / name)
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)


def time_setup() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        start = time.perf_counter()
        run(["python3", "-m", "venv", str(venv)], REPO)
        run([str(venv / "bin/pip"), "install", "-q", "-r", "requirements.txt"], REPO)
        run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "-e", "."], REPO)
        return time.perf_counter() - start


def machine() -> str:
    """The CPU as benchmarks name it: cores, model, and whether it has AVX-512 (convolutions
    run some 2.7x slower without, so two EPYCs of one model name differ)."""
    cpu, flags = platform.processor() or "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    cpu += " with AVX-512" if "avx512f" in flags.split() else ""
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, no GPU used"


def write_section(name: str, body: str) -> None:
    """Replace this script's section of reports/benchmarks.md, keeping the others."""
    path = REPO / "reports/benchmarks.md"
    text = (
        path.read_text()
        if path.is_file()
        else "# Benchmarks\n\nEach section is written by the script it names.\n"
    )
    begin, end = f"<!-- begin: {name} -->", f"<!-- end: {name} -->"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setup", action="store_true", help="also time a fresh pip install")
    parser.add_argument(
        "--keep",
        type=Path,
        help="build the scratch project in this new folder and keep it: its git HEAD holds "
        "the pipeline's dvc.lock and reports (before the prune experiment)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            root = args.keep.resolve()
        scratch_project(root)
        stage_seconds = {
            stage: run(["dvc", "repro", "--single-item", stage], root) for stage in STAGES
        }
        noop = [run(["dvc", "repro"], root) for _ in range(3)]
        same = all(
            (root / name).read_text() == (REPO / name).read_text()
            for name in ("reports/metrics.json", "reports/foundation.json")
        )
        run(["git", "add", "-A"], root)
        run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "base"], root)
        exp_seconds, exp_out = run_output(PRUNE_EXPERIMENT, root)
        exp_stages = re.findall(r"Running stage '([a-z_]+)'", exp_out)
    total = sum(stage_seconds.values())
    lines = [
        "## Pipeline (`benchmarks/time_pipeline.py`)",
        "",
        f"Measured {datetime.date.today()} on {machine()}; default params.yaml, "
        "each stage run by `dvc repro --single-item <stage>` in a scratch copy "
        "(DVC start-up included).",
        "",
        "| step | seconds | target |",
        "|---|---|---|",
        *(f"| {stage} | {seconds:.1f} | |" for stage, seconds in stage_seconds.items()),
        f"| **whole pipeline** | **{total:.1f}** ({total / 60:.1f} min) | |",
        f"| no-op `dvc repro` (median of 3) | {statistics.median(noop):.2f} | ≤ 2 s |",
        f"| `{' '.join(PRUNE_EXPERIMENT)}` | {exp_seconds:.1f} "
        f"({100 * exp_seconds / total:.0f}% of the pipeline) | ≤ 25% |",
    ]
    if args.setup:
        lines.append(
            f"| fresh venv + `pip install -r requirements.txt` | {time_setup():.0f} | ≤ 300 s |"
        )
    verdict = "identical to" if same else "DIFFERENT from"
    lines += [
        "",
        f"The scratch run's reports/metrics.json and foundation.json are {verdict} the "
        "repository's (bit-identity holds on the machine that produced them; another CPU "
        "changes the last digits). The prune experiment re-ran: " + ", ".join(exp_stages) + ".",
    ]
    body = "\n".join(lines)
    write_section("time_pipeline", body)
    print(body)


if __name__ == "__main__":
    main()
