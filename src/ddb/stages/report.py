"""report: reports/results.md (one row per method) and its figures.

Reads reports/metrics.json, the per-epoch histories of the training stages and the written
discussion reports/discussion.md (by hand: why the methods order as they do); writes
reports/results.md, reports/figures/group_accuracy.png and
reports/figures/learning_curves.png.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ddb import paths  # noqa: E402
from ddb.config import Config  # noqa: E402
from ddb.data.dataset import groups_of  # noqa: E402
from ddb.tables import METHODS, interval_cell, markdown_table, method_name  # noqa: E402
from ddb.utils import atomic_path, write_text  # noqa: E402

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    metrics = json.loads(paths.METRICS.read_text())
    histories = {method: paths.model_dir(method) / "history.csv" for method in metrics}
    histories = {m: pd.read_csv(p) for m, p in histories.items() if p.is_file()}
    # per-epoch histories only (DFR's history is its grid of C)
    histories = {m: h for m, h in histories.items() if "epoch" in h.columns}
    predictions = pd.read_csv(paths.PREDICTIONS / "predictions.csv")
    test = predictions[(predictions.split == "test") & (predictions.method == next(iter(metrics)))]
    sizes = {
        name: int((test.group == g).sum()) for g, name in enumerate(groups_of(config.data).names)
    }
    sizes = {name: n for name, n in sizes.items() if n}
    text = results_markdown(metrics, config.evaluate.confidence, sizes)
    discussion = paths.DISCUSSION.read_text() if paths.DISCUSSION.is_file() else ""
    write_text(
        paths.REPORTS / "results.md",
        text + ordering_markdown(metrics, discussion) + ddb_stages_markdown(read_ddb_summaries()),
    )
    plot_group_accuracy(metrics, paths.FIGURES / "group_accuracy.png")
    plot_learning_curves(histories, paths.FIGURES / "learning_curves.png")
    log.info("wrote %s", paths.REPORTS / "results.md")


def read_ddb_summaries() -> dict:
    """What each DDB stage achieved, from the summaries the stages wrote (absent: skipped)."""
    files = {
        "select": paths.SELECT / "summary.json",
        "segment": paths.SEGMENT / "summary.json",
        "invert": paths.INVERT / "summary.json",
        "prune": paths.REPORTS / "prune.json",
        "ddb": paths.DDB / "summary.json",
    }
    return {name: json.loads(p.read_text()) for name, p in files.items() if p.is_file()}


def ddb_stages_markdown(summaries: dict) -> str:
    """A section per DDB stage, so that a weak stage is visible when DDB falls short."""
    if not summaries:
        return ""
    lines = ["", "## What each DDB stage achieved", ""]
    if "select" in summaries:
        for name, s in summaries["select"].items():
            inversion = (
                f"{s['inversion_images']} inversion images (ERM loss >= "
                f"{s['min_inversion_loss']:.3g})"
                if s["inversion_images"]
                else "no inversion images"
            )
            lines.append(
                f"- **select** ({name}): {s['sources']} sources (ERM loss <= "
                f"{s['max_source_loss']:.3g}, Psi = {s['psi']:.3f}), {inversion}."
            )
    if "segment" in summaries:
        s = summaries["segment"]
        iou = f", IoU against the true masks {s['iou']:.3f}" if "iou" in s else ""
        lines.append(
            f"- **segment**: {s['detected']} of {s['images']} images detected "
            f"({s['skipped_sources']} sources skipped), mean mask area {s['mean_area']:.3f}{iou}."
        )
    for s in summaries.get("invert", {}).values():
        if not s["images"]:
            lines.append(f"- **invert**: none (the control); prompts name '{s['token']}'.")
            continue
        lines.append(
            f"- **invert** ({s['token']}): inversion loss {s['initial_loss']:.4f} -> "
            f"{s['final_loss']:.4f} on {s['images']} images."
        )
    if "prune" in summaries:
        s = summaries["prune"]
        lines.append(
            f"- **generate / prune**: {s['generated']} generated, {s['kept']} kept "
            f"({100 * s['pruned_share']:.1f}% pruned; conditions on: "
            f"{', '.join(s['conditions_on']) or 'none'}; each would drop "
            + ", ".join(f"{c} {n}" for c, n in s["would_drop"].items())
            + ")."
        )
        for name, t in s["per_target"].items():
            if t.get("independent_acc_all") is not None:
                kept = t.get("independent_acc_kept")
                kept = f"{100 * kept:.1f}%" if kept is not None else "n/a"
                lines.append(
                    f"  - as {name}: {t['generated']} generated, {t['kept']} kept; the "
                    f"independent classifier (group-balanced baseline) calls "
                    f"{100 * t['independent_acc_all']:.1f}% of them {name} ({kept} of the kept)."
                )
    if "ddb" in summaries:
        s = summaries["ddb"]
        lines.append(
            f"- **retrain**: {s['original']} original + "
            + ", ".join(f"{n} generated {c}" for c, n in s["generated"].items())
            + f"; selected epoch {s['best_epoch']}."
        )
    lines += [
        "",
        "![prune scores](figures/prune_scores.png)",
        "",
        "![gallery of generated samples](figures/gallery.png)",
        "",
    ]
    return "\n".join(lines)


def results_table(metrics: dict, split: str = "test") -> str:
    """Markdown table: one row per method, accuracies in % with intervals."""
    group_names = list(next(iter(metrics.values()))[split]["groups"])
    header = [
        "method",
        "train groups",
        "val groups",
        "WGA",
        "mean acc",
        "adjusted mean acc",
        *group_names,
    ]
    rows = []
    for method, by_split in metrics.items():
        m = by_split[split]
        name, train_groups, val_groups = METHODS.get(method, (method, "?", "?"))
        cells = [
            name,
            train_groups,
            val_groups,
            interval_cell(m["wga"], m["ci"]["wga"]),
            interval_cell(m["mean_acc"], m["ci"]["mean_acc"]),
            interval_cell(m["adjusted_mean_acc"], m["ci"]["adjusted_mean_acc"]),
            *(interval_cell(m["groups"][g], m["ci"]["groups"][g]) for g in group_names),
        ]
        rows.append(cells)
    return markdown_table(header, rows)


def results_markdown(metrics: dict, confidence: float, test_sizes: dict[str, int]) -> str:
    sizes = ", ".join(f"{g} {n}" for g, n in test_sizes.items())
    level = f"{100 * confidence:g}%"
    return "\n".join(
        [
            "# Results",
            "",
            f"Test accuracy (%) per method, with {level} intervals in brackets (Wilson for each "
            "group; a bootstrap within groups for WGA and the means). Test group sizes: "
            f"{sizes}.",
            "",
            "- **WGA**: worst-group accuracy, the minimum over groups.",
            "- **mean acc**: plain accuracy over all test samples.",
            "- **adjusted mean acc**: per-group test accuracy weighted by the *train* group "
            "sizes (the GroupDRO/JTT/DFR convention). The two means differ when test is "
            "balanced and train is not; papers mix them, so both are given, labelled.",
            "- **train groups / val groups**: which group labels a method uses.",
            "",
            results_table(metrics, "test"),
            "",
            "## Validation",
            "",
            results_table(metrics, "val"),
            "",
            "![per-group test accuracy](figures/group_accuracy.png)",
            "",
            "![validation WGA per epoch](figures/learning_curves.png)",
            "",
        ]
    )


def plot_group_accuracy(metrics: dict, out: Path) -> None:
    methods = list(metrics)
    group_names = list(metrics[methods[0]]["test"]["groups"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.6 * len(group_names) + 4, 3.5))
    for i, method in enumerate(methods):
        m = metrics[method]["test"]
        acc = np.array([m["groups"][g] for g in group_names])
        ci = np.array([m["ci"]["groups"][g] for g in group_names])
        x = np.arange(len(group_names)) + (i - (len(methods) - 1) / 2) * width
        label = f"{method_name(method)} (WGA {100 * m['wga']:.1f})"
        ax.bar(x, 100 * acc, width, yerr=100 * np.abs(ci.T - acc), capsize=2, label=label)
    ax.set_xticks(np.arange(len(group_names)), group_names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Per-group test accuracy", fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def plot_learning_curves(histories: dict[str, pd.DataFrame], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for method, history in histories.items():
        ax.plot(
            history["epoch"],
            100 * history["val_wga"],
            marker="o",
            ms=3,
            label=method_name(method),
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation WGA (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Validation worst-group accuracy per epoch", fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def _save(fig, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def ordering_markdown(metrics: dict, discussion: str) -> str:
    """Methods ranked by test WGA, where DDB stands against the others, and the written
    discussion (reports/discussion.md: why, from the controls in reports/ablations.md)."""
    test = {method: by_split["test"] for method, by_split in metrics.items()}
    ranked = sorted(test, key=lambda m: -test[m]["wga"])
    name = {m: method_name(m) for m in test}
    uses_train_groups = {m for m in test if METHODS.get(m, ("", "?"))[1] == "yes"}
    lines = ["", "## Ordering", ""]
    lines.append(
        "By test WGA (†: uses train group labels): "
        + " > ".join(
            f"{name[m]}{'†' if m in uses_train_groups else ''} {100 * test[m]['wga']:.1f}"
            for m in ranked
        )
        + "."
    )
    if "ddb" in test:
        others = {
            "ERM": ["erm"],
            "the best method without train group labels": [
                m
                for m in test
                if m not in uses_train_groups and m not in ("erm", "ddb", "ddb_no_prune")
            ],
            "the best method with train group labels": sorted(uses_train_groups),
        }
        lines.append("")
        for label, candidates in others.items():
            candidates = [m for m in candidates if m in test]
            if not candidates:
                continue
            best = max(candidates, key=lambda m: test[m]["wga"])
            diff = 100 * (test["ddb"]["wga"] - test[best]["wga"])
            apart = _intervals_apart(test["ddb"]["ci"]["wga"], test[best]["ci"]["wga"])
            which = label if label == name[best] else f"{label} ({name[best]})"
            lines.append(
                f"- DDB against {which}: {diff:+.1f} points "
                f"({'the intervals do not overlap' if apart else 'the intervals overlap'})."
            )
    if discussion.strip():
        lines += ["", discussion.strip()]
    lines += [
        "",
        "The controls (copy-paste, no inversion, true masks, prune variants) are in "
        "[ablations.md](ablations.md); the multi-seed table in "
        "[paper_table.md](paper_table.md).",
        "",
    ]
    return "\n".join(lines)


def _intervals_apart(a: list[float], b: list[float]) -> bool:
    return a[1] < b[0] or b[1] < a[0]
