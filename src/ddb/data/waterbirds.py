"""The one reader for every dataset: a folder in the Waterbirds format.

`metadata.csv` has `img_filename` (relative to the folder), `y` (class), `place`
(spurious attribute) and `split` (0 train, 1 val, 2 test); other columns are kept. The real
`waterbird_complete95_forest2water2` folder reads as it is. Groups are defined here and
nowhere else: group = y * n_places + place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

REQUIRED_COLUMNS = ("img_filename", "y", "split", "place")
SPLITS = {"train": 0, "val": 1, "test": 2}


class DataError(ValueError):
    """Bad dataset content; the message names the file (and row) and what to do."""


@dataclass(frozen=True)
class Groups:
    """Names and ids of the (class, place) groups."""

    class_names: tuple[str, ...] = ("landbird", "waterbird")
    place_names: tuple[str, ...] = ("land", "water")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_groups(self) -> int:
        return len(self.class_names) * len(self.place_names)

    def group_id(self, y, place):
        """Group id of class `y` on place `place` (ints or arrays)."""
        return np.asarray(y) * len(self.place_names) + np.asarray(place)

    def name(self, group: int) -> str:
        y, place = divmod(int(group), len(self.place_names))
        return f"{self.class_names[y]}_{self.place_names[place]}"

    @property
    def names(self) -> list[str]:
        return [self.name(g) for g in range(self.n_groups)]


def read_metadata(root: str | Path, groups: Groups) -> pd.DataFrame:
    """Read and validate `root/metadata.csv`; adds a `group` column."""
    root = Path(root)
    path = root / "metadata.csv"
    if not path.is_file():
        raise DataError(
            f"{path}: not found. data.root must be a Waterbirds-format folder with "
            "metadata.csv; the default (data/prepared) is built by `dvc repro prepare`."
        )
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"a Waterbirds-format metadata.csv needs {', '.join(REQUIRED_COLUMNS)}"
        )
    if table.empty:
        raise DataError(f"{path}: has no rows")
    _check_codes(
        path, table, "split", set(SPLITS.values()), "split codes are 0 train, 1 val, 2 test"
    )
    _check_codes(
        path, table, "y", set(range(groups.n_classes)), f"data.class_names has {groups.n_classes}"
    )
    _check_codes(
        path,
        table,
        "place",
        set(range(len(groups.place_names))),
        f"data.place_names has {len(groups.place_names)}",
    )
    for name, code in SPLITS.items():
        if not (table["split"] == code).any():
            raise DataError(f"{path}: the {name} split (split == {code}) is empty")
    table["y"] = table["y"].astype(int)
    table["place"] = table["place"].astype(int)
    table["split"] = table["split"].astype(int)
    table["group"] = groups.group_id(table["y"], table["place"])
    return table


def _check_codes(
    path: Path, table: pd.DataFrame, column: str, allowed: set[int], hint: str
) -> None:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = ~values.isin(allowed)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: row {row + 2} has {column} = {table[column].iloc[row]!r}; "
            f"allowed values are {sorted(allowed)} ({hint})"
        )


def check_images(root: str | Path, table: pd.DataFrame, column: str = "img_filename") -> None:
    """Open every image listed in `column`; raise naming the first missing or corrupt one."""
    root = Path(root)
    for row, filename in enumerate(table[column]):
        path = root / str(filename)
        where = f"{root / 'metadata.csv'} row {row + 2} ({column})"
        if not path.is_file():
            raise DataError(f"{path}: image not found, listed in {where}")
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many types for corrupt files
            raise DataError(f"{path}: unreadable image ({err}), listed in {where}") from err


def load_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:
        raise DataError(f"{path}: unreadable image ({err})") from err


class ImageTable(Dataset):
    """Rows of a metadata table as (image tensor, y, group, row index) samples."""

    def __init__(self, root: str | Path, table: pd.DataFrame, transform):
        self.root = Path(root)
        self.filenames = table["img_filename"].astype(str).tolist()
        self.y = torch.tensor(table["y"].to_numpy(), dtype=torch.long)
        self.group = torch.tensor(table["group"].to_numpy(), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int):
        image = self.transform(load_image(self.root / self.filenames[index]))
        return image, self.y[index], self.group[index], index


def split_table(table: pd.DataFrame, split: str) -> pd.DataFrame:
    return table[table["split"] == SPLITS[split]].reset_index(drop=True)


def load_dataset(data_cfg, check: bool = True) -> tuple[Path, pd.DataFrame, Groups]:
    """(root, validated metadata, groups) for the folder that `data.root` names."""
    groups = groups_of(data_cfg)
    root = Path(data_cfg.root)
    table = read_metadata(root, groups)
    if check:
        check_images(root, table)
    return root, table, groups


def groups_of(data_cfg) -> Groups:
    """The groups that params.yaml's data section names."""
    return Groups(tuple(data_cfg.class_names), tuple(data_cfg.place_names))
