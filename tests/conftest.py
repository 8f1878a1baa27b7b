"""Shared fixtures: tiny datasets in the exact Waterbirds format, tiny configs."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from ddb import paths
from ddb.config import Config, Recipe, compose_params, from_dict, load_config
from ddb.data.embedded import source_paths
from ddb.experiments import override_args, paper_runs
from ddb.params_log import ENV
from ddb.quickstart import make_project

REPO = Path(__file__).resolve().parents[1]
GIT_IDENTITY = {  # for the commits of git and `dvc exp` on a machine without a git identity
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}

# Under pytest-xdist each worker, and every stage process it starts, computes on one thread:
# two workers then fill two cores, where torch's default (a thread per core in every
# process) would oversubscribe them. Set before torch is imported; a test that compares two
# runs compares runs on the same thread count.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# `make test`'s two workers take whole files in collection order (Makefile: --dist loadfile
# --no-loadscope-reorder), each a new file when nearly out of tests. The longest files go
# first (longest-processing-time-first scheduling), so that no worker is left alone with one
# at the end: test_pipeline builds the shared tiny projects (~330 s) while the other worker
# runs the interruption chain, which needs tiny_project only at its end. The rest keep
# pytest's order. Seconds per file: reports/benchmarks.md (benchmarks/suite_durations.py).
RUN_FIRST = [
    "test_pipeline.py",
    "test_interruptions.py",
    "test_paper_profile.py",
    "test_sharing.py",
    "test_benchmarks_fullsize.py",
    "test_ddb_stages.py",
    "test_unet_step.py",
    "test_queue_workers.py",
    "test_dvc_noop_benchmark.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable


needs_sources = pytest.mark.skipif(
    any(not path.is_file() for _, path in source_paths().values()),
    reason="the Debian image packages of the embedded benchmark are not installed (make setup)",
)


def write_waterbirds_folder(
    root: Path, per_group: dict[int, tuple[int, int, int]], size: int = 24
) -> Path:
    """A folder laid out like waterbird_complete95_forest2water2.

    per_group: group -> (n_train, n_val, n_test). The bird is a bright square whose colour
    depends on the class; the background colour depends on the place, so a classifier can
    learn either.
    """
    rng = np.random.default_rng(0)
    rows, img_id = [], 1
    species = {0: "086.Pacific_Loon", 1: "001.Black_footed_Albatross"}
    places = {0: "/b/bamboo_forest/00000001.jpg", 1: "/o/ocean/00002178.jpg"}
    for group, counts in per_group.items():
        y, place = divmod(group, 2)
        for split, n in enumerate(counts):
            for _ in range(n):
                name = f"{species[y]}/{species[y].split('.')[1]}_{img_id:04d}_{img_id}.jpg"
                pixels = np.zeros((size, size, 3), np.uint8)
                pixels[...] = (40, 160, 40) if place == 0 else (40, 40, 200)
                pixels += rng.integers(0, 30, pixels.shape, dtype=np.uint8)
                lo, hi = size // 4, 3 * size // 4
                pixels[lo:hi, lo:hi] = (250, 250, 0) if y == 1 else (120, 60, 0)
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / name, quality=95)
                rows.append(
                    {
                        "img_id": img_id,
                        "img_filename": name,
                        "y": y,
                        "split": split,
                        "place": place,
                        "place_filename": places[place],
                    }
                )
                img_id += 1
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture
def waterbirds_folder(tmp_path: Path) -> Path:
    counts = {0: (12, 2, 3), 1: (2, 2, 3), 2: (2, 2, 3), 3: (12, 2, 3)}
    return write_waterbirds_folder(tmp_path / "waterbirds", counts)


# The tiny profile is conf/debug/tiny.yaml, composed as `ddb params debug=tiny` does (and
# as `make quickstart` runs it), so the tests and users run the same thing.
TINY_PROFILE = ["debug=tiny"]


@functools.cache
def tiny_profile_text() -> str:
    """The composed tiny profile (composed once: Hydra takes a moment per call)."""
    return yaml.safe_dump(compose_params(REPO / "conf", TINY_PROFILE), sort_keys=False)


def tiny_params(root: Path | str = "data/prepared", **overrides) -> str:
    """params.yaml text of the tiny profile; `overrides` are {section: {key: value}}, where a
    value that is a mapping changes only the keys it names (params.yaml must hold them all)."""
    params = yaml.safe_load(tiny_profile_text())
    # the committed backbone by absolute path, so a test in any folder can fine-tune from it
    params["classifier"]["weights"] = str(REPO / "models/backbone/resnet18.pth")
    merge(params, overrides)
    params["data"]["root"] = str(root)
    return yaml.safe_dump(params, sort_keys=False)


def merge(params: dict, changes: dict) -> None:
    """Write `changes` into `params`, section by section, down to the keys."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            merge(params[key], value)
        else:
            params[key] = value


def tiny_config(root: Path | str = "data/prepared", **sections) -> Config:
    """The tiny profile as a Config, with optional section overrides."""
    config = load_config_text(tiny_params(root))
    return dataclasses.replace(config, **sections)


@functools.cache
def default_params_text() -> str:
    """conf/ composed with its defaults (what params.yaml holds), composed once."""
    return yaml.safe_dump(compose_params(REPO / "conf"), sort_keys=False)


