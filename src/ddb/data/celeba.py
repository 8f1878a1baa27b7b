"""CelebA, read as it is unpacked: either the official files or the Kaggle mirror.

Official (torchvision's layout; the Google Drive folder's `Anno/`, `Eval/` and
`Img/img_align_celeba/` subfolders are also found):

    img_align_celeba/000001.jpg ...
    list_attr_celeba.txt      line 1 the image count, line 2 the attribute names, then
                              space-aligned rows `000001.jpg -1  1  1 -1 ...`
    list_eval_partition.txt   rows `000001.jpg 0` (0 train, 1 val, 2 test)

Kaggle mirror (jessicali9530/celeba-dataset):

    img_align_celeba/img_align_celeba/000001.jpg ...
    list_attr_celeba.csv      `image_id` + the 40 attribute columns, -1/1
    list_eval_partition.csv   `image_id,partition`

`read_celeba` returns the Waterbirds-style table (img_filename, y, place, split, plus
image_id) that `ddb.data.dataset` validates; nothing is copied. The tables are parsed by
pandas in one pass; only when that pass finds something wrong is the file read again line by
line, to name the first bad line.
"""

from __future__ import annotations

import csv
import difflib
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ddb.data.dataset import DataError

log = logging.getLogger(__name__)

ATTR_VALUES = (-1, 1)
PARTITION_CODES = (0, 1, 2)
_REFETCH = "download and unpack it again"


@dataclass(frozen=True)
class _Form:
    """Where one of the two on-disk forms keeps its files."""

    name: str
    attr_file: str
    partition_file: str


OFFICIAL = _Form("official", "list_attr_celeba.txt", "list_eval_partition.txt")
KAGGLE = _Form("Kaggle", "list_attr_celeba.csv", "list_eval_partition.csv")
# (form, folder the attribute file may sit in, folder the partition file may sit in)
_PLACES = (
    (OFFICIAL, ".", "."),
    (OFFICIAL, "Anno", "Eval"),  # the official Google Drive folder, unzipped in place
    (KAGGLE, ".", "."),
)
# image folders, most specific first: the Kaggle zip nests img_align_celeba twice
_IMAGE_DIRS = ("img_align_celeba/img_align_celeba", "img_align_celeba", "Img/img_align_celeba")


def celeba_files(root: str | Path) -> tuple[Path, Path] | None:
    """(attribute file, partition file) of the CelebA download at `root`, or None when it
    holds neither form. The official form wins where both are present."""
    root = Path(root)
    for form, attr_dir, part_dir in _PLACES:
        attr = root / attr_dir / form.attr_file
        if attr.is_file():
            part = root / part_dir / form.partition_file
            if not part.is_file():
                raise DataError(
                    f"{part}: not found, but {attr} is there; the {form.name} CelebA form "
                    f"needs both files: {_REFETCH} (or copy {form.partition_file} next to "
                    f"{form.attr_file})"
                )
            return attr, part
    return None


