"""The one reader for every dataset: a folder in the Waterbirds format.

`metadata.csv` has `img_filename` (relative to the folder), `y` (class), `place`
(spurious attribute) and `split` (0 train, 1 val, 2 test); other columns are kept. The real
`waterbird_complete95_forest2water2` folder reads as it is. Groups are defined here and
nowhere else: group = y * n_places + place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("img_filename", "y", "split", "place")
SPLITS = {"train": 0, "val": 1, "test": 2}
# Images with a longer side above this are shrunk (aspect kept) while they are decoded: 2x the
# largest input any stage uses (Stable Diffusion inpainting's 512 px; the classifier's 256),
# so nothing a stage keeps is lost, and a 10000 px photo never sits in memory at full size
# more than once (JPEGs not even once: libjpeg decodes them at 1/2, 1/4 or 1/8 scale).
MAX_SIDE = 1024


class DataError(ValueError):
    """Bad dataset content; the message names the file (and row) and what to do."""


@dataclass(frozen=True)
class Groups:
    """Names and ids of the (class, place) groups."""

    class_names: tuple[str, ...]
    place_names: tuple[str, ...]

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


# Waterbirds' own names, in metadata.csv's codes (y: 0 landbird, 1 waterbird; place: 0 land,
# 1 water): the waterbirds format's groups, and the embedded benchmark's
WATERBIRDS_GROUPS = Groups(("landbird", "waterbird"), ("land", "water"))


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
    return validate_table(path, table, groups)


def validate_table(path: Path, table: pd.DataFrame, groups: Groups) -> pd.DataFrame:
    """Check a Waterbirds-style table (read from `path`, or built from it by an adapter);
    returns it with int codes and a `group` column. Messages name `path` and its rows."""
    if table.empty:
        raise DataError(f"{path}: has no rows")
    _check_filenames(path, table)
    _check_codes(
        path, table, "split", set(SPLITS.values()), "split codes are 0 train, 1 val, 2 test"
    )
    for column, names, key in (
        ("y", groups.class_names, "data.class_names"),
        ("place", groups.place_names, "data.place_names"),
    ):
        hint = f"{len(names)} names: {', '.join(names)}; {key} sets them"
        _check_codes(path, table, column, set(range(len(names))), hint)
    for name, code in SPLITS.items():
        if not (pd.to_numeric(table["split"]) == code).any():
            raise DataError(f"{path}: the {name} split (split == {code}) is empty")
    for column in ("y", "place", "split"):  # "1", 1.0 and 1 all read as 1 (checked above)
        table[column] = pd.to_numeric(table[column]).astype(int)
    table["group"] = groups.group_id(table["y"], table["place"])
    check_group_coverage(path, table, groups)
    return table


def _check_filenames(path: Path, table: pd.DataFrame) -> None:
    """Every row names an image, and no image is listed twice (it would count twice)."""
    names = table["img_filename"]
    empty = names.isna() | (names.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(
            f"{path}: row {row + 2} has no img_filename (an empty cell); write the image's "
            "path relative to the folder, or remove the row"
        )
    repeated = names.astype(str).duplicated(keep=False).to_numpy()
    if repeated.any():
        rows = np.flatnonzero(repeated)
        first = names.astype(str).iloc[rows[0]]
        both = np.flatnonzero((names.astype(str) == first).to_numpy())
        raise DataError(
            f"{path}: rows {both[0] + 2} and {both[1] + 2} both list img_filename {first!r}; "
            f"each image must appear once ({len(rows)} rows repeat a filename): remove the "
            "duplicate rows"
        )


def check_group_coverage(path: Path, table: pd.DataFrame, groups: Groups) -> None:
    """val and test must measure every group they imply; train may lack groups (a warning).

    A val/test split must hold every class, and every (class, place) group whose class and
    place it holds: otherwise its worst-group accuracy is undefined for that class, or
    quietly leaves the group out. Splits that sit on one place by design (MetaShift's test:
    cat and dog on shelves) imply no other group, and pass.
    """
    for name in ("val", "test"):
        part = table[table["split"] == SPLITS[name]]
        classes, places = set(part["y"]), set(part["place"])
        for y in range(groups.n_classes):
            if y not in classes:
                raise DataError(
                    f"{path}: the {name} split has no image of class {groups.class_names[y]} "
                    f"(y = {y}), so its accuracy and the worst-group accuracy are undefined. "
                    f"Add {name} images of that class (split = {SPLITS[name]}), or check the "
                    "y and split columns."
                )
        present = set(part["group"])
        for y in sorted(classes):
            for place in sorted(places):
                group = int(groups.group_id(y, place))
                if group not in present:
                    raise DataError(
                        f"{path}: the {name} split has images of class "
                        f"{groups.class_names[y]} and of place {groups.place_names[place]} but "
                        f"none of group {groups.name(group)}, so its worst-group accuracy "
                        f"would quietly leave that group out. Add {name} images of it (y = "
                        f"{y}, place = {place}, split = {SPLITS[name]}), or check the y, place "
                        "and split columns."
                    )
    train = set(table.loc[table["split"] == SPLITS["train"], "group"])
    absent = [groups.name(g) for g in range(groups.n_groups) if g not in train]
    if absent:
        log.warning(
            "%s: the train split has no image of group(s) %s; training runs, but the methods "
            "that balance groups (group_balanced, group_dro) cannot see them",
            path,
            ", ".join(absent),
        )


def _check_codes(
    path: Path, table: pd.DataFrame, column: str, allowed: set[int], hint: str
) -> None:
    empty = table[column].isna().to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DataError(
            f"{path}: row {row + 2} has no {column} (an empty cell, read as NaN; "
            f"{int(empty.sum())} such row(s)); fill in one of {sorted(allowed)} ({hint}), "
            "or remove the row"
        )
    values = pd.to_numeric(table[column], errors="coerce")
    bad = ~values.isin(allowed)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: row {row + 2} has {column} = {table[column].iloc[row]!r}; "
            f"allowed values are {sorted(allowed)} ({hint})"
        )


def check_images(
    root: str | Path,
    table: pd.DataFrame,
    column: str = "img_filename",
    listed_in: str | None = None,
    progress: str | None = None,
) -> None:
    """Decode every image listed in `column` (and every mask, where the table has a
    `mask_filename` column); raise naming the first missing, corrupt or mis-sized one.

    A full decode, not PIL's `verify()`: for a JPEG, verify() reads only the headers and
    passes a file cut anywhere after them. JPEGs are decoded at 1/8 scale, which reads
    every byte of the compressed data (so it still finds a truncation) at a fraction of
    the cost.
    """
    root = Path(root)
    listed_in = listed_in or str(root / "metadata.csv")  # or an adapter's table of root
    has_masks = "mask_filename" in table.columns and column == "img_filename"
    filenames = table[column]
    if progress:  # a bar for long checks (CelebA: 200k images)
        from tqdm import tqdm

        filenames = tqdm(
            filenames, desc=progress, unit="image", mininterval=2, leave=False, disable=None
        )  # disable=None: no bar when stderr is not a terminal (logs, CI)
    for row, filename in enumerate(filenames):
        where = f"listed in {listed_in} row {row + 2} ({column})"
        size = _check_file(root / str(filename), where, "image")
        if has_masks and not pd.isna(table["mask_filename"].iloc[row]):
            mask_where = f"listed in {listed_in} row {row + 2} (mask_filename)"
            mask_path = root / str(table["mask_filename"].iloc[row])
            mask_size = _check_file(mask_path, mask_where, "mask")
            if mask_size != size:
                raise DataError(
                    f"{mask_path}: mask is {_wxh(mask_size)} but its image {filename} is "
                    f"{_wxh(size)} ({mask_where}); a mask must have its image's size: "
                    "rebuild the mask from the image (or resize it with nearest-neighbour)"
                )


def _check_file(path: Path, where: str, kind: str) -> tuple[int, int]:
    """(width, height) of a complete, decodable image file; DataError otherwise."""
    fix = "replace it with a complete copy (copy or download it again), or remove its row"
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not an {kind} file ({where}); {fix}")
    if not path.is_file():
        raise DataError(f"{path}: {kind} not found, {where}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty {kind} file (0 bytes), {where}; {fix}")
    try:
        with quiet_bomb_warning(), Image.open(path) as image:
            size = image.size
            if image.format == "JPEG":
                image.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
    except Image.DecompressionBombError as err:
        raise DataError(_too_large_message(path, err) + f" ({where})") from err
    except Exception as err:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: unreadable {kind} ({err}), {where}; {fix}") from err
    return size


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@contextlib.contextmanager
def quiet_bomb_warning() -> Iterator[None]:
    """PIL warns above Image.MAX_IMAGE_PIXELS (89 M pixels, ~9500 px a side) and refuses
    above twice that. The warning guards against decoding a hostile file into a huge bitmap;
    here the files are the user's own photos and are shrunk while decoded (load_image), so
    it is silenced; the refusal is kept (178 M pixels of RGB is over 0.5 GB) and explained."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _too_large_message(path: Path, err: Exception) -> str:
    return (
        f"{path}: image too large to decode ({err}); shrink it beforehand to at most "
        f"{MAX_SIDE} px a side (the stages use no more), e.g. with ImageMagick: "
        f"`mogrify -resize '{MAX_SIDE}x{MAX_SIDE}>' {path.name}`"
    )


