"""`make paper-table` and `make ablations`: many pipeline runs as DVC experiments.

Commands, not stages: each run is a `dvc exp run --queue -n <name> -S key=value ...`
experiment, the queue runs one at a time (`dvc exp run --run-all -j 1`, in temporary copies
of the repository, so the workspace is untouched and stages whose inputs did not change are
restored from DVC's run cache), and the tables are built from `dvc.api.exp_show` and each
experiment's metrics files in its git commit.

- paper table: every dataset profile of `report.datasets` (conf/dataset/<name>.yaml: the
  paper's whole recipe for that dataset, `-S dataset=<name>`) x `report.seeds` seeds. A seed s sets
  SEED_KEYS = s (classifier training: ERM, the baselines, DFR, DDB's retrain; through ERM's
  losses also which sources DDB selects). The foundation models are never retrained.
  A dataset whose data or checkpoints are missing is not run; the table lists what is
  missing below it. Writes reports/paper_table.md and reports/figures/paper_table.png.
- ablations: the controls of ABLATIONS on the default params (one seed). Writes
  reports/ablations.md.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ddb import paths, tables
from ddb.config import Config

log = logging.getLogger(__name__)

SEED_KEYS = ("erm.seed", "baselines.seed", "dfr.seed", "dac.seed", "disc.seed", "retrain.seed")

# name -> (what it tests, params overrides). "ddb" is the default params, the reference row.
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddb": ("DDB, default params (inversion, CLIPSeg masks, diffusion, both prune tests)", {}),
    "copy-paste": (
        "copy-paste: a real object of the target class (its true mask), no diffusion",
        {"generate.method": "copy_paste"},
    ),
    "no-inversion": (
        "no inversion (0 inversion images): class-word prompts",
        {"invert.num_images": 0},
    ),
    "true-masks": ("ground-truth masks instead of CLIPSeg's", {"segment.source": "truth"}),
    "prune-none": ("prune: none", {"prune.psi": False, "prune.attribution": False}),
    "prune-probability": ("prune: probability (Psi) only", {"prune.attribution": False}),
    "prune-attribution": ("prune: attribution only", {"prune.psi": False}),
    "prune-paired": (
        "prune: paired probability only (delta below the source's)",
        {"prune.psi": False, "prune.paired": True, "prune.attribution": False},
    ),
    "inversion-10": ("10 inversion images per class", {"invert.num_images": 10}),
    "inversion-20": ("20 inversion images per class", {"invert.num_images": 20}),
    "inversion-40": ("40 inversion images per class", {"invert.num_images": 40}),
    "box-masks": ("box masks (the mask's bounding box)", {"segment.mask_shape": "box"}),
}

# ---- what runs ---------------------------------------------------------------------------


def seed_overrides(seed: int) -> dict[str, Any]:
    return {key: seed for key in SEED_KEYS}


def paper_runs(datasets: list[str], seeds: int) -> dict[str, tuple[str, int, dict[str, Any]]]:
    """Experiment name -> (dataset, seed, overrides) for each dataset profile and seed: the
    profile is a Hydra group choice (`-S dataset=<name>`), composed by DVC from conf/."""
    runs = {}
    for dataset in datasets:
        for seed in range(seeds):
            overrides = {"dataset": dataset, **seed_overrides(seed)}
            runs[f"{dataset}-seed{seed}"] = (dataset, seed, overrides)
    return runs


def missing_requirements(config: Config) -> list[str]:
    """What a profile's runs need and this machine lacks (empty: it can run): the dataset
    folder in a format the adapters read, each checkpoint its stages load (as a folder or
    in the Hugging Face cache), the classifier.weights file, and the ImageNet weights in the
    torch cache."""
    from ddb.data.dataset import DataError
    from ddb.data.formats import detect_format

    missing = []
    root = Path(config.data.root)
    if root != paths.PREPARED:  # the embedded benchmark is built by prepare
        try:
            detect_format(root)
        except DataError:
            missing.append(f"the dataset at data.root {root}")
    for key, name in needed_checkpoints(config).items():
        if not Path(name).exists() and not in_hub_cache(name):
            missing.append(f"{key} {name} (not in the Hugging Face cache)")
    if config.classifier.weights and not Path(config.classifier.weights).is_file():
        missing.append(f"classifier.weights {config.classifier.weights}")
    if config.classifier.pretrained:
        import torch

        from ddb.models.classifier import ARCHITECTURES

        _, weights = ARCHITECTURES[config.classifier.arch]  # the weights build_classifier loads
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            missing.append(f"ImageNet {config.classifier.arch} weights ({cached})")
    return missing


def needed_checkpoints(config: Config) -> dict[str, str]:
    """params key -> checkpoint (a folder, or a hub id with an optional @revision), for each
    model the profile's stages load."""
    needed = {}
    if config.generate.method == "diffusion" or config.invert.num_images > 0:
        needed["models.diffusion"] = config.models.diffusion
    if config.models.inversion and config.invert.num_images > 0:
        needed["models.inversion"] = config.models.inversion
    if config.segment.source == "clipseg":
        needed["models.segmenter"] = config.models.segmenter
    elif config.segment.source == "langsam":
        needed["models.detector"] = config.models.detector
        needed["models.sam"] = config.models.sam
    return needed


