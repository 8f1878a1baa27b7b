"""`make paper-table` and `make ablations`: many pipeline runs as DVC experiments.

Commands, not stages: each run is a `dvc exp run --queue -n <name> -S key=value ...`
experiment, the queue runs one at a time (`dvc exp run --run-all -j 1`, in temporary copies
of the repository, so the workspace is untouched and stages whose inputs did not change are
restored from DVC's run cache), and the tables are built from `dvc exp show --json`.

- paper table: every dataset profile of `report.datasets` (conf/dataset/<name>.yaml: the
  paper's whole recipe for that dataset, `-S dataset=<name>`) x `report.seeds` seeds. A seed s sets
  SEED_KEYS = s (classifier training: ERM, the baselines, DFR, DDB's retrain; through ERM's
  losses also which sources DDB selects). The foundation models are never retrained.
  A dataset whose data or checkpoints are missing is not run; its column says what is
  missing. Writes reports/paper_table.md and reports/figures/paper_table.png.
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

from ddb import paths
from ddb.config import Config

log = logging.getLogger(__name__)

SEED_KEYS = ("erm.seed", "baselines.seed", "dfr.seed", "retrain.seed")

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

# Published test WGA (%), ../shared/docs/method.md; None: not published.
DATASET_TITLES = {
    "embedded": "embedded benchmark",
    "waterbirds": "Waterbirds",
    "celeba": "CelebA",
    "metashift": "MetaShift",
}
PUBLISHED_WGA = {
    "erm": {"waterbirds": 74.6, "celeba": 42.2, "metashift": 67.0},
    "jtt": {"waterbirds": 86.7, "celeba": 81.1, "metashift": 64.6},
    "group_dro": {"waterbirds": 91.4, "celeba": 88.9},
    "dfr": {"waterbirds": 92.9, "celeba": 88.3, "metashift": 72.8},
    "ddb_no_prune": {"waterbirds": 91.28, "celeba": 81.7, "metashift": 80.6},
    "ddb": {"waterbirds": 93.0, "celeba": 85.8, "metashift": 81.2},
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
    from ddb.data.formats import detect_format
    from ddb.data.waterbirds import DataError

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
    """params key -> checkpoint, for each model the profile's stages load."""
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