def fitted_size(size: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """`size` shrunk (aspect kept) so its longer side is `max_side`; unchanged if it fits.
    Images and their masks go through this same function, so they stay the same size."""
    width, height = size
    longer = max(width, height)
    if longer <= max_side:
        return size
    return max(1, round(width * max_side / longer)), max(1, round(height * max_side / longer))


def load_image(path: str | Path, max_side: int = MAX_SIDE) -> Image.Image:
    """The image at `path` as 8-bit RGB, shrunk to `max_side` if larger (see MAX_SIDE).

    An ordinary 8-bit RGB image that fits comes back exactly as decoded. Other modes:
    grayscale (L, 1) is replicated to 3 channels; 16-bit grayscale (I;16, and I, which is
    how 16-bit files read in some PIL versions) is scaled 65535 -> 255, not clipped (PIL's
    own convert would turn everything above 255 white); 16-bit RGB PNGs already read as
    8-bit RGB; an alpha channel (RGBA, LA, a palette with transparency) is composited over
    white, as a viewer shows the image on a page (opaque pixels are unchanged, so an RGBA
    export of a photo loads as the photo; dropping alpha would instead show whatever colour
    the file stores under transparent pixels, often black).
    """
    try:
        with quiet_bomb_warning(), Image.open(path) as image:
            return to_rgb8(decode_fitted(image, max_side, Image.LANCZOS))
    except Image.DecompressionBombError as err:
        raise DataError(_too_large_message(Path(path), err)) from err
    except Exception as err:
        raise DataError(
            f"{path}: unreadable image ({err}); replace it with a complete copy"
        ) from err


def decode_fitted(image: Image.Image, max_side: int, resample) -> Image.Image:
    """Decode an opened image once, at `fitted_size`: a JPEG at the smallest libjpeg scale
    still at least twice that size (then resized), anything else at full size, then resized
    in its own mode (16-bit grayscale is first brought to 8 bits: PIL cannot resize I;16)."""
    target = fitted_size(image.size, max_side)
    if target != image.size and image.format == "JPEG":
        image.draft(None, (2 * target[0], 2 * target[1]))
    image.load()
    if image.mode.startswith("I"):
        image = _sixteen_to_eight(image)
    elif image.mode in ("P", "PA", "1") and target != image.size:
        # PIL resizes palette images with nearest-neighbour only
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    if image.size != target:
        image = image.resize(target, resample, reducing_gap=3.0)
    return image


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    """I;16 / I (16-bit data) -> L, 0..65535 scaled to 0..255 (rounded)."""
    pixels = np.asarray(image, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8), mode="L")


