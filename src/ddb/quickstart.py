"""`ddb quickstart` (`make quickstart`): the whole method on the tiny profile
(conf/debug/tiny.yaml), end to end, in a scratch project `.quickstart/` beside the repo's own.

A scratch project rather than a DVC experiment (`dvc exp run -S debug=tiny`): an experiment
runs on the last commit and, in the workspace, replaces the user's outputs; the scratch copy
takes the working tree as it is and leaves the workspace, its git history and its DVC cache
alone. The tests build their tiny project with `make_project` too, so users and tests run
the same thing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ddb import paths
from ddb.utils import StageError

SCRATCH = Path(".quickstart")
SUMMARY = "quickstart.md"  # the short results table, in the scratch project
# What a copy of the project needs to run the pipeline: the frozen stages' committed outputs
# (they never re-run), the benchmark's sources, the hand-written discussion report includes.
PROJECT_FILES = (
    Path("dvc.yaml"),
    Path(".dvcignore"),
    Path("src"),
    paths.SOURCES,
    paths.DISCUSSION,
    *paths.COMMITTED_OUTPUTS,
)


def make_project(repo: Path, root: Path, debug: str = "tiny") -> Path:
    """A git + DVC project in `root` running the repo's pipeline with conf/debug/<debug>.yaml
    selected in its conf/config.yaml (so `dvc exp run -S ...` there keeps the profile), its
    params.yaml composed from it; nothing run yet."""
    from ddb.config import compose_params, params_text

    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (repo / name).is_dir() else shutil.copy
        copy(repo / name, root / name)
    shutil.copytree(repo / "conf", root / "conf")
    config = root / "conf/config.yaml"
    config.write_text(select_default(config.read_text(), "debug", debug))
    (root / "params.yaml").write_text(params_text(compose_params(root / "conf")))
    for args in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "config", "hydra.enabled", "true"],  # as the repo: -S composes conf/
    ):
        subprocess.run(args, cwd=root, env=venv_env(), check=True, capture_output=True)
    return root


def select_default(config_text: str, group: str, option: str) -> str:
    """conf/config.yaml's text with `- <group>: <option>` in its defaults list (comments
    kept), in place of the entry the group has there."""
    pattern = rf"^(\s*-\s*{group}:\s*)\S+"
    if not re.search(pattern, config_text, flags=re.MULTILINE):
        raise ValueError(f"conf/config.yaml: no `- {group}: ...` entry in its defaults list")
    return re.sub(pattern, rf"\g<1>{option}", config_text, count=1, flags=re.MULTILINE)


def venv_env() -> dict[str, str]:
    """The environment with this Python's bin folder first on PATH: dvc, and the stages'
    `python -m ddb`, are the ones installed beside it."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def summary_table(metrics: dict, seconds: float) -> str:
    """The short results table: test and val WGA and mean accuracy of each method (%)."""
    lines = [
        "# Quickstart: the tiny profile (conf/debug/tiny.yaml)",
        "",
        f"`dvc repro` of the whole pipeline took {seconds:.0f} s. A few dozen 32 px images and",
        "a step or two of each model: these figures show the pipeline runs, not how well the",
        "method works (reports/results.md has the default profile's).",
        "",
        "| method | test WGA | test mean acc | val WGA | val mean acc |",
        "|---|---|---|---|---|",
    ]
    for method, splits in metrics.items():
        cells = [f"{100 * splits[s][k]:.1f}" for s in ("test", "val") for k in ("wga", "mean_acc")]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def quickstart(repo: Path) -> str:
    """Rebuild `.quickstart/` from the working tree, reproduce it, and return (and write to
    .quickstart/quickstart.md) the short results table."""
    root = repo / SCRATCH
    shutil.rmtree(root, ignore_errors=True)  # a fresh run every time: no stale outputs
    make_project(repo, root)
    start = time.perf_counter()
    run = subprocess.run(["dvc", "repro"], cwd=root, env=venv_env())
    if run.returncode != 0:
        raise StageError(
            f"`dvc repro` in {SCRATCH}/ failed (exit {run.returncode}; its output is above). "
            f"The scratch project stays there to inspect; `ddb quickstart` rebuilds it."
        )
    seconds = time.perf_counter() - start
    table = summary_table(json.loads((root / paths.METRICS).read_text()), seconds)
    (root / SUMMARY).write_text(table)
    return (
        f"{table}\nFull report: {SCRATCH / paths.REPORTS / 'results.md'}; "
        f"this table: {SCRATCH / SUMMARY}\n"
    )