def in_hub_cache(name: str) -> bool:
    """True if `name` (a hub id, `@revision` pinned or not) has its snapshot in the cache:
    the profiles pin the SD2 mirrors, and only that revision lets their column run."""
    from ddb.models.loaders import in_hub_cache as cached

    return cached(name)


def override_args(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments: Hydra overrides (DVC composes conf/ with them); lists and
    booleans in their flow style."""
    args = []
    for key, value in overrides.items():
        text = json.dumps(value) if isinstance(value, bool | list) else str(value)
        args += ["-S", f"{key}={text.replace(' ', '')}"]
    return args


def run_queue(runs: dict[str, dict[str, Any]], start: bool = True) -> None:
    """Queue each run under its name (replacing an older one of that name); with `start`,
    run them all, one at a time. Through the CLI: `dvc.api` has no queue API (only
    `exp_show` and `exp_save`), and `Repo().experiments` is DVC's internals."""
    for name, overrides in runs.items():
        subprocess.run(["dvc", "exp", "remove", name], capture_output=True)
        # Target `report`: every stage the tables read, not foundation_report (which
        # re-measures the fixed foundation models whenever the baselines change).
        cmd = ["dvc", "exp", "run", "--queue", "-n", name, *override_args(overrides), "report"]
        log.info("queue: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
    if start:
        subprocess.run(["dvc", "exp", "run", "--run-all", "-j", "1"], check=True)


def queued_message(names: list[str], command: str) -> str:
    return (
        f"queued {len(names)} experiments ({', '.join(names)}); start the workers (`dvc queue "
        f"start -j N`, one GPU each: docs/scaling.md), wait for `dvc queue status`, "
        f"then `ddb {command} --collect-only`"
    )


# ---- reading the results -----------------------------------------------------------------

METRICS_FILES = ("reports/metrics.json", "reports/prune.json")


def exp_rows() -> list[dict]:
    """`dvc.api.exp_show`'s rows (one flat dict per baseline and experiment) for every commit
    on HEAD's first-parent history, so an experiment stays found after its baseline commit is
    no longer HEAD (the tables are committed after the runs)."""
    import dvc.api

    return dvc.api.exp_show(num=-1)


def newest_experiments(rows: list[dict]) -> dict[str, str]:
    """Experiment name -> git rev of the newest finished experiment of that name, from
    `dvc.api.exp_show` rows. Queued, running and failed experiments are left out (a running
    or failed one shows its baseline's metrics); State is None for one run in the workspace.
    Newest by its commit's time: the rows' "Created" is rounded to the minute or the day."""
    found: dict[str, tuple[int, str]] = {}
    for row in rows:
        name = row.get("Experiment")
        if row.get("typ") == "baseline" or not name or row.get("State") not in (None, "Success"):
            continue
        time = commit_time(row["rev"])
        if name not in found or time > found[name][0]:  # a tie keeps DVC's order, newest first
            found[name] = (time, row["rev"])
    return {name: rev for name, (_, rev) in found.items()}


def commit_time(rev: str) -> int:
    out = subprocess.run(
        ["git", "show", "-s", "--format=%ct", rev], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


def committed_files(rev: str, files: tuple[str, ...]) -> dict[str, dict]:
    """The metrics files of an experiment's commit, whole: `dvc.api.exp_show` keeps only
    their numbers, flattened (no interval lists). The stages commit them (`cache: false`);
    one git lacks is left out."""
    found = {}
    for path in files:
        out = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        if out.returncode == 0:
            found[path] = json.loads(out.stdout)
    return found


def collect(names: list[str]) -> dict[str, dict[str, dict]]:
    """Experiment name -> {metrics file -> its content} for each of `names` that finished."""
    revs = newest_experiments(exp_rows())
    return {name: committed_files(revs[name], METRICS_FILES) for name in names if name in revs}


def collect_paper_results(
    experiments: dict[str, dict[str, dict]], runs: dict[str, tuple[str, int, dict]]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """dataset -> method -> {"wga", "mean_acc", "adjusted_mean_acc"} -> one value per seed (%)."""
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, (dataset, _seed, _overrides) in runs.items():
        metrics = experiments.get(name, {}).get("reports/metrics.json")
        if not metrics:
            log.warning("experiment %s has no metrics (failed or not run); left out", name)
            continue
        for method, by_split in metrics.items():
            cell = results.setdefault(dataset, {}).setdefault(method, {})
            for key in ("wga", "mean_acc", "adjusted_mean_acc"):
                cell.setdefault(key, []).append(100 * by_split["test"][key])
    return results


# ---- tables and figure -------------------------------------------------------------------


def _method_order(results: dict) -> list[str]:
    present = {m for by_method in results.values() for m in by_method}
    return [m for m in tables.METHODS if m in present] + sorted(present - set(tables.METHODS))


def paper_table_markdown(
    results: dict,
    missing: dict[str, list[str]],
    datasets: list[str],
    seeds: int,
    published: dict[str, tables.Published] | None = None,
) -> str:
    """Rows = methods, one column per dataset: our mean ± std over seeds, the paper's figure
    beside it in the same cell; what kept a column from running is listed once, below."""
    published = tables.published() if published is None else published
    methods = _method_order(results) or list(tables.METHODS)

    def beside(ours: str, method: str, dataset: str) -> str:
        figure = published[method].wga.get(dataset) if method in published else None
        return ours if figure is None else f"{ours} (paper {figure:.1f})"

    wga_rows, mean_rows = [], []
    for method in methods:
        _, train_groups, val_groups = tables.METHODS.get(method, (method, "?", "?"))
        wga, mean = [tables.method_name(method), f"{train_groups} / {val_groups}"], []
        for d in datasets:
            cell = {} if d in missing else results.get(d, {}).get(method, {})
            wga.append(beside(tables.mean_std(cell.get("wga", [])), method, d))
            both = [tables.mean_std(cell.get(k, [])) for k in ("mean_acc", "adjusted_mean_acc")]
            mean.append(tables.NONE if not cell else " / ".join(both))
        wga_rows.append(wga)
        mean_rows.append([tables.method_name(method), *mean])
    titles = [tables.dataset_title(d) for d in datasets]
    not_run = _not_run(missing, datasets)
    return "\n".join(
        [
            "# Paper table",
            "",
            "Regenerate with `make paper-table` (README). Test worst-group accuracy (%), mean "
            f"± std over {seeds} seeds; a seed sets {', '.join(SEED_KEYS)} (classifier "
            "training, and through ERM's losses DDB's sources; the foundation models are never "
            "retrained). The paper's figure stands beside ours, as (paper 93.0); the embedded "
            "benchmark has none. The groups column says which group labels a method uses, in "
            "train / in val.",
            "",
            tables.markdown_table(["method", "groups train/val", *titles], wga_rows),
            "",
            *not_run,
            _sources(methods, published, datasets),
            "",
            "## Mean accuracy",
            "",
            "Test accuracy (%), mean ± std over seeds, as **plain mean / adjusted mean** "
            "(adjusted: per-group accuracy weighted by the train group sizes); "
            f"{tables.NONE}: no result (the columns not run: above).",
            "",
            tables.markdown_table(["method", *titles], mean_rows),
            "",
            "![test WGA per method](figures/paper_table.png)",
            "",
        ]
    )


def _not_run(missing: dict[str, list[str]], datasets: list[str]) -> list[str]:
    """The columns not run and what each lacks, once; what they all lack on one line."""
    columns = [d for d in datasets if d in missing]
    if not columns:
        return []
    shared = [m for m in missing[columns[0]] if all(m in missing[d] for d in columns[1:])]
    shared = shared if len(columns) > 1 else []
    lines = [
        f"**Not run** (cells {tables.NONE}), for want of these on this machine (README, "
        "[The paper's setting, per dataset](../README.md#the-papers-setting-per-dataset)):",
        "",
    ]
    for d in columns:
        own = [m for m in missing[d] if m not in shared]
        if own:
            lines.append(f"- **{tables.dataset_title(d)}**: {'; '.join(own)}.")
    if shared:
        titles = ", ".join(tables.dataset_title(d) for d in columns)
        lines.append(f"- **{titles}**, each: {'; '.join(shared)}.")
    return [*lines, ""]


def _sources(
    methods: list[str], published: dict[str, tables.Published], datasets: list[str]
) -> str:
    """Where the paper figures in the table come from (published.yaml's sources)."""
    by_source: dict[str, list[str]] = {}
    for method in methods:
        entry = published.get(method)
        if entry and any(d in entry.wga for d in datasets):
            by_source.setdefault(entry.source, []).append(tables.method_name(method))
    if not by_source:
        return ""
    return "Paper figures: " + "; ".join(f"{', '.join(m)}: {s}" for s, m in by_source.items()) + "."


def plot_paper_table(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddb.utils import atomic_path

    published = tables.published()
    datasets = [d for d in results if results[d]]
    methods = _method_order(results)
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4 + 3 * len(datasets), 3.6))
    axes = np.atleast_1d(axes)
    for ax, dataset in zip(axes, datasets):
        values = [results[dataset].get(m, {}).get("wga", []) for m in methods]
        means = [np.mean(v) if v else 0 for v in values]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in values]
        x = np.arange(len(methods))
        ax.bar(x, means, yerr=stds, capsize=3, color="tab:blue", label="ours (mean ± std)")
        paper = [published[m].wga.get(dataset) if m in published else None for m in methods]
        if any(p is not None for p in paper):
            px = [i for i, p in enumerate(paper) if p is not None]
            ax.plot(px, [paper[i] for i in px], "k_", ms=14, mew=2, label="paper")
        ax.set_xticks(x, [tables.method_name(m) for m in methods], rotation=40, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("test WGA (%)")
        n = max((len(v) for v in values), default=0)
        ax.set_title(f"{tables.dataset_title(dataset)} ({n} seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def ablations_markdown(experiments: dict[str, dict[str, dict]]) -> str:
    """One row per control: DDB's test/val WGA, without pruning, and what prune kept."""
    header = [
        "control",
        "params",
        "DDB test WGA",
        "DDB val WGA",
        "DDB mean acc",
        "without pruning: test WGA",
        "generated",
        "kept",
        "independent classifier agrees (all / kept)",
    ]
    rows = []
    reference = None
    for key, (what, overrides) in ABLATIONS.items():
        files = experiments.get(f"ablation-{key}", {})
        metrics = files.get("reports/metrics.json")
        prune = files.get("reports/prune.json") or {}
        params = ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "defaults"
        if not metrics:
            rows.append([what, params, "not run", *[""] * (len(header) - 3)])
            continue
        reference = reference or (metrics if key == "ddb" else None)
        ddb, no_prune = metrics["ddb"], metrics["ddb_no_prune"]
        agree = []
        for class_name, target in (prune.get("per_target") or {}).items():
            a, k = target.get("independent_acc_all"), target.get("independent_acc_kept")
            agree.append(f"{class_name} {_pct(a)} / {_pct(k)}")
        rows.append(
            [
                what,
                params,
                _wga_cell(ddb["test"]),
                f"{100 * ddb['val']['wga']:.1f}",
                f"{100 * ddb['test']['mean_acc']:.1f}",
                f"{100 * no_prune['test']['wga']:.1f}",
                str(prune.get("generated", "?")),
                str(prune.get("kept", "?")),
                "; ".join(agree) or "n/a",
            ]
        )
    refs = ""
    if reference:
        refs = ", ".join(
            f"{tables.method_name(name)} {100 * reference[name]['test']['wga']:.1f}"
            for name in ("erm", "group_balanced", "jtt", "dfr")
            if name in reference
        )
        refs = f"References from the default run (test WGA): {refs}."
    return "\n".join(
        [
            "# Ablations and controls",
            "",
            "Regenerate with `make ablations` (README). Each row is one DVC experiment "
            "(`dvc exp show` lists them as `ablation-<name>`) on the embedded benchmark, seed "
            "0, with the params shown changed from params.yaml. Test and val WGA (%) of the "
            "retrained DDB model, the 95% bootstrap interval in brackets; 'without pruning' "
            "is the same run's retrain on every generated sample; the independent classifier "
            "(the group-balanced baseline, never used by DDB) says whether each target "
            "class's samples look like that class, over all samples / the kept ones.",
            "",
            tables.markdown_table(header, rows),
            "",
            refs,
            "",
        ]
    )


def _wga_cell(split: dict) -> str:
    """WGA in %, with its interval where the metrics carry one (as results.md writes it)."""
    interval = (split.get("ci") or {}).get("wga")
    return tables.interval_cell(split["wga"], interval) if interval else f"{100 * split['wga']:.1f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


# ---- the two commands ----------------------------------------------------------------------


def paper_table(config: Config, collect_only: bool = False, queue_only: bool = False) -> str:
    from ddb.config import profile_config
    from ddb.utils import write_text

    datasets = config.report.datasets
    missing = {d: m for d in datasets if (m := missing_requirements(profile_config(d)))}
    for dataset, what in missing.items():
        log.warning("%s: not run, missing %s", dataset, "; ".join(what))
    runs = paper_runs([d for d in datasets if d not in missing], config.report.seeds)
    if not collect_only:
        run_queue({name: overrides for name, (_, _, overrides) in runs.items()}, not queue_only)
        if queue_only:
            return queued_message(list(runs), "paper-table")
    results = collect_paper_results(collect(list(runs)), runs)
    text = paper_table_markdown(results, missing, list(datasets), config.report.seeds)
    write_text(paths.REPORTS / "paper_table.md", text)
    plot_paper_table(results, paths.FIGURES / "paper_table.png")
    return text


def ablations(
    config: Config,
    collect_only: bool = False,
    only: list[str] | None = None,
    queue_only: bool = False,
) -> str:
    from ddb.utils import write_text

    names = only or list(ABLATIONS)
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; known: {', '.join(ABLATIONS)}")
    if not collect_only:
        runs = {f"ablation-{name}": ABLATIONS[name][1] for name in names}
        run_queue(runs, not queue_only)
        if queue_only:
            return queued_message(list(runs), "ablations")
    # the table has a row for each control, run now or before
    text = ablations_markdown(collect([f"ablation-{name}" for name in ABLATIONS]))
    write_text(paths.REPORTS / "ablations.md", text)
    return text