def _has_alpha(image: Image.Image) -> bool:
    """An alpha channel, or a palette with a transparent entry. (An RGB or L file's single
    transparent colour, PNG's rare tRNS, is ignored: such files load as they always did.)"""
    if image.mode == "P":
        return "transparency" in image.info
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB; alpha composited over white (see load_image)."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class ImageTable:
    """Rows of a metadata table as (image tensor, y, group, row index) samples: a map-style
    dataset for torch's DataLoader. Not a torch Dataset subclass, so that this module (and
    the stages that only read tables) loads without importing torch; the DataLoader's
    collate turns the int64 labels into tensors."""

    def __init__(self, root: str | Path, table: pd.DataFrame, transform):
        self.root = Path(root)
        self.filenames = table["img_filename"].astype(str).tolist()
        self.y = table["y"].to_numpy(dtype=np.int64)
        self.group = table["group"].to_numpy(dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.filenames)

    def __getitem__(self, index: int):
        image = self.transform(load_image(self.root / self.filenames[index]))
        return image, self.y[index], self.group[index], index


def split_table(table: pd.DataFrame, split: str) -> pd.DataFrame:
    return table[table["split"] == SPLITS[split]].reset_index(drop=True)


def read_dataset(data_cfg) -> pd.DataFrame:
    """The validated table of the dataset at `data.root`, in whichever distributed format it
    is (data.format; auto: recognised from its files): Waterbirds' metadata.csv as it is,
    CelebA and MetaShift through their adapters. No image is read or copied."""
    from ddb.data import formats

    groups = groups_of(data_cfg)
    root = Path(data_cfg.root)
    fmt = formats.detect_format(root) if data_cfg.format == "auto" else data_cfg.format
    if fmt == "waterbirds":
        return read_metadata(root, groups)
    raw = formats.read_raw_table(
        root,
        fmt,
        celeba=dataclasses.asdict(data_cfg.celeba),
        metashift=dataclasses.asdict(data_cfg.metashift),
    )
    return validate_table(root, raw, groups)


