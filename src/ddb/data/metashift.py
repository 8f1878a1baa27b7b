"""MetaShift cat vs dog, read from the folders that DISC's `MetaDatasetCatDog` (and the DDB
code, which copies it) reads: `metashifts/MetaDatasetCatDog/` of DISC's download.

    train/cat/cat(sofa)/  train/cat/cat(bed)/      cat, indoor
    train/dog/dog(bench)/ train/dog/dog(bike)/     dog, outdoor
    test/cat/cat(shelf)/  test/dog/dog(shelf)/     both on shelves (indoor)

Files are named by Visual Genome id (`2317182.jpg`). `read_metashift` returns the
Waterbirds-style table (img_filename, y, place, split, plus `context`: sofa, bed, ...);
nothing is copied.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ddb.data.dataset import DataError

log = logging.getLogger(__name__)

CLASS_NAMES = ("cat", "dog")
PLACE_NAMES = ("indoor", "outdoor")
# DISC's order: cat before dog, and (sofa, bed), (bench, bike) within train
FOLDERS = {
    "train": {"cat": ("sofa", "bed"), "dog": ("bench", "bike")},
    "test": {"cat": ("shelf",), "dog": ("shelf",)},
}
PLACE_OF = {"sofa": 0, "bed": 0, "shelf": 0, "bench": 1, "bike": 1}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_metashift(root: str | Path, val_share: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """The MetaShift cat/dog folders at `root` as a Waterbirds-style table.

    y: cat 0, dog 1. place: indoor 0 (sofa, bed, shelf), outdoor 1 (bench, bike). split:
    every train/ image is train (0); the shelf images are split into val (1) and test (2)
    as DISC's MetaDatasetCatDog does (disc/dataset/meta_dataset_cat_dog.py):

    - the test list is test/cat/cat(shelf)'s files, then test/dog/dog(shelf)'s;
    - `val, _ = sklearn.model_selection.train_test_split(np.arange(len(list)),
      test_size=0.85, random_state=0)`: positions, not stratified by class, shuffled;
      the first part (15%, rounded down) is val, the rest test (see val_positions).

    Here test_size is `1 - val_share` and random_state is `seed`, so the defaults are
    DISC's. DISC lists each folder with os.listdir, whose order depends on the file system
    (so its split is not the same on every machine); here each folder's files are sorted by
    name, which gives DISC's split wherever os.listdir returns them sorted, and the same
    split on every machine. Hidden files (`.DS_Store`) are skipped; any other unexpected
    entry, an empty or a missing folder is a DataError.
    """
    if not 0.0 < val_share < 1.0:
        raise ValueError(f"val_share must lie strictly between 0 and 1, not {val_share}")
    root = Path(root)
    rows = []
    for part, classes in FOLDERS.items():
        _check_entries(root / part, [*classes], "class folders")
        for y, (animal, contexts) in enumerate(classes.items()):
            folders = [f"{animal}({context})" for context in contexts]
            _check_entries(root / part / animal, folders, f"{animal} context folders")
            for context, folder in zip(contexts, folders):
                for name in _image_names(root / part / animal / folder):
                    rows.append((f"{part}/{animal}/{folder}/{name}", y, PLACE_OF[context], context))
    table = pd.DataFrame(rows, columns=["img_filename", "y", "place", "context"])
    is_test = table["img_filename"].str.startswith("test/").to_numpy()
    split = np.where(is_test, 2, 0)
    test_rows = np.flatnonzero(is_test)
    try:
        val = val_positions(len(test_rows), val_share, seed)
    except ValueError as err:
        raise DataError(
            f"{root / 'test'}: the shelf folders hold {len(test_rows)} images, too few to "
            f"split into val ({val_share:.0%}) and test ({err}); add shelf images or raise "
            "val_share"
        ) from err
    split[test_rows[val]] = 1
    table.insert(3, "split", split)
    log.info(
        "%s: %d MetaShift images (%d train, %d val, %d test)",
        root,
        len(table),
        int((split == 0).sum()),
        int((split == 1).sum()),
        int((split == 2).sum()),
    )
    return table


def val_positions(n: int, val_share: float = 0.15, seed: int = 0) -> np.ndarray:
    """Positions (in the shelf list) that DISC's call puts in val:
    `val, _ = train_test_split(np.arange(n), test_size=1 - val_share, random_state=seed)`.

    Computed here as scikit-learn's ShuffleSplit computes it: n_test = ceil(test_size * n),
    n_val = n - n_test, and val = the positions at n_test .. n of
    np.random.RandomState(seed).permutation(n). Written out so that reading MetaShift
    neither imports scikit-learn (seconds) nor depends on its version;
    tests/test_metashift.py checks it against train_test_split itself.
    """
    test_size = round(1.0 - val_share, 12)  # 1 - 0.15 is 0.85 exactly; others as written
    n_test = math.ceil(test_size * n)
    if n - n_test <= 0:
        raise ValueError(f"{n} images leave no val image at val_share {val_share}")
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n_test:]


def _check_entries(folder: Path, expected: list[str], what: str) -> None:
    """`folder` holds exactly the sub-folders `expected` (hidden entries aside)."""
    if not folder.is_dir():
        raise DataError(
            f"{folder}: folder not found; a MetaShift cat/dog folder (DISC's "
            f"MetaDatasetCatDog) has {_layout()}: point data.root at the folder that holds "
            "train/ and test/, or unpack the download again"
        )
    for name in expected:
        if not (folder / name).is_dir():
            raise DataError(
                f"{folder / name}: folder not found; {folder} must hold the {what} "
                f"{', '.join(expected)} (the layout is {_layout()}); unpack the download again"
            )
    unknown = sorted(
        entry for entry in os.listdir(folder) if not entry.startswith(".") and entry not in expected
    )
    if unknown:
        raise DataError(
            f"{folder / unknown[0]}: unknown entry ({len(unknown)} in all: "
            f"{', '.join(unknown[:5])}); {folder} must hold only the {what} "
            f"{', '.join(expected)}: move the others out of data.root"
        )


def _image_names(folder: Path) -> list[str]:
    """The image files of one context folder, sorted by name."""
    names, other = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
                names.append(entry.name)
            else:
                other.append(entry.name + ("/" if entry.is_dir() else ""))
    if other:
        other.sort()
        raise DataError(
            f"{folder / other[0]}: not an image file ({len(other)} such entries); a context "
            f"folder holds only image files ({', '.join(IMAGE_SUFFIXES)}): move it out"
        )
    if not names:
        raise DataError(
            f"{folder}: empty folder (no image files); every context folder needs images: "
            "unpack the download again"
        )
    return sorted(names)


def _layout() -> str:
    return ", ".join(
        f"{part}/{animal}/{animal}({context})/"
        for part, classes in FOLDERS.items()
        for animal, contexts in classes.items()
        for context in contexts
    )