def in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(hub_id, local_files_only=True)
    except Exception:  # not cached, or not a hub id at all
        return False
    return True


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
    run them all, one at a time."""
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
        f"start -j N`, one GPU each: README, More than one GPU), wait for `dvc queue status`, "
        f"then `ddb {command} --collect-only`"
    )


# ---- reading the results -----------------------------------------------------------------


def experiments_by_name(show: list[dict]) -> dict[str, dict]:
    """The newest finished experiment of each name in `dvc exp show --json` output -> its
    data ({"params", "metrics", "timestamp", "rev"}). Queued, running and failed
    experiments are left out (a running one shows its baseline's metrics)."""
    found: dict[str, dict] = {}
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state")
            if state not in (None, "success"):  # None: run in the workspace, finished
                continue
            for rev in experiment.get("revs") or []:
                name, data = rev.get("name"), rev.get("data") or {}
                older = found.get(name) if name else None
                if name and (older is None or _newer(data, older)):
                    found[name] = {**data, "rev": rev.get("rev")}
    return found


def _newer(a: dict, b: dict) -> bool:
    return (a.get("timestamp") or "") > (b.get("timestamp") or "")


def metrics_file(data: dict, name: str) -> dict | None:
    entry = (data.get("metrics") or {}).get(name) or {}
    return entry.get("data")


def with_full_metrics(experiments: dict[str, dict], names: list[str]) -> dict[str, dict]:
    """`dvc exp show` keeps only a metrics file's numbers (no interval lists); read the
    files themselves from each experiment's commit where git has it."""
    for name in names:
        data = experiments.get(name)
        if not data or not data.get("rev"):
            continue
        for path, entry in (data.get("metrics") or {}).items():
            out = subprocess.run(
                ["git", "show", f"{data['rev']}:{path}"], capture_output=True, text=True
            )
            if out.returncode == 0:
                entry["data"] = json.loads(out.stdout)
    return experiments


def exp_show() -> list[dict]:
    out = subprocess.run(
        ["dvc", "exp", "show", "--json", "--all-commits"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def collect_paper_results(
    experiments: dict[str, dict], runs: dict[str, tuple[str, int, dict]]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """dataset -> method -> {"wga", "mean_acc", "adjusted_mean_acc"} -> one value per seed (%)."""
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, (dataset, _seed, _overrides) in runs.items():
        metrics = metrics_file(experiments.get(name, {}), "reports/metrics.json")
        if not metrics:
            log.warning("experiment %s has no metrics (failed or not run); left out", name)
            continue
        for method, by_split in metrics.items():
            cell = results.setdefault(dataset, {}).setdefault(method, {})
            for key in ("wga", "mean_acc", "adjusted_mean_acc"):
                cell.setdefault(key, []).append(100 * by_split["test"][key])
    return results


# ---- tables and figure -------------------------------------------------------------------


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1f} ± {std:.1f}"


def _method_order(results: dict) -> list[str]:
    from ddb.stages.report import METHODS

    present = {m for by_method in results.values() for m in by_method}
    return [m for m in METHODS if m in present] + sorted(present - set(METHODS))


def paper_table_markdown(
    results: dict, missing: dict[str, list[str]], datasets: list[str], seeds: int
) -> str:
    """Rows = methods, columns = datasets (measured mean ± std over seeds, then the paper's)."""
    from ddb.stages.report import METHODS

    methods = _method_order(results) or list(METHODS)
    published_datasets = {d for by_dataset in PUBLISHED_WGA.values() for d in by_dataset}
    header = ["method", "groups train/val"]
    for d in datasets:
        header.append(f"{DATASET_TITLES.get(d, d)} (ours)")
        if d in published_datasets:
            header.append(f"{DATASET_TITLES.get(d, d)} (paper)")
    lines = _table_head(header)
    for row, method in enumerate(methods):
        name, train_groups, val_groups = METHODS.get(method, (method, "?", "?"))
        cells = [name, f"{train_groups} / {val_groups}"]
        for d in datasets:
            if d in missing:  # what is missing, once per column
                cells.append(f"not run: {'; '.join(missing[d])}, see README" if row == 0 else "〃")
            else:
                cells.append(mean_std(results.get(d, {}).get(method, {}).get("wga", [])))
            if d in published_datasets:
                published = PUBLISHED_WGA.get(method, {}).get(d)
                cells.append("–" if published is None else f"{published:g}")
        lines.append(_row(cells))
    wga = "\n".join(lines)

    mean_header = ["method", *(DATASET_TITLES.get(d, d) for d in datasets)]
    mean_lines = _table_head(mean_header)
    for method in methods:
        cells = [METHODS.get(method, (method,))[0]]
        for d in datasets:
            cell = results.get(d, {}).get(method)
            if d in missing or not cell:
                cells.append("not run" if d in missing else "–")
            else:
                cells.append(
                    f"{mean_std(cell['mean_acc'])} / {mean_std(cell['adjusted_mean_acc'])}"
                )
        mean_lines.append(_row(cells))
    return "\n".join(
        [
            "# Paper table",
            "",
            "Regenerate with `make paper-table` (README). Test worst-group accuracy (%), mean "
            f"± std over {seeds} seeds; a seed sets {', '.join(SEED_KEYS)} (classifier "
            "training, and through ERM's losses DDB's sources; the foundation models are never "
            "retrained). The paper's figures (Waterbirds, CelebA, MetaShift) are beside ours; "
            "the embedded benchmark has none. The groups column says which group labels a "
            "method uses, in train / in val.",
            "",
            wga,
            "",
            "## Mean accuracy",
            "",
            "Test accuracy (%), mean ± std over seeds, as **plain mean / adjusted mean** "
            "(adjusted: per-group accuracy weighted by the train group sizes).",
            "",
            "\n".join(mean_lines),
            "",
            "![test WGA per method](figures/paper_table.png)",
            "",
        ]
    )


def plot_paper_table(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddb.stages.report import METHODS
    from ddb.utils import atomic_path

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
        published = [PUBLISHED_WGA.get(m, {}).get(dataset) for m in methods]
        if any(p is not None for p in published):
            px = [i for i, p in enumerate(published) if p is not None]
            ax.plot(px, [published[i] for i in px], "k_", ms=14, mew=2, label="paper")
        ax.set_xticks(x, [METHODS.get(m, (m,))[0] for m in methods], rotation=40, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("test WGA (%)")
        n = max((len(v) for v in values), default=0)
        ax.set_title(f"{DATASET_TITLES.get(dataset, dataset)} ({n} seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def ablations_markdown(experiments: dict[str, dict]) -> str:
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
    lines = _table_head(header)
    reference = None
    for key, (what, overrides) in ABLATIONS.items():
        data = experiments.get(f"ablation-{key}", {})
        metrics = metrics_file(data, "reports/metrics.json")
        prune = metrics_file(data, "reports/prune.json") or {}
        params = ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "defaults"
        if not metrics:
            lines.append(_row([what, params, "not run", *[""] * (len(header) - 3)]))
            continue
        reference = reference or (metrics if key == "ddb" else None)
        ddb, no_prune = metrics["ddb"], metrics["ddb_no_prune"]
        agree = []
        for class_name, target in (prune.get("per_target") or {}).items():
            a, k = target.get("independent_acc_all"), target.get("independent_acc_kept")
            agree.append(f"{class_name} {_pct(a)} / {_pct(k)}")
        lines.append(
            _row(
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
        )
    from ddb.stages.report import METHODS

    refs = ""
    if reference:
        refs = ", ".join(
            f"{METHODS[name][0]} {100 * reference[name]['test']['wga']:.1f}"
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
            "\n".join(lines),
            "",
            refs,
            "",
        ]
    )


def _wga_cell(split: dict) -> str:
    """WGA in %, with its interval where the metrics carry one (as results.md writes it)."""
    from ddb.stages.report import _cell

    interval = (split.get("ci") or {}).get("wga")
    return _cell(split["wga"], interval) if interval else f"{100 * split['wga']:.1f}"


def _table_head(header: list[str]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header)]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


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
    results = collect_paper_results(experiments_by_name(exp_show()), runs)
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
    experiments = experiments_by_name(exp_show())
    shown = [f"ablation-{name}" for name in ABLATIONS]  # the table has a row for each
    text = ablations_markdown(with_full_metrics(experiments, shown))
    write_text(paths.REPORTS / "ablations.md", text)
    return text
