"""prune: keep the generated samples that are composed right (DDB step 6, thresholds only).

Reads the scores of `score` and drops a sample x' (source x of class i, target i') if any
switched-on condition holds:
- (a) `prune.psi`: ERM still believes the old class, p_old = p_ERM(i | x') >= Psi_i, where
  Psi_i is the mean ERM probability of class i over the class's selected sources (the
  paper's rule; Psi_i is close to 1 because the sources are the lowest-loss images);
- (a') `prune.paired`: ERM's belief did not fall by delta: p_old > p_ERM(i | x) - delta;
- (b) `prune.attribution`: too little of the attribution is evidence for i' inside the
  repainted region: attr_score < `prune.threshold` (see `score`).
Nothing expensive is computed here, so `dvc exp run -S prune.threshold=0.8` re-runs only
this stage and what follows. Writes models/prune/kept.csv (the manifest rows kept, the
input of `retrain`) and decisions.csv (every row, each condition's verdict),
reports/prune.json (counts; DVC metrics), reports/figures/prune_scores.png (a
histogram of each score with its threshold) and reports/figures/gallery.png (sources,
masks, samples, attribution maps, kept or pruned, with their scores).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from ddb import paths  # noqa: E402
from ddb.config import Config, PruneConfig  # noqa: E402
from ddb.data.dataset import groups_of, load_image  # noqa: E402
from ddb.utils import atomic_path, write_json  # noqa: E402

log = logging.getLogger(__name__)

GALLERY_PER_TARGET = 4  # sources shown per target class
CONDITIONS = ("psi", "paired", "attribution")  # PruneConfig's switches


def run(config: Config) -> None:
    scores = pd.read_csv(paths.SCORE / "scores.csv")
    class_names = groups_of(config.data).class_names
    selection = json.loads((paths.SELECT / "summary.json").read_text())
    psi = np.array([selection[name]["psi"] for name in class_names], dtype=float)
    decisions = prune_decisions(scores, psi, config.prune)
    table = pd.concat([scores, decisions], axis=1)
    summary = prune_summary(table, class_names, psi, config.prune)
    with atomic_path(paths.PRUNE) as out:
        out.mkdir()
        table[table.kept].to_csv(out / "kept.csv", index=False)
        table.to_csv(out / "decisions.csv", index=False)
    write_json(paths.REPORTS / "prune.json", summary)
    plot_scores(table, psi, class_names, config.prune, paths.FIGURES / "prune_scores.png")
    attributions = np.load(paths.SCORE / "attributions.npy")
    plot_gallery(table, attributions, config, paths.FIGURES / "gallery.png")
    log.info("prune: kept %d of %d", summary["kept"], summary["generated"])


def prune_decisions(scores: pd.DataFrame, psi: np.ndarray, cfg: PruneConfig) -> pd.DataFrame:
    """One boolean column per condition (True = that condition drops the sample) and `kept`."""
    old = scores.source_y.to_numpy()
    drop = pd.DataFrame(index=scores.index)
    drop["drop_psi"] = cfg.psi & (scores.p_old.to_numpy() >= psi[old])
    drop["drop_paired"] = cfg.paired & (scores.p_old > scores.p_old_source - cfg.delta)
    # the paper keeps a sample if rho = sum(M * IG) > P: it drops rho <= P
    measured = scores.attr_score < cfg.threshold
    if cfg.measure == "sum":
        measured = scores.attr_sum <= cfg.threshold
    drop["drop_attribution"] = cfg.attribution & measured
    drop["kept"] = ~drop.any(axis=1)
    return drop


def prune_summary(table: pd.DataFrame, class_names, psi: np.ndarray, cfg: PruneConfig) -> dict:
    """Counts overall and per target class; each condition's count also when switched off."""
    every_condition = dataclasses.replace(cfg, psi=True, paired=True, attribution=True)
    would_drop = prune_decisions(table, psi, every_condition)
    summary = {
        "generated": len(table),
        "kept": int(table.kept.sum()),
        "pruned_share": float(1 - table.kept.mean()) if len(table) else 0.0,
        "psi": dict(zip(class_names, psi.tolist())),
        "conditions_on": [c for c in CONDITIONS if getattr(cfg, c)],
        "would_drop": {c: int(would_drop[f"drop_{c}"].sum()) for c in CONDITIONS},
        "per_target": {},
    }
    for c, name in enumerate(class_names):
        part = table[table.y == c]
        entry = {"generated": len(part), "kept": int(part.kept.sum())}
        if "p_independent" in part:
            entry["independent_acc_all"] = _mean(part.p_independent > 0.5)
            entry["independent_acc_kept"] = _mean(part.p_independent[part.kept] > 0.5)
        summary["per_target"][name] = entry
    return summary


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def plot_scores(table, psi, class_names, cfg: PruneConfig, out) -> None:
    """Histograms of p_old (per source class, with Psi), p_old minus the source's, and the
    attribution score (with prune.threshold)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    bins = np.linspace(0, 1, 26)
    for c, name in enumerate(class_names):
        part = table[table.source_y == c]
        axes[0].hist(part.p_old, bins, alpha=0.6, label=f"from {name}")
        axes[0].axvline(psi[c], ls="--", color=f"C{c}")
    axes[0].set_title("p_ERM(old class | x'); dashed: Psi_i", fontsize=8)
    axes[0].legend(fontsize=7)
    axes[1].hist(table.p_old - table.p_old_source, np.linspace(-1, 1, 41))
    axes[1].axvline(-cfg.delta, ls="--", color="k")
    axes[1].set_title("p_old(x') - p_old(x); dashed: -delta", fontsize=8)
    axes[2].hist(table.attr_score, bins)
    axes[2].axvline(cfg.threshold, ls="--", color="k")
    axes[2].set_title("attr_score (evidence for i' in the mask); dashed: threshold", fontsize=8)
    for ax in axes:
        ax.set_ylabel("samples", fontsize=7)
    fig.tight_layout()
    _save(fig, out)


def plot_gallery(table, attributions, config: Config, out) -> None:
    """For a few sources per target class (kept and pruned ones): source, mask, sample,
    attribution map and the scores."""
    rows = gallery_rows(table, len(groups_of(config.data).class_names))
    columns = ["source", "mask", "generated", "attribution (IG)"]
    fig, axes = plt.subplots(
        max(1, len(rows)), 4, figsize=(7, 1.75 * max(1, len(rows))), squeeze=False
    )
    names = groups_of(config.data).class_names
    for r, i in enumerate(rows):
        row = table.loc[i]
        source = load_image(f"{config.data.root}/{row.source_filename}")
        mask = np.asarray(Image.open(paths.SEGMENT / row.mask_filename))
        sample = load_image(paths.GENERATE / row.img_filename)
        attribution = attributions[i].astype(np.float32)
        limit = float(np.abs(attribution).max()) or 1.0
        panels = [(source, None), (mask, "gray"), (sample, None), (attribution, "bwr")]
        for c, (panel, cmap) in enumerate(panels):
            ax = axes[r, c]
            kwargs = {"vmin": -limit, "vmax": limit} if cmap == "bwr" else {}
            ax.imshow(panel, cmap=cmap, **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        verdict = "KEPT" if row.kept else "pruned"
        axes[r, 0].set_ylabel(f"{names[row.source_y]}\n-> {names[row.y]}", fontsize=7)
        axes[r, 3].text(
            1.05,
            0.5,
            f"{verdict}\np_old {row.p_old:.2f}\nsrc {row.p_old_source:.2f}\n"
            f"attr {row.attr_score:.2f}",
            transform=axes[r, 3].transAxes,
            fontsize=7,
            va="center",
            color="green" if row.kept else "red",
        )
    fig.tight_layout()
    _save(fig, out)


def gallery_rows(table: pd.DataFrame, n_classes: int) -> list[int]:
    """Up to GALLERY_PER_TARGET rows per target class, half kept and half pruned where
    possible; the first ones in manifest order, so the choice is stable."""
    chosen = []
    for c in range(n_classes):
        part = table[table.y == c]
        kept = list(part.index[part.kept])
        pruned = list(part.index[~part.kept])
        half = GALLERY_PER_TARGET // 2
        pick = kept[:half] + pruned[:half]
        rest = kept[half:] + pruned[half:]
        chosen += pick + rest[: GALLERY_PER_TARGET - len(pick)]
    return chosen


def _save(fig, out) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
