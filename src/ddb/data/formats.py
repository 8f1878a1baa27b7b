"""Which dataset a folder holds, and its raw table in the Waterbirds-style columns.

Three formats, told apart by their files:

- waterbirds: `metadata.csv` (img_filename, y, place, split): the Waterbirds download, or
  any folder written in its format (data/prepared);
- celeba: the official files (list_attr_celeba.txt, list_eval_partition.txt) or the Kaggle
  mirror's (list_attr_celeba.csv, list_eval_partition.csv), see ddb.data.celeba;
- metashift: train/ and test/ with cat/ and dog/ folders (DISC's MetaDatasetCatDog), see
  ddb.data.metashift.

`read_raw_table` only reads; ddb.data.dataset.read_metadata validates what it returns.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from pathlib import Path

import pandas as pd

from ddb.data.celeba import celeba_files, read_celeba
from ddb.data.dataset import WATERBIRDS_GROUPS, DataError, Groups
from ddb.data.metashift import CLASS_NAMES as METASHIFT_CLASSES
from ddb.data.metashift import PLACE_NAMES as METASHIFT_PLACES
from ddb.data.metashift import read_metashift

NEEDS = {
    "waterbirds": "metadata.csv",
    "celeba": "list_attr_celeba.txt and list_eval_partition.txt (official), or "
    "list_attr_celeba.csv and list_eval_partition.csv (Kaggle), with img_align_celeba/",
    "metashift": "train/ and test/, each with cat/ and dog/ folders (DISC's MetaDatasetCatDog)",
}
FORMATS = ("auto", *NEEDS)
_PREPARED = "the default, data/prepared, is built by `dvc repro prepare`"


def detect_format(root: str | Path) -> str:
    """ "waterbirds", "celeba" or "metashift": the format of the folder at `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; data.root must name a dataset folder ({_PREPARED})")
    fmt = _format_of(root)
    if fmt is None:
        needs = "; ".join(f"{name} needs {files}" for name, files in NEEDS.items())
        raise DataError(
            f"{root}: not a dataset folder of a known format ({needs}){_hint(root)}; {_PREPARED}"
        )
    return fmt


def _format_of(root: Path) -> str | None:
    if (root / "metadata.csv").is_file():
        return "waterbirds"
    if celeba_files(root) is not None:
        return "celeba"
    parts = [root / part / animal for part in ("train", "test") for animal in ("cat", "dog")]
    if all(folder.is_dir() for folder in parts):
        return "metashift"
    return None


def _hint(root: Path) -> str:
    """Where a sub-folder is in a known format (the folder a download unpacks into, or the
    MetaShift zip's metashifts/MetaDatasetCatDog), say so."""
    with os.scandir(root) as entries:
        children = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for name in children:
        try:
            fmt = _format_of(root / name)
        except DataError:  # an incomplete CelebA folder: still the place to point at
            fmt = "celeba"
        if fmt is not None:
            return f"; {root / name} is a {fmt} folder: point data.root at it"
    return ""


def read_raw_table(
    root: str | Path,
    fmt: str = "auto",
    celeba: dict | None = None,
    metashift: dict | None = None,
) -> pd.DataFrame:
    """The table of the dataset at `root` in the Waterbirds-style columns (img_filename, y,
    place, split; other columns kept), read in format `fmt` ("auto" detects it). `celeba`
    and `metashift` are the keyword arguments of read_celeba / read_metashift (target,
    spurious, balance_train, seed; val_share, seed), used for that format only."""
    if fmt not in FORMATS:
        close = difflib.get_close_matches(str(fmt), FORMATS, n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"unknown data format {fmt!r}{hint}; known: {', '.join(FORMATS)}")
    root = Path(root)
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt == "waterbirds":
        return _read_metadata_csv(root / "metadata.csv")
    if fmt == "celeba":
        return read_celeba(root, **_options(celeba, read_celeba, "celeba"))
    return read_metashift(root, **_options(metashift, read_metashift, "metashift"))


def own_groups(data_cfg) -> Groups:
    """The class and place names that data.root's format brings, for params that leave
    data.class_names / data.place_names null: Waterbirds' birds and places; CelebA's two
    attributes (data.celeba.target and .spurious: not_male / male); MetaShift's cat / dog
    and indoor / outdoor."""
    fmt = data_cfg.format if data_cfg.format != "auto" else _auto_format(Path(data_cfg.root))
    if fmt == "celeba":
        target, spurious = (
            name.lower() for name in (data_cfg.celeba.target, data_cfg.celeba.spurious)
        )
        return Groups((f"not_{target}", target), (f"not_{spurious}", spurious))
    if fmt == "metashift":
        return Groups(METASHIFT_CLASSES, METASHIFT_PLACES)
    return WATERBIRDS_GROUPS


def _auto_format(root: Path) -> str:
    """The format the index stage recorded for `root` (what every later stage reads), else
    the folder's own; a folder not there yet (data/prepared before `prepare` has run) is
    named as the waterbirds format that prepare writes: the stages that read it say it is
    missing."""
    from ddb import paths

    if paths.INDEX_SUMMARY.is_file():
        recorded = json.loads(paths.INDEX_SUMMARY.read_text())
        if Path(recorded["root"]) == root:
            return recorded["format"]
    return detect_format(root) if root.is_dir() else "waterbirds"


def _read_metadata_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            f"{path}: not found. data.root must be a Waterbirds-format folder with "
            "metadata.csv; the default (data/prepared) is built by `dvc repro prepare`."
        )
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from err


def _options(options: dict | None, reader, name: str) -> dict:
    """`options` checked against the reader's keyword arguments (a wrong name gets close
    ones, not a TypeError)."""
    options = dict(options or {})
    known = list(inspect.signature(reader).parameters)[1:]  # all but root
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ValueError(f"unknown {name} option {key!r}{hint}; known: {', '.join(known)}")
    return options
