"""Sharing one run between clones, as README's "Share one generation run" shows: the DVC
cache through a DVC remote (`dvc push` / `dvc pull`), and the paper-table experiments
through a git remote (`dvc exp push` / `dvc exp pull`), collected in another clone."""

import json
import re
from pathlib import Path

import pytest

from ddb.experiments import override_args, paper_runs
from tests.conftest import GIT_IDENTITY, commit_all, copy_project, needs_sources, run_in

pytestmark = [pytest.mark.slow, needs_sources]


def _run(cwd: Path, *args: str) -> str:
    return run_in(cwd, *args, env=GIT_IDENTITY)


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", output))


@pytest.fixture(scope="module")
def shared(tiny_project_seed1, tmp_path_factory):
    """The reproduced tiny project with a local DVC remote (committed in .dvc/config) and
    a bare git remote, both pushed: what a lab's first machine does after `dvc repro`. Its
    run cache, pushed too, holds seed 1's stages (tests/conftest.py: tiny_project_seed1),
    so the workers below restore that seed's stages rather than train them."""
    root = tmp_path_factory.mktemp("sharing")
    origin = copy_project(tiny_project_seed1, root / "origin")
    storage, git_remote = root / "dvc-storage", root / "git-remote.git"
    _run(origin, "dvc", "remote", "add", "-d", "shared", str(storage))
    params = origin / "params.yaml"
    params.write_text(params.read_text().replace("seeds: 3", "seeds: 2"))
    commit_all(origin, "a shared DVC remote; two seeds")
    _run(origin, "dvc", "push", "--run-cache")
    _run(root, "git", "init", "-q", "--bare", str(git_remote))
    _run(origin, "git", "remote", "add", "origin", str(git_remote))
    _run(origin, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    return {"root": root, "origin": origin, "git_remote": git_remote}


def _fresh_clone(shared: dict, name: str) -> Path:
    clone = shared["root"] / name
    _run(shared["root"], "git", "clone", "-q", "-b", "main", str(shared["git_remote"]), str(clone))
    return clone


def _metrics(project: Path) -> dict:
    return json.loads((project / "reports/metrics.json").read_text())


def test_a_fresh_clone_pulls_the_outputs_and_repro_runs_nothing(shared):
    clone = _fresh_clone(shared, "pulled")
    assert not (clone / "models/generate").exists()  # outputs are not in git
    _run(clone, "dvc", "pull")
    out = _run(clone, "dvc", "repro")
    assert _stages_run(out) == set(), out
    assert "up to date" in _run(clone, "dvc", "status")
    origin = shared["origin"]
    assert _metrics(clone) == _metrics(origin)
    for name in ("models/generate/manifest.csv", "models/evaluate/predictions.csv"):
        assert (clone / name).read_bytes() == (origin / name).read_bytes(), name


def test_paper_table_collects_experiments_pushed_from_two_clones(shared):
    """Two machines each run one seed of the paper table (`dvc exp run`, as a SLURM array
    job would) and push it; a third clone pulls both and builds the table from them."""
    runs = paper_runs(["embedded"], 2)
    pushed = {}
    for name, (_, _, overrides) in runs.items():
        worker = _fresh_clone(shared, f"worker-{name}")
        _run(worker, "dvc", "pull", "--run-cache")
        _run(worker, "dvc", "exp", "run", "-n", name, *override_args(overrides), "report")
        _run(worker, "dvc", "exp", "push", "origin", name)
        pushed[name] = _metrics(worker)  # the workspace holds the experiment's results
    assert pushed["embedded-seed0"] != pushed["embedded-seed1"]  # two seeds, two results

    collector = _fresh_clone(shared, "collector")
    _run(collector, "dvc", "exp", "pull", "origin", *runs)
    table = _run(collector, "ddb", "paper-table", "--collect-only")
    wga = table.split("## Mean accuracy")[0]
    erm_row = next(line for line in wga.splitlines() if line.startswith("| ERM |"))
    seeds = [100 * pushed[name]["erm"]["test"]["wga"] for name in runs]
    mean = sum(seeds) / len(seeds)
    cell = re.search(r"\| (\d+\.\d) ± (\d+\.\d) \|", erm_row)
    assert cell, erm_row  # the embedded column: a mean over the two pushed seeds
    assert float(cell.group(1)) == pytest.approx(mean, abs=0.051)
