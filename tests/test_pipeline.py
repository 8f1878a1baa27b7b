"""End to end: `dvc repro` of the whole pipeline on the tiny profile, then the no-op and an
experiment, as a user runs them."""

import json
import re

import pandas as pd
import pytest
import yaml

from ddb.experiments import SEED_KEYS
from tests.conftest import commit_all, copy_project, needs_sources, run_in

pytestmark = [pytest.mark.slow, needs_sources]


@pytest.fixture(scope="module")
def project(tiny_project_seed1, tmp_path_factory):
    """The session's reproduced tiny project, copied: these tests commit and run experiments.
    Its run cache holds the stages of the paper table's seed 1 (tests/conftest.py)."""
    return copy_project(tiny_project_seed1, tmp_path_factory.mktemp("pipeline") / "project")


def _run(*args, cwd):
    return run_in(cwd, *args)


def test_repro_writes_every_metric(project):
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert list(metrics) == [
        "erm",
        "group_balanced",
        "jtt",
        "group_dro",
        "lisa",
        "dfr",
        "dac",
        "disc",
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
        "DISC",
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


def _stages_run(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", out))


def _stages_reached(out: str) -> set[str]:
    """The stages DVC ran or restored from its run cache (a run of the same deps and
    params): those whose deps or params changed. An unchanged stage says "didn't change"."""
    return _stages_run(out) | set(re.findall(r"Stage '([a-z_]+)' is cached - skipping run", out))


def _changed_stages(project, **params) -> set[str]:
    """The stages `dvc status` says a params change invalidates by itself (their own
    params); what follows them re-runs only when their outputs change."""
    path = project / "params.yaml"
    original = path.read_text()
    values = yaml.safe_load(original)
    for key, value in params.items():
        section, name = key.split(".")
        values[section][name] = value
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    try:
        out = _run("dvc", "status", "--json", cwd=project)  # stdout, then DVC's warnings
        status = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    finally:
        path.write_text(original)
    return set(status)


def test_each_seed_reaches_only_the_stages_that_read_it(project):
    # Run for real by the paper table below (all four seeds at once, through the queue).
    expected = {
        "erm.seed": {"erm"},
        "baselines.seed": {"baselines"},
        "dfr.seed": {"dfr"},
        "disc.seed": {"disc"},
        "retrain.seed": {"retrain", "retrain_no_prune"},
        "dac.seed": {"dac"},
    }
    assert set(expected) == set(SEED_KEYS)
    for key, stages in expected.items():
        assert _changed_stages(project, **{key: 1}) == stages, key


def _queue_log(project, name: str) -> str:
    """What an experiment run through the queue printed."""
    return _run("dvc", "queue", "logs", name, cwd=project)


def test_ablations_and_paper_table_run_through_the_dvc_queue(project):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("seeds: 3", "seeds: 2"))
    commit_all(project)
    _run("ddb", "ablations", "--only", "prune-none", cwd=project)
    ablations = (project / "reports/ablations.md").read_text()
    row = next(line for line in ablations.splitlines() if line.startswith("| prune: none"))
    assert "| 8 | 8 |" in row  # nothing pruned: every generated sample kept
    assert "not run" in next(line for line in ablations.splitlines() if "copy-paste" in line)
    # A prune param re-runs exactly what prune feeds: DVC skips retrain and evaluate when
    # the kept set is the same as before, so which of them run depends on the baseline's.
    kept_before = pd.read_csv(project / "models/prune/decisions.csv").kept.all()
    expected = {"prune", "report"} | (set() if kept_before else {"retrain", "evaluate"})
    assert _stages_run(_queue_log(project, "ablation-prune-none")) == expected

    table = _run("ddb", "paper-table", cwd=project)
    assert (project / "reports/paper_table.md").read_text().strip() in table
    wga = table.split("## Mean accuracy")[0]
    ddb_row = next(line for line in wga.splitlines() if line.startswith("| DDB |"))
    assert re.search(r"\| \d+\.\d ± \d+\.\d \|", ddb_row)  # measured over 2 seeds
    rows = [line for line in wga.splitlines() if line.startswith("|")]
    notes = "\n".join(line for line in wga.splitlines() if not line.startswith("|"))
    # the waterbirds profile's column: its data.root and checkpoints are not on this machine,
    # said once below the table, never in a cell
    for missing in (
        "the dataset at data.root data/waterbird_complete95_forest2water2",
        "models.sam facebook/sam2.1-hiera-small (not in the Hugging Face cache)",
    ):
        assert missing in notes
        assert not any(missing in row for row in rows)
    assert "(paper 93.0)" in ddb_row  # the paper's Waterbirds figure beside ours
    shown = json.loads(_run("dvc", "exp", "show", "--json", cwd=project))
    revs = [r for c in shown for x in c.get("experiments") or [] for r in x["revs"]]
    assert {"ablation-prune-none", "embedded-seed0", "embedded-seed1"} <= {e["name"] for e in revs}
    seeds = {}
    for exp in revs:
        data = exp["data"]
        wga_erm = data["metrics"]["reports/metrics.json"]["data"]["erm"]["test"]["wga"]
        assert 0 <= wga_erm <= 1
        seeds[exp["name"]] = data["params"]["params.yaml"]["data"]["erm"]["seed"]
    assert seeds["embedded-seed0"] == 0 and seeds["embedded-seed1"] == 1
    # Seed 0 is the baseline's own run (nothing changed); seed 1 reaches every classifier
    # and what follows ERM (restored from the run cache the fixture filled, or run), never
    # the benchmark or the foundation report.
    seed1 = _queue_log(project, "embedded-seed1")
    reached = _stages_reached(seed1)
    assert {"erm", "baselines", "dfr", "disc", "select", "retrain", "evaluate", "report"} <= reached
    assert not reached & {"prepare", "foundation_report"}
    assert "Stage 'prepare' didn't change" in seed1
    assert (project / "reports/figures/paper_table.png").stat().st_size > 1000
