"""Where `make test`'s time goes: seconds per test file (setup + call + teardown, summed
over its tests), the wall time, and optionally another run's beside it.

It reads pytest's `--durations=0` report, from a log or from a run it starts itself with
`make test`'s flags (two xdist workers, one file each at a time). Wall time is what a user
waits; the per-file sums add both workers' time (so they total about twice the wall) and
show which files the wall is made of. Compare two runs on one machine, one after the other.

    python benchmarks/suite_durations.py                      # run the suite, print the table
    python benchmarks/suite_durations.py --log after.log --vs before.log --write
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the sibling time_pipeline.py
from time_pipeline import REPO, machine, write_section  # noqa: E402

DURATION = re.compile(r"^(\d+(?:\.\d+)?)s (setup|call|teardown)\s+(\S+?)::")
SUMMARY = re.compile(r"^=* ?(\d+ (?:passed|failed)\b.*) in (\d+(?:\.\d+)?)s", re.MULTILINE)
SECTION = "suite_durations"
SHOWN = 12  # files listed by name; the rest are summed in one row


def parse(log: str) -> tuple[dict[str, float], float, str]:
    """Per test file the seconds pytest reported, the session's wall seconds, its outcome."""
    per_file: dict[str, float] = defaultdict(float)
    for line in log.splitlines():
        if match := DURATION.match(line):
            per_file[match.group(3)] += float(match.group(1))
    summary = SUMMARY.search(log)
    if summary is None:
        raise SystemExit("no pytest summary line (`N passed ... in S s`) in the log")
    return dict(per_file), float(summary.group(2)), summary.group(1)


def run_suite(workers: int) -> str:
    """`make test`'s pytest command (without lint; the Makefile's PYTEST_XDIST) with every
    duration reported."""
    command = [
        sys.executable, "-m", "pytest", "-n", str(workers), "--dist", "loadfile",
        "--no-loadscope-reorder", "--durations=0", "-q",
    ]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    print(f"pytest ran {time.perf_counter() - start:.0f} s, exit {out.returncode}", flush=True)
    return out.stdout + out.stderr


def table(after: tuple, before: tuple | None) -> str:
    """Markdown: the slowest files of `after` (then the rest in one row), with `before`'s."""
    files, wall, outcome = after
    names = sorted(files, key=files.get, reverse=True)
    shown, rest = names[:SHOWN], names[SHOWN:]
    old = before[0] if before else {}
    head = "| test file | seconds |" + (" before |" if before else "")
    lines = [head, "|---|---:|" + ("---:|" if before else "")]

    def row(name: str, now: float, then: float | None) -> str:
        cells = f"| {name} | {now:.0f} |"
        return cells + (f" {then:.0f} |" if before else "")

    for name in shown:
        lines.append(row(f"`{name}`", files[name], old.get(name, 0.0)))
    lines.append(
        row(
            f"{len(rest)} other files",
            sum(files[n] for n in rest),
            sum(old.get(n, 0.0) for n in rest),
        )
    )
    lines.append(row("**sum (both workers)**", sum(files.values()), sum(old.values())))
    lines.append(row("**wall**", wall, before[1] if before else None))
    lines.append("")
    lines.append(f"After: {outcome}." + (f" Before: {before[2]}." if before else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log", type=Path, help="a `pytest --durations=0` log (else: run it)")
    parser.add_argument("--vs", type=Path, help="another run's log, shown as 'before'")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (make's 2)")
    parser.add_argument("--write", action="store_true", help="into reports/benchmarks.md")
    args = parser.parse_args(argv)
    after = parse(args.log.read_text() if args.log else run_suite(args.workers))
    before = parse(args.vs.read_text()) if args.vs else None
    body = "\n".join(
        [
            "## `make test`: seconds per test file",
            "",
            f"`python benchmarks/suite_durations.py`, {datetime.date.today()}; {machine()}; "
            f"pytest-xdist, {args.workers} workers, `--dist loadfile --no-loadscope-reorder`, "
            "lint not included.",
            "",
            table(after, before),
            "",
            "`tests/test_unet_step.py` compiles with inductor: its time depends on inductor's "
            "cache (`/tmp/torchinductor_<user>`) and varies between runs.",
        ]
    )
    if args.write:
        write_section(SECTION, body)
    print(body)
    return body


if __name__ == "__main__":
    main()