def read_celeba(
    root: str | Path,
    target: str = "Blond_Hair",
    spurious: str = "Male",
    balance_train: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """The CelebA download at `root` as a Waterbirds-style table.

    y is attribute `target` and place is attribute `spurious`, each -1 -> 0, 1 -> 1; split is
    list_eval_partition's code (0 train, 1 val, 2 test). Rows keep the attribute file's
    order; `image_id` is kept. `balance_train` class-balances the train split as the DDB
    code does (every image of the rarer class, and as many of the other drawn at random
    without replacement), but seeded: numpy's default_rng(seed), so the same seed keeps the
    same images. val and test are left whole.
    """
    root = Path(root)
    files = celeba_files(root)
    if files is None:
        raise DataError(
            f"{root}: no CelebA attribute file; the official form has list_attr_celeba.txt "
            "and list_eval_partition.txt, the Kaggle mirror list_attr_celeba.csv and "
            "list_eval_partition.csv (point data.root at the folder that holds them)"
        )
    if target == spurious:
        raise ValueError(f"target and spurious are both {target!r}; choose two attributes")
    attr_path, part_path = files
    if attr_path.suffix == ".txt":
        ids, names, values, attr_lines = _read_attr_txt(attr_path)
        part_ids, codes, part_lines = _read_partition_txt(part_path)
    else:
        ids, names, values, attr_lines = _read_attr_csv(attr_path)
        part_ids, codes, part_lines = _read_partition_csv(part_path)
    header_line = 2 if attr_path.suffix == ".txt" else 1
    columns = [_attribute_index(attr_path, header_line, names, a) for a in (target, spurious)]
    split = _match_partitions(attr_path, ids, attr_lines, part_path, part_ids, codes, part_lines)
    folder = _image_folder(root, attr_path)
    _check_images_present(root / folder, ids, attr_path, attr_lines)
    image_ids = pd.Series(ids, dtype="str")
    table = pd.DataFrame(
        {
            "img_filename": folder + "/" + image_ids,
            "y": (values[:, columns[0]] == 1).astype(np.int64),
            "place": (values[:, columns[1]] == 1).astype(np.int64),
            "split": split.astype(np.int64),
            "image_id": image_ids,
        }
    )
    log.info("%s: %d CelebA images (y = %s, place = %s)", attr_path, len(table), target, spurious)
    if balance_train:
        table = balance_classes(table, seed, where=str(attr_path))
    return table


def balance_classes(table: pd.DataFrame, seed: int, where: str) -> pd.DataFrame:
    """The train split cut to equal classes: each class keeps as many images as the rarest
    has, drawn without replacement by numpy's default_rng(seed); row order is kept."""
    train = np.flatnonzero(table["split"].to_numpy() == 0)
    y = table["y"].to_numpy()[train]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise DataError(
            f"{where}: balance_train needs train images of at least two classes, but every "
            f"train image has y = {classes.tolist()}; check the target attribute"
        )
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(train[y == c], size=counts.min(), replace=False)
        if n > counts.min()
        else train[y == c]
        for c, n in zip(classes, counts)
    ]
    rows = np.sort(np.concatenate([*keep, np.flatnonzero(table["split"].to_numpy() != 0)]))
    log.info(
        "balance_train: train cut from %d to %d images (%d per class, seed %d)",
        len(train),
        counts.min() * len(classes),
        counts.min(),
        seed,
    )
    return table.iloc[rows].reset_index(drop=True)


# --- reading the four files -------------------------------------------------------------


