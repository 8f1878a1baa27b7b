"""index: the dataset's table, read once from its own files, with a hash of every image.

Writes models/index/: `table.csv` (the Waterbirds-style table, `img_filename` relative to
data.root, `y`, `place`, `split`, `group`, any extra columns, and `md5` of each image and
mask) and `summary.json` (root, format, counts per split and group).

Why a stage: DVC hashes a directory dep by looking up every file in it, once per stage that
lists it. With data.root a dep of the 11 stages that read images, a no-op `dvc repro` took
3.5 s on the embedded benchmark's 11k files and would take about a minute on CelebA's 200k.
Now only this stage lists data.root; the others list `table.csv`, which changes whenever
any image changes (its md5 does), so every dep stays honest at one directory walk.
This is also where the images are decoded once to check them (not in each stage).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ddb import paths
from ddb.config import Config
from ddb.data import formats
from ddb.data.dataset import SPLITS, check_images, groups_of, read_dataset
from ddb.utils import atomic_path, check_writable, md5_file, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    check_writable(paths.INDEX)
    root = Path(config.data.root)
    table = read_dataset(config.data)
    fmt = formats.detect_format(root) if config.data.format == "auto" else config.data.format
    log.info("index: %d images in %s (%s); decoding each to check it", len(table), root, fmt)
    listed_in = None if fmt == "waterbirds" else f"the {fmt} table of {root}"
    check_images(root, table, listed_in=listed_in, progress="index: decode")
    table["md5"] = file_hashes(root, table["img_filename"])
    if "mask_filename" in table.columns:
        table["mask_md5"] = file_hashes(root, table["mask_filename"])
    summary = index_summary(table, str(root), fmt, groups_of(config.data))
    with atomic_path(paths.INDEX) as out:
        out.mkdir()
        table.to_csv(out / "table.csv", index=False)
        write_json(out / "summary.json", summary)
    log.info("index: %s", summary["counts"])


def file_hashes(root: Path, names: pd.Series) -> list[str]:
    """md5 of each listed file ("" for an empty cell: an image without a mask)."""
    hashes = []
    for name in tqdm(
        names, desc="index: md5", unit="file", mininterval=2, leave=False, disable=None
    ):
        if pd.isna(name) or str(name) == "":
            hashes.append("")
            continue
        hashes.append(md5_file(root / str(name)))
    return hashes


def index_summary(table: pd.DataFrame, root: str, fmt: str, groups) -> dict:
    counts = {
        split: {groups.name(g): int((part["group"] == g).sum()) for g in range(groups.n_groups)}
        for split, code in SPLITS.items()
        for part in [table[table["split"] == code]]
    }
    return {"root": root, "format": fmt, "images": len(table), "counts": counts}
