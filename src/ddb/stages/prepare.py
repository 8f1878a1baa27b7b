"""prepare: build the embedded benchmark into data/prepared (Waterbirds format + masks).

Writes `metadata.csv` (img_id, img_filename, y, split, place, place_filename,
mask_filename, species), the images and the ground-truth bird masks, plus
`reports/data.md` and a grid of samples per group.
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
from tqdm import tqdm  # noqa: E402

from ddb import paths  # noqa: E402
from ddb.config import Config  # noqa: E402
from ddb.data import embedded  # noqa: E402
from ddb.data.dataset import SPLITS, WATERBIRDS_GROUPS, Groups  # noqa: E402
from ddb.utils import atomic_path, md5_listing, write_text  # noqa: E402

log = logging.getLogger(__name__)
SPLIT_NAMES = {code: name for name, code in SPLITS.items()}


def run(config: Config) -> None:
    cfg = config.prepare
    unknown = sorted(set(cfg.holdout_species) - set(embedded.BIRDS))
    if unknown:
        from ddb.config import ConfigError

        raise ConfigError(
            f"params.yaml: 'prepare.holdout_species' names unknown species {unknown}; "
            f"known: {', '.join(sorted(embedded.BIRDS))}"
        )
    sources = json.loads(paths.SOURCES.read_text()) if paths.SOURCES.is_file() else None
    if sources is None:
        raise embedded.SourcesError(
            f"{paths.SOURCES}: not found; run `ddb sources` (or `make setup`)"
        )
    embedded.verify_sources(sources)
    images = embedded.Sources.load(sources)
    table = build(images, cfg, paths.PREPARED)
    write_text(paths.PREPARED_MD5, md5_listing(paths.PREPARED))
    groups = WATERBIRDS_GROUPS
    write_text(paths.REPORTS / "data.md", data_report(table, groups, sources, cfg))
    save_grid(table, paths.PREPARED, groups, paths.FIGURES / "data_grid.png")
    log.info("prepared %d images in %s", len(table), paths.PREPARED)


def build(images: embedded.Sources, cfg, out_dir: Path) -> pd.DataFrame:
    """Composite every image; the folder appears only when complete."""
    rows = embedded.plan_rows(
        cfg.train_per_class, cfg.val_per_group, cfg.test_per_group, cfg.correlation
    )
    holdout = set(cfg.holdout_species)
    records = []
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        for img_id, (split, y, place) in enumerate(tqdm(rows, desc="prepare", unit="img")):
            rng = np.random.default_rng([cfg.seed, img_id])
            species = embedded.species_for(y, split, holdout)
            bird = species[int(rng.integers(len(species)))]
            scenes = embedded.scenes_for(place)
            scene = scenes[int(rng.integers(len(scenes)))]
            background = embedded.crop_scene(images.scenes[scene], rng, cfg.image_size)
            image, mask = embedded.paste_bird(
                background, images.birds[bird], rng, tuple(cfg.bird_scale)
            )
            img_filename = f"images/{bird}/{img_id:05d}.png"
            mask_filename = f"masks/{img_id:05d}.png"
            (tmp / img_filename).parent.mkdir(exist_ok=True)
            image.save(tmp / img_filename)
            mask.save(tmp / mask_filename)
            records.append(
                {
                    "img_id": img_id,
                    "img_filename": img_filename,
                    "y": y,
                    "split": split,
                    "place": place,
                    "place_filename": scene,
                    "mask_filename": mask_filename,
                    "species": bird,
                }
            )
        table = pd.DataFrame.from_records(records)
        table.to_csv(tmp / "metadata.csv", index=False)
    return table


def data_report(table: pd.DataFrame, groups: Groups, sources: dict, cfg) -> str:
    table = table.assign(group=groups.group_id(table["y"], table["place"]))
    counts = table.groupby(["split", "group"]).size().unstack(fill_value=0)
    lines = [
        "# The embedded benchmark",
        "",
        f"Built by `prepare` (seed {cfg.seed}, {cfg.image_size} px, train correlation "
        f"{cfg.correlation}). Group = (class, place); val and test are balanced in place "
        "within each class, as in Waterbirds.",
        "",
        "## Group counts",
        "",
        "| split | " + " | ".join(groups.names) + " | total |",
        "|---" * (groups.n_groups + 2) + "|",
    ]
    for split in sorted(counts.index):
        cells = [str(int(counts.loc[split].get(g, 0))) for g in range(groups.n_groups)]
        lines.append(
            f"| {SPLIT_NAMES[split]} | "
            + " | ".join(cells)
            + f" | {int(counts.loc[split].sum())} |"
        )
    lines += ["", "## Species and scenes per split", ""]
    for split in sorted(table["split"].unique()):
        part = table[table["split"] == split]
        for y, name in enumerate(groups.class_names):
            species = sorted(part.loc[part["y"] == y, "species"].unique())
            lines.append(f"- {SPLIT_NAMES[split]}, {name} ({len(species)}): {', '.join(species)}")
        for place, name in enumerate(groups.place_names):
            scenes = sorted(part.loc[part["place"] == place, "place_filename"].unique())
            lines.append(f"- {SPLIT_NAMES[split]}, {name} scenes: {', '.join(scenes)}")
    packages = ", ".join(f"`{p}` {v}" for p, v in sources["packages"].items())
    held = (
        ", ".join(cfg.holdout_species) or "none (species overlap across splits, as in Waterbirds)"
    )
    lines += [
        "",
        f"Species held out of train: {held}.",
        "",
        "## Sources and licence",
        "",
        f"Photographs from the Debian packages {packages}; "
        f"licence {sources['licence']}. The sha256 of each file is in `data/sources.json`. The "
        "birds' alpha channels give the ground-truth masks (`mask_filename`).",
        "",
        "![samples per group](figures/data_grid.png)",
        "",
    ]
    return "\n".join(lines)


def save_grid(
    table: pd.DataFrame, root: Path, groups: Groups, out: Path, per_group: int = 8
) -> None:
    """A PNG grid: one row per group of test images, with the mask outline of the first."""
    from PIL import Image

    test = table[table["split"] == SPLITS["test"]]
    fig, axes = plt.subplots(
        groups.n_groups, per_group, figsize=(per_group * 1.2, groups.n_groups * 1.3)
    )
    for g, row_axes in enumerate(np.atleast_2d(axes)):
        part = test[groups.group_id(test["y"], test["place"]) == g].head(per_group)
        for ax, (_, rec) in zip(row_axes, part.iterrows(), strict=False):
            ax.imshow(Image.open(root / rec["img_filename"]))
            ax.contour(
                np.asarray(Image.open(root / rec["mask_filename"])) > 0,
                colors="red",
                linewidths=0.5,
            )
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
        row_axes[0].set_ylabel(groups.name(g), fontsize=8)
    fig.suptitle("Embedded benchmark: test samples per group (red: ground-truth mask)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