def _read_attr_txt(path: Path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        count_line, header = handle.readline(), handle.readline()
    names = header.split()
    if not names:
        raise DataError(
            f"{path}: line 2 has no attribute names; it should list the 40 attributes "
            f"(5_o_Clock_Shadow ... Young): {_REFETCH}"
        )
    _check_unique_names(path, 2, names)
    ids, values = _read_rows(path, 3, names, ATTR_VALUES, _ATTR_ROW, sep=None)
    try:
        count = int(count_line.strip())
    except ValueError:
        raise DataError(
            f"{path}: line 1 is {count_line.strip()!r}, not the image count; the official "
            f"file starts with the count, then the attribute names: {_REFETCH}"
        ) from None
    if count != len(ids):
        raise DataError(
            f"{path}: line 1 says {count} images but the file has {len(ids)} image rows "
            f"(from line 3); the file is cut short or padded: {_REFETCH}"
        )
    return ids, names, values, _LineMap(path, 3)


def _read_partition_txt(path: Path):
    ids, codes = _read_rows(path, 1, ["partition"], PARTITION_CODES, _PART_ROW, sep=None)
    return ids, codes[:, 0].astype(np.int64), _LineMap(path, 1)


def _read_attr_csv(path: Path):
    header = _csv_header(path)
    if not header or header[0] != "image_id":
        raise DataError(
            f"{path}: line 1 should start with image_id, then the 40 attribute names; it is "
            f"{','.join(header)[:80]!r}: {_REFETCH}"
        )
    names = header[1:]
    _check_unique_names(path, 1, names)
    ids, values = _read_rows(path, 2, names, ATTR_VALUES, _ATTR_ROW, sep=",")
    return ids, names, values, _LineMap(path, 2)


def _read_partition_csv(path: Path):
    header = _csv_header(path)
    if header != ["image_id", "partition"]:
        raise DataError(
            f"{path}: line 1 should be image_id,partition; it is {','.join(header)[:80]!r}: "
            f"{_REFETCH}"
        )
    ids, codes = _read_rows(path, 2, ["partition"], PARTITION_CODES, _PART_ROW, sep=",")
    return ids, codes[:, 0].astype(np.int64), _LineMap(path, 2)


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        return [cell.strip() for cell in next(csv.reader(handle), [])]


def _read_rows(
    path: Path, first: int, names: list[str], allowed: tuple[int, ...], what: str, sep
) -> tuple[np.ndarray, np.ndarray]:
    """(image names, int8 values) of the rows from line `first` on: an image name, then one
    value per name, each one of `allowed`. pandas parses the file in one pass; if that fails
    or finds a short, long or bad row, the file is read again line by line to name it."""
    columns = ["image_id", *names, "_extra"]  # _extra catches a row one value too long
    dtypes = {"image_id": str, **dict.fromkeys(names, "int8"), "_extra": str}
    style = {"sep": r"\s+"} if sep is None else {"sep": sep, "encoding": "utf-8-sig"}
    error = "its rows do not parse"
    try:
        frame = pd.read_csv(
            path, header=None, skiprows=first - 1, names=columns, dtype=dtypes, **style
        )
    except (pd.errors.ParserError, ValueError, OverflowError) as err:
        frame, error = None, str(err).splitlines()[0]
    if frame is not None:
        values = frame[names].to_numpy()
        ok = np.zeros(values.shape, dtype=bool)
        for value in allowed:
            ok |= values == value
        if ok.all() and frame["_extra"].isna().all() and frame["image_id"].notna().all():
            return frame["image_id"].to_numpy(dtype=object), values
    _scan(path, first, partial(_row_problem, names=names, allowed=allowed), what, sep)
    raise DataError(f"{path}: could not be read ({error}); {_REFETCH}")


# --- checks ------------------------------------------------------------------------------


_ATTR_ROW = "a row is the image name, then one value per attribute of the header"
_PART_ROW = "a row is the image name, then its partition: 0 train, 1 val, 2 test"


def _row_problem(fields: list[str], names: list[str], allowed: tuple[int, ...]) -> str | None:
    if len(fields) != len(names) + 1:
        return f"has {len(fields) - 1} value(s) after the image name, not {len(names)}"
    texts = [str(value) for value in allowed]
    for name, value in zip(names, fields[1:]):
        if value not in texts:
            shown = "nothing (an empty cell)" if value == "" else repr(value)
            return (
                f"has {name} = {shown} (image {fields[0]}); the allowed values are "
                f"{', '.join(texts)}"
            )
    return None


def _scan(path: Path, first: int, check, what: str, sep: str | None = None) -> None:
    """Read `path` line by line from line `first` (1-based) and raise on the first bad row.
    Run only when the fast parse found a problem, to say where it is."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            if number < first or not line.strip():
                continue
            if sep is None:
                fields = line.split()
            else:
                fields = [cell.strip() for cell in next(csv.reader([line]))]
            problem = check(fields)
            if problem is not None:
                raise DataError(
                    f"{path}: line {number} {problem} ({what}); fix or remove that line, "
                    f"or {_REFETCH}"
                )


class _LineMap:
    """1-based line numbers of a file's rows (blank lines are skipped, as pandas does);
    the file is read again only when an error needs a line number."""

    def __init__(self, path: Path, first: int):
        self.path, self.first, self._lines = path, first, None

    def __getitem__(self, row: int) -> int:
        if self._lines is None:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                self._lines = [
                    n for n, line in enumerate(handle, start=1) if n >= self.first and line.strip()
                ]
        return self._lines[row]


def _check_unique_names(path: Path, line: int, names: list[str]) -> None:
    seen = pd.Index(names)
    if seen.has_duplicates:
        twice = sorted(set(seen[seen.duplicated()]))
        raise DataError(
            f"{path}: line {line} names attribute(s) {', '.join(twice)} twice; each attribute "
            f"is one column: {_REFETCH}"
        )


def _attribute_index(path: Path, line: int, names: list[str], name: str) -> int:
    if name in names:
        return names.index(name)
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    hint = f"close matches: {', '.join(lower[c] for c in close)}" if close else "no close match"
    raise DataError(
        f"{path}: line {line} (the attribute names) has no attribute {name!r} ({hint}); "
        f"choose the target and spurious attributes from the {len(names)} names there"
    )


def _first_duplicate(ids: np.ndarray) -> tuple[int, int] | None:
    repeated = pd.Index(ids).duplicated(keep=False)
    if not repeated.any():
        return None
    rows = np.flatnonzero(repeated)
    both = np.flatnonzero(ids == ids[rows[0]])
    return int(both[0]), int(both[1])


def _match_partitions(attr_path, ids, attr_lines, part_path, part_ids, codes, part_lines):
    """The partition code of each image of the attribute file, both files checked to list
    the same images once each."""
    for path, names, lines in ((attr_path, ids, attr_lines), (part_path, part_ids, part_lines)):
        pair = _first_duplicate(names)
        if pair is not None:
            raise DataError(
                f"{path}: lines {lines[pair[0]]} and {lines[pair[1]]} both list image "
                f"{names[pair[0]]!r}; each image is listed once: remove the repeated line, "
                f"or {_REFETCH}"
            )
    position = pd.Index(part_ids).get_indexer(ids)
    missing = np.flatnonzero(position < 0)
    if len(missing):
        row = int(missing[0])
        raise DataError(
            f"{attr_path}: line {attr_lines[row]} lists image {ids[row]!r}, which has no row "
            f"in {part_path} ({len(missing)} image(s) lack one); both files must list the "
            f"same images: {_REFETCH}"
        )
    extra = np.flatnonzero(pd.Index(ids).get_indexer(part_ids) < 0)
    if len(extra):
        row = int(extra[0])
        raise DataError(
            f"{part_path}: line {part_lines[row]} lists image {part_ids[row]!r}, which has no "
            f"row in {attr_path} ({len(extra)} such image(s)); both files must list the same "
            f"images: {_REFETCH}"
        )
    return codes[position]


def _image_folder(root: Path, attr_path: Path) -> str:
    for folder in _IMAGE_DIRS:
        if (root / folder).is_dir() and _has_jpegs(root / folder):
            return folder
    raise DataError(
        f"{root}: no CelebA image folder (looked for {', '.join(_IMAGE_DIRS)}, holding the "
        f".jpg files that {attr_path.name} lists); unpack img_align_celeba.zip there"
    )


def _has_jpegs(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(entry.name.lower().endswith(".jpg") for entry in entries)


def _check_images_present(folder: Path, ids: np.ndarray, attr_path: Path, lines) -> None:
    """Every listed image is a file in the folder (a directory listing, not a decode:
    check_images decodes them)."""
    with os.scandir(folder) as entries:
        present = pd.Index([entry.name for entry in entries])
    missing = np.flatnonzero(present.get_indexer(ids) < 0)
    if len(missing):
        row = int(missing[0])
        raise DataError(
            f"{folder / ids[row]}: image not found, listed in {attr_path} line {lines[row]} "
            f"({len(missing)} of {len(ids)} listed images are missing); unpack the whole "
            "img_align_celeba.zip there"
        )
