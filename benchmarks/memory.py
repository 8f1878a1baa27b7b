"""Peak resident memory (RSS) of each `make repro` stage, for the tiny and the default profile.

Runs the pipeline stage by stage in a scratch copy of the project (made as time_pipeline.py
makes it, so the repo's own outputs are untouched). Each stage's command from dvc.yaml
(`python -m ddb <stage>`) is run directly and measured, not `dvc repro`, whose own process
would be counted too; DVC's footprint is measured once on its own (`dvc status`). The peak of
a stage is that of its whole process tree (see `peak_rss`). The frozen one-offs
(foundation, foundation_segmenter) are not part of `make repro` and are skipped.

Profiles: `tiny` (tests/conftest.py's tiny_params()) and `default` (params.yaml as committed).
`--short` cuts only repetitions, which allocate nothing new after their first round:
classifier.epochs, retrain.epochs and invert.steps (SHORTENED). Every data size, image size,
batch size, sample count and diffusion/IG step count stays as committed. `--compare` checks
that claim: it runs the profile both as it is and shortened and reports the ratio per stage.

Writes its block of the `memory` section of reports/benchmarks.md. Usage:

    python benchmarks/memory.py                     # tiny --compare, then default --short
    python benchmarks/memory.py --profile tiny      # the tiny profile as it is
    python benchmarks/memory.py --profile default --short --until erm
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from ddb.utils import write_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling time_pipeline.py
from time_pipeline import STAGES, machine, scratch_project  # noqa: E402

MIB = 2**20
GOALS_MIB = {"tiny": 2 * 1024, "default": 6 * 1024}  # issue 12
SHORTENED = {  # repetitions only: each repeats work whose buffers exist after round one
    "classifier": {"epochs": 1},  # erm, baselines (each method's training)
    "retrain": {"epochs": 1},  # retrain, retrain_no_prune
    "invert": {"steps": 5},  # textual-inversion optimizer steps (AdamW state: from step 1)
}
SECTION = "memory"
REPORT_HEAD = "# Benchmarks\n\nEach section is written by the script it names.\n"
SECTION_INTRO = """## Peak memory (`benchmarks/memory.py`, `benchmarks/streaming_memory.py`)

Goals (issue 12): peak resident memory of the default `make repro` ≤ 6 GiB and of the tiny
profile ≤ 2 GiB, per stage; a CelebA-sized train split (160k images) needs no more memory
than a thousand images, because the stages stream images from disk. Peak RSS of a process
tree, polled every 0.1 s: the larger of the kernel's high-water mark of any one process in it
(VmHWM) and the largest sum of their RSS. 1 MiB = 2^20 bytes."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    peak_bytes: int
    seconds: float
    returncode: int
    anon_bytes: int = 0  # polled peak of anonymous memory (RssAnon), see peak_rss
    pss_bytes: int = 0  # polled peak of the tree's summed PSS, see peak_memory


def proc_status(pid: int, *fields: str) -> list[int]:
    """Byte values of `fields` of /proc/<pid>/status (0 where unreadable).

    VmHWM is the kernel's peak resident bytes of the process so far; unlike wait4's
    ru_maxrss it starts afresh at exec (ru_maxrss of a child also counts the pages of the
    parent it was forked from, here this script's own ~50 MiB). RssAnon is the process's
    own memory now (heap, tensors), without the file-backed pages of its libraries.
    """
    values = dict.fromkeys(fields, 0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = line.split(":", 1)[0]
            if name in values:
                values[name] = int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError):
        pass
    return [values[field] for field in fields]


@dataclasses.dataclass(frozen=True)
class Peak:
    """Peaks of a process tree (bytes) and its exit status; see peak_memory."""

    rss: int
    anon: int
    pss: int
    returncode: int