def load_dataset(data_cfg, check: bool = True) -> tuple[Path, pd.DataFrame, Groups]:
    """(root, validated table, groups) for the dataset that `data.root` names, read from
    its own files (the index stage; `ddb check`). Stages read the index instead."""
    groups = groups_of(data_cfg)
    root = Path(data_cfg.root)
    table = read_dataset(data_cfg)
    if check:
        check_images(root, table)
    return root, table, groups


def load_indexed(data_cfg) -> tuple[Path, pd.DataFrame, Groups]:
    """(root, table, groups) as the index stage recorded them (models/index): what every
    stage that reads images uses, so that the dataset's own files are parsed once and DVC
    walks data.root once (see ddb.stages.index). Refuses an index of another data.root."""
    from ddb import paths

    groups = groups_of(data_cfg)
    root = Path(data_cfg.root)
    if not paths.INDEX_TABLE.is_file() or not paths.INDEX_SUMMARY.is_file():
        raise DataError(
            f"{paths.INDEX_TABLE}: not found; the index stage writes it from data.root "
            "(`dvc repro index`, or `python -m ddb index`)"
        )
    recorded = json.loads(paths.INDEX_SUMMARY.read_text())["root"]
    if Path(recorded) != root:
        raise DataError(
            f"{paths.INDEX_TABLE}: indexes {recorded}, but data.root is {root}; re-run the "
            "index stage (`dvc repro index`, or `python -m ddb index`)"
        )
    table = pd.read_csv(paths.INDEX_TABLE, keep_default_na=False, na_values=[""])
    return root, validate_table(paths.INDEX_TABLE, table, groups), groups


def groups_of(data_cfg) -> Groups:
    """The groups' names: data.class_names and data.place_names where params set them, else
    the names that data.root's format brings (ddb.data.formats.own_groups)."""
    if data_cfg.class_names is not None and data_cfg.place_names is not None:
        return Groups(tuple(data_cfg.class_names), tuple(data_cfg.place_names))
    from ddb.data import formats

    own = formats.own_groups(data_cfg)
    return Groups(
        tuple(data_cfg.class_names or own.class_names),
        tuple(data_cfg.place_names or own.place_names),
    )
