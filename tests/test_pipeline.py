"""End to end: `dvc repro` of the whole pipeline on the tiny profile, then the no-op and an
experiment, as a user runs them."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, needs_sources, tiny_params

pytestmark = [pytest.mark.slow, needs_sources]


def _run(*args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", ".dvcignore", "src"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    # the committed foundation models (the stage itself is frozen: never re-run here)
    shutil.copytree(REPO / "models/foundation", root / "models/foundation")
    (root / "data").mkdir()
    shutil.copy(REPO / "data/sources.json", root / "data/sources.json")
    (root / "reports").mkdir()
    shutil.copy(REPO / "reports/discussion.md", root / "reports/discussion.md")
    (root / "params.yaml").write_text(tiny_params())
    _run("git", "init", "-q", cwd=root)
    _run("dvc", "init", "-q", cwd=root)
    _run("dvc", "config", "core.analytics", "false", cwd=root)
    _run("dvc", "repro", cwd=root)
    return root


def test_repro_writes_every_metric(project):
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert list(metrics) == [
        "erm",
        "group_balanced",
        "jtt",
        "group_dro",
        "dfr",
        "ddb_no_prune",
        "ddb",
    ]
    for method in metrics.values():
        for split in ("val", "test"):
            m = method[split]
            assert set(m["groups"]) == {
                "landbird_land",
                "landbird_water",
                "waterbird_land",
                "waterbird_water",
            }
            assert m["wga"] == min(m["groups"].values())
            assert 0 <= m["ci"]["wga"][0] <= m["wga"] <= m["ci"]["wga"][1] <= 1
    results = (project / "reports/results.md").read_text()
    for name in (
        "ERM",
        "Group-balanced ERM (oracle)",
        "JTT",
        "GroupDRO",
        "DFR",
        "DDB without pruning",
        "DDB",
    ):
        assert f"| {name} |" in results
    foundation = json.loads((project / "reports/foundation.json").read_text())
    assert 0 <= foundation["seg_iou"] <= 1 and 0 <= foundation["repaint_recognised"] <= 1
    assert foundation["outside_mask_max_change"] == 0  # paste-back keeps the source's pixels
    assert "## What each DDB stage achieved" in results
    prune = json.loads((project / "reports/prune.json").read_text())
    assert prune["generated"] == 8  # 4 sources per class, each repainted as the other class
    manifest = (project / "models/generate/manifest.csv").read_text()
    assert manifest.startswith("img_filename,y,split,place,")
    figures = ["data_grid", "group_accuracy", "learning_curves", "foundation_repaint"]
    for figure in [*figures, "prune_scores", "gallery"]:
        assert (project / f"reports/figures/{figure}.png").stat().st_size > 1000


def test_second_repro_does_nothing(project):
    assert "Data and pipelines are up to date" in _run("dvc", "repro", cwd=project)
    assert "up to date" in _run("dvc", "status", cwd=project)


def _commit(project):
    _run("git", "add", "-A", cwd=project)
    _run(
        "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline", cwd=project
    )


def _stages_run(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", out))


def _threshold_changing_kept(decisions: pd.DataFrame) -> float:
    """A prune.threshold that keeps a different set than the default: above every kept
    sample's attr_score (drops them), or, if none is kept, below the scores of the samples
    only the attribution condition drops (keeps them). DVC skips what follows a stage
    whose outputs did not change, so a threshold that changes nothing re-runs only prune."""
    kept = decisions[decisions.kept]
    if len(kept):
        return round(float(kept.attr_score.max()) + 0.01, 4)
    only_attribution = decisions[~decisions.drop_psi & ~decisions.drop_paired]
    assert len(only_attribution), "every tiny sample is dropped by psi or paired"
    return round(float(only_attribution.attr_score.min()) - 0.01, 4)


def test_prune_threshold_experiment_reruns_exactly_what_the_threshold_feeds(project):
    _commit(project)
    threshold = _threshold_changing_kept(pd.read_csv(project / "models/prune/decisions.csv"))
    out = _run("dvc", "exp", "run", "-S", f"prune.threshold={threshold}", cwd=project)
    assert _stages_run(out) == {"prune", "retrain", "evaluate", "report"}


def test_seed_experiment_reruns_only_what_the_seed_feeds(project):
    _commit(project)
    out = _run("dvc", "exp", "run", "-S", "erm.seed=1", cwd=project)
    ran = _stages_run(out)
    assert {"erm", "dfr", "select", "retrain", "evaluate", "report"} <= ran
    assert not ran & {"prepare", "baselines", "foundation_report"}
    table = json.loads(_run("dvc", "exp", "show", "--json", cwd=project))
    seeds = set()
    for commit in table:  # the workspace, the baseline commit and its experiments
        for exp in [commit, *[e["revs"][0] for e in commit.get("experiments") or []]]:
            data = exp["data"]
            wga = data["metrics"]["reports/metrics.json"]["data"]["erm"]["test"]["wga"]
            assert 0 <= wga <= 1
            seeds.add(data["params"]["params.yaml"]["data"]["erm"]["seed"])
    assert seeds == {0, 1}  # the experiment's WGA beside the baseline's


def test_ablations_and_paper_table_run_through_the_dvc_queue(project):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("seeds: 3", "seeds: 2"))
    _commit(project)
    _run("ddb", "ablations", "--only", "prune-none", cwd=project)
    ablations = (project / "reports/ablations.md").read_text()
    row = next(line for line in ablations.splitlines() if line.startswith("| prune: none"))
    assert "| 8 | 8 |" in row  # nothing pruned: every generated sample kept
    assert "not run" in next(line for line in ablations.splitlines() if "copy-paste" in line)

    table = _run("ddb", "paper-table", cwd=project)
    assert (project / "reports/paper_table.md").read_text().strip() in table
    wga = table.split("## Mean accuracy")[0]
    ddb_row = next(line for line in wga.splitlines() if line.startswith("| DDB |"))
    assert re.search(r"\| \d+\.\d ± \d+\.\d \|", ddb_row)  # measured over 2 seeds
    erm_row = next(line for line in wga.splitlines() if line.startswith("| ERM |"))
    assert "not run: data/waterbird_complete95_forest2water2/metadata.csv" in erm_row
    assert "| 93 |" in ddb_row  # the paper's Waterbirds figure beside ours
    shown = json.loads(_run("dvc", "exp", "show", "--json", cwd=project))
    names = {
        e["name"] for c in shown for e in [r for x in c.get("experiments") or [] for r in x["revs"]]
    }
    assert {"ablation-prune-none", "embedded-seed0", "embedded-seed1"} <= names
    assert (project / "reports/figures/paper_table.png").stat().st_size > 1000