def poll_tree(root: psutil.Process, high_water: dict[int, int]) -> tuple[int, int, int]:
    """(resident, anonymous, proportional) bytes of `root` and its live descendants now;
    records each one's VmHWM in `high_water` (pid -> bytes).

    PSS (proportional set size) counts a page shared by k processes as 1/k in each, so the
    tree's sum counts it once: forked DataLoader workers share most of their parent's pages,
    and their summed RSS counts those pages once per worker (eight workers: 26.6 GiB of RSS
    where PSS was 6.1)."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:  # root exited between two polls
        return 0, 0, 0
    total = anon = pss = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
            peak, own = proc_status(process.pid, "VmHWM", "RssAnon")
            high_water[process.pid] = max(high_water.get(process.pid, 0), peak)
            anon += own
            pss += process.memory_full_info().pss
    return total, anon, pss


def peak_memory(process: subprocess.Popen, interval: float = 0.1) -> Peak:
    """Peaks of a running process tree; waits for it.

    Resident: two readings, the larger kept: the largest VmHWM of any process in the tree
    (the kernel's exact peak of that process, up to the last poll before it exits) and the
    largest sum of the tree's RSS over the polls (which counts processes that run at the
    same time, DataLoader workers or accelerate's, but can miss a spike between polls).
    The stages run one process, so for them the first is exact but for their last
    `interval` seconds, which only write outputs. The anonymous peak (polled only) leaves
    out the file-backed pages of the libraries, which vary from run to run with the page
    cache, so it shows better what grows with the data. The PSS peak (polled only) is the
    tree's memory with shared pages counted once: the figure for forked workers.
    """
    root = psutil.Process(process.pid)
    polled_peak = anon_peak = pss_peak = 0
    high_water = {}
    while process.poll() is None:
        resident, anon, pss = poll_tree(root, high_water)
        polled_peak, anon_peak = max(polled_peak, resident), max(anon_peak, anon)
        pss_peak = max(pss_peak, pss)
        time.sleep(interval)
    rss = max(polled_peak, *high_water.values(), 0)
    return Peak(rss, anon_peak, pss_peak, process.returncode)


def peak_rss(process: subprocess.Popen, interval: float = 0.1) -> tuple[int, int, int]:
    """(peak resident bytes, peak anonymous bytes, exit status) of a running process tree,
    as `peak_memory` measures them; waits for it."""
    peak = peak_memory(process, interval)
    return peak.rss, peak.anon, peak.returncode


def measure(args: list[str], cwd: Path, log_path: Path, env: dict | None = None) -> Measurement:
    """Run `args` in `cwd` with its output in `log_path`; its peaks and wall time."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = peak_memory(process)
    seconds = time.perf_counter() - start
    return Measurement(peak.rss, seconds, peak.returncode, peak.anon, peak.pss)


def venv_env() -> dict:
    """The environment with this interpreter's bin first, as `make repro` puts the venv."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def tiny_profile_module():
    """tests/conftest.py, where the tiny profile is defined (loaded from its file, so no
    other installed `tests` package can stand in for it)."""
    spec = importlib.util.spec_from_file_location("ddb_tests_conftest", REPO / "tests/conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def profile_params(profile: str, short: bool) -> str:
    """params.yaml text of a profile, with SHORTENED applied when `short`."""
    if profile == "tiny":
        text = tiny_profile_module().tiny_params()
    else:
        text = (REPO / "params.yaml").read_text()
    if not short:
        return text
    params = yaml.safe_load(text)
    for section, values in SHORTENED.items():
        params[section].update(values)
    return yaml.safe_dump(params, sort_keys=False)


def stage_commands(stages: list[str]) -> dict[str, list[str]]:
    """Each stage's cmd as dvc.yaml declares it."""
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {stage: shlex.split(declared[stage]["cmd"]) for stage in stages}


def stages_until(until: str | None) -> list[str]:
    if until is None:
        return list(STAGES)
    if until not in STAGES:
        sys.exit(f"--until {until}: not a `make repro` stage; one of {', '.join(STAGES)}")
    return STAGES[: STAGES.index(until) + 1]


def measure_pipeline(params_text: str, stages: list[str]) -> tuple[dict[str, Measurement], int]:
    """Per-stage measurements in a fresh scratch project, and DVC's own peak there."""
    env = venv_env()
    with tempfile.TemporaryDirectory(prefix="ddb-memory-") as tmp:
        root = Path(tmp)
        scratch_project(root)
        (root / "params.yaml").write_text(params_text)
        (root / "logs").mkdir()
        results = {}
        for stage, command in stage_commands(stages).items():
            log_path = root / "logs" / f"{stage}.log"
            result = measure(command, root, log_path, env)
            if result.returncode != 0:
                tail = log_path.read_text()[-3000:]
                sys.exit(f"stage {stage} failed (exit {result.returncode}):\n{tail}")
            print(f"{stage}: {result.peak_bytes / MIB:.0f} MiB, {result.seconds:.0f} s", flush=True)
            results[stage] = result
        dvc = measure(["dvc", "status", "-q"], root, root / "logs/dvc.log", env)
    return results, dvc.peak_bytes


def profile_table(
    profile: str, runs: dict[str, dict[str, Measurement]], dvc_bytes: int
) -> list[str]:
    """Markdown: per stage, peak MiB and seconds of each run (and, for two runs, the
    ratio of their peaks); the pipeline's peak (its largest stage) against the goal."""
    names = list(runs)
    compare = len(names) == 2
    columns = [f"{name} {unit}" for name in names for unit in ("MiB", "s")]
    columns += [f"{names[1]} / {names[0]} (peak)"] if compare else []
    lines = ["| stage | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for stage in next(iter(runs.values())):
        cells = []
        for name in names:
            result = runs[name][stage]
            cells += [f"{result.peak_bytes / MIB:.0f}", f"{result.seconds:.0f}"]
        if compare:
            first, second = (runs[name][stage].peak_bytes for name in names)
            cells.append(f"{second / first:.3f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    peaks = {name: max(m.peak_bytes for m in runs[name].values()) / MIB for name in names}
    cells = []
    for name in names:
        cells += [f"**{peaks[name]:.0f}**", f"{sum(m.seconds for m in runs[name].values()):.0f}"]
    cells += [""] if compare else []
    lines.append("| **pipeline peak** (its largest stage; total s) | " + " | ".join(cells) + " |")
    if compare:
        lines += ["", comparison_text(runs)]
    goal = GOALS_MIB[profile]
    met = all(peak <= goal for peak in peaks.values())
    lines += ["", f"Goal ≤ {goal} MiB ({goal // 1024} GiB): **{'met' if met else 'NOT met'}**."]
    if dvc_bytes:  # measured after the last stage
        lines[-1] += (
            " `dvc repro` runs DVC's own process beside each stage: `dvc status` in the same "
            f"project peaks at {dvc_bytes / MIB:.0f} MiB."
        )
    return lines


def unchanged_stages(stages) -> list[str]:
    """The stages whose dvc.yaml params include none of SHORTENED's keys: the same work
    whether shortened or not."""
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    keys = {f"{section}.{key}" for section, values in SHORTENED.items() for key in values}
    return [
        stage
        for stage in stages
        if not any(p in SHORTENED or p in keys for p in declared[stage].get("params", []))
    ]


def comparison_text(runs: dict[str, dict[str, Measurement]]) -> str:
    """How much the shortened stages moved, next to the noise of the unchanged ones."""
    first, second = runs.values()
    change = {stage: second[stage].peak_bytes / first[stage].peak_bytes - 1 for stage in first}
    same = unchanged_stages(list(first))
    noise = max((abs(change[s]) for s in same), default=0.0)
    moved = max((abs(change[s]) for s in first if s not in same), default=0.0)
    return (
        f"The stages that read none of the shortened keys ({', '.join(same)}) do the same "
        f"work in both runs, yet their peaks differ by up to {noise:.0%}: the run-to-run "
        "noise of peak RSS on this shared machine (most likely the file-backed pages of "
        "torch's shared libraries, some 300 MiB of each stage's RSS: how many get mapped "
        "depends on what the page cache holds). The shortened stages differ by up to "
        f"{moved:.0%}."
    )


def shortened_text(profile: str) -> str:
    """SHORTENED's keys with the profile's own values beside them."""
    own = yaml.safe_load(profile_params(profile, short=False))
    return ", ".join(
        f"`{section}.{key}: {value}` (as is: {own[section][key]})"
        for section, values in SHORTENED.items()
        for key, value in values.items()
    )


def profile_block(profile: str, runs, dvc_bytes: int, stages: list[str]) -> str:
    what = {
        "tiny": "the tiny profile (tests/conftest.py `tiny_params()`)",
        "default": "the default profile (params.yaml as committed)",
    }[profile]
    lines = [
        f"### {profile.capitalize()} profile",
        "",
        f"Measured {datetime.date.today()} on {machine()}, under `nice -n 10` on a shared "
        f"machine (seconds are wall time, not a benchmark); {what}, run "
        f"{' and '.join(runs)}. Shortened: {shortened_text(profile)}; every data size, image size, "
        "batch size, sample count and diffusion / integrated-gradients step count as "
        "committed.",
        "",
    ]
    if stages != list(STAGES):
        lines += [f"Stages measured: {', '.join(stages)} (not the whole pipeline).", ""]
    lines += profile_table(profile, runs, dvc_bytes)
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block `<!-- begin: name -->...<!-- end: name -->` set to `body`
    (appended when absent); everything outside it is kept."""
    begin, end = f"<!-- begin: {name} -->", f"<!-- end: {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


def section_body(text: str, name: str) -> str:
    """The inside of block `name` of `text` ('' when absent)."""
    begin, end = f"<!-- begin: {name} -->", f"<!-- end: {name} -->"
    if begin not in text:
        return ""
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def with_memory_block(report: str, name: str, body: str) -> str:
    """reports/benchmarks.md text with block `memory/<name>` of the memory section set to
    `body`: the section's intro is rewritten, its other blocks and other sections kept."""
    current = section_body(report, SECTION)
    first_block = current.find(f"<!-- begin: {SECTION}/")
    blocks = current[first_block:] if first_block >= 0 else ""
    inside = replace_block(SECTION_INTRO + "\n\n" + blocks, f"{SECTION}/{name}", body)
    return replace_block(report, SECTION, inside)


def write_block(name: str, body: str) -> None:
    path = REPO / "reports/benchmarks.md"
    report = path.read_text() if path.is_file() else REPORT_HEAD
    write_text(path, with_memory_block(report, name, body))


def run_profile(profile: str, short: bool, compare: bool, stages: list[str]) -> None:
    runs, dvc_bytes = {}, 0
    if compare:
        variants = [("as is", False), ("shortened", True)]
    else:
        variants = [("shortened" if short else "as is", short)]
    for label, shorten in variants:
        print(f"--- {profile} profile, {label}", flush=True)
        runs[label], dvc_bytes = measure_pipeline(profile_params(profile, shorten), stages)
    body = profile_block(profile, runs, dvc_bytes, stages)
    write_block(profile, body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=["tiny", "default"], help="default: both")
    parser.add_argument("--short", action="store_true", help="apply SHORTENED (see above)")
    parser.add_argument("--compare", action="store_true", help="run as is and shortened")
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage")
    args = parser.parse_args()
    stages = stages_until(args.until)
    if args.profile:
        run_profile(args.profile, args.short, args.compare, stages)
    else:
        run_profile("tiny", short=False, compare=True, stages=stages)
        run_profile("default", short=True, compare=False, stages=stages)


if __name__ == "__main__":
    main()