def default_params() -> dict:
    """A fresh copy of conf/'s default params, for a test to change."""
    return yaml.safe_load(default_params_text())


def default_config(**sections) -> Config:
    """conf/'s defaults as a Config, with optional section overrides."""
    return dataclasses.replace(from_dict(Config, default_params()), **sections)


def default_section(name: str, **changes):
    """Section `name` ("prune", "baselines.lisa") of conf/'s defaults with `changes`, built
    and validated as load_config does (a bad value raises ConfigError naming the key)."""
    raw, cls = default_params(), Config
    for part in name.split("."):
        raw, cls = raw[part], typing.get_type_hints(cls)[part]
    return from_dict(cls, {**raw, **changes}, prefix=f"{name}.")


def recipe(**keys) -> Recipe:
    """A method recipe that sets `keys` and leaves every other classifier key shared."""
    return Recipe(**{**dict.fromkeys(f.name for f in dataclasses.fields(Recipe)), **keys})


def indexed(config: Config) -> Config:
    """Run the index stage on `config`'s data.root (in the working directory, as a stage
    that reads the dataset needs), and return the config."""
    from ddb.stages import index

    index.run(config)
    return config


def load_config_text(text: str) -> Config:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text)
        return load_config(path)


@pytest.fixture
def in_tmp_repo(tmp_path: Path, monkeypatch) -> Path:
    """Run with the cwd in an empty project folder holding data/sources.json."""
    (tmp_path / "data").mkdir()
    if (REPO / "data/sources.json").is_file():
        shutil.copy(REPO / "data/sources.json", tmp_path / "data/sources.json")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_in(cwd: Path, *args: str, timeout: float = 900, env: dict | None = None) -> str:
    """Run a command (dvc, git, ddb) with the venv's bin on PATH and `env` added to the
    environment; fail the test with its output."""
    env = {
        **os.environ,
        **(env or {}),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def commit_all(project: Path, message: str = "baseline") -> None:
    run_in(project, "git", "add", "-A")
    run_in(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def copy_project(source: Path, destination: Path) -> Path:
    """A copy of a reproduced project (git history, DVC cache and all) to change freely."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """The tiny profile reproduced once per test run: a git + DVC project on which
    `dvc repro` has run, everything committed. Shared and never changed: copy it with
    `copy_project` before running anything that writes."""
    return built_once(tmp_path_factory, "tiny_project", build_tiny_project)


@pytest.fixture(scope="session")
def tiny_project_seed1(tiny_project, tmp_path_factory) -> Path:
    """`tiny_project` (copied) whose DVC run cache also holds every stage of the paper
    table's seed 1 (`dvc exp run` with `experiments.paper_runs`' overrides, then the
    experiment removed: the workspace, git and `dvc exp show` are tiny_project's).

    The queue test (tests/test_pipeline.py) and the sharing test (tests/test_sharing.py)
    both run that seed; with this cache DVC restores its stages instead of training them
    again in each (~150 s each on 2 cores), as a lab's second run of the same params would.
    What they check (which stages a seed reaches, that experiments travel between clones)
    reads DVC's log of stages run *or* restored. Shared and never changed, like
    tiny_project."""

    def build(root: Path) -> Path:
        copy_project(tiny_project, root)
        overrides = paper_runs(["embedded"], 2)["embedded-seed1"][2]
        run = ["dvc", "exp", "run", "--temp", "-n", "cache-seed1", *override_args(overrides)]
        run_in(root, *run, "report", env=GIT_IDENTITY)  # an experiment is a git commit
        run_in(root, "dvc", "exp", "remove", "cache-seed1")
        return root

    return built_once(tmp_path_factory, "tiny_project_seed1", build)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(root)` run once per test run. Under pytest-xdist (`make test` runs two
    workers) the first worker to need it builds it in the run's common temporary folder
    while another waits on a file lock, so its `dvc repro` is paid once, not per worker."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # plain pytest: one process
        return build(tmp_path_factory.mktemp(name) / name)
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / name
    built = root.with_name(f"{name}.built")  # beside it: not a file of the project
    with FileLock(f"{root}.lock"):
        if not built.is_file():
            shutil.rmtree(root, ignore_errors=True)  # a worker that failed half-way
            build(root)
            built.touch()
    return root


def build_tiny_project(root: Path) -> Path:
    make_tiny_project(root)
    shutil.rmtree(params_log(root), ignore_errors=True)  # a worker that failed half-way
    run_in(root, "dvc", "repro", env={ENV: str(params_log(root))})
    commit_all(root)
    return root


def copy_committed_outputs(root: Path) -> None:
    """The frozen stages' committed outputs (paths.COMMITTED_OUTPUTS: the foundation models,
    the backbone), copied into the project at `root`: its stages list them as deps."""
    for name in paths.COMMITTED_OUTPUTS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, root / name)


def make_tiny_project(root: Path) -> Path:
    """A git + DVC project of the tiny profile in `root`, before any `dvc repro`: the one
    `make quickstart` runs (ddb.quickstart.make_project)."""
    return make_project(REPO, root, debug="tiny")


def params_log(project: Path) -> Path:
    """Where the tiny project's build records the params keys each stage read (beside the
    project, not in it: tests/test_stage_params.py reads them)."""
    return project.with_name(f"{project.name}.params_read")
