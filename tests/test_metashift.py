"""MetaShift cat/dog read from DISC's MetaDatasetCatDog folders."""

from __future__ import annotations

import io
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddb.data.dataset import DataError
from ddb.data.metashift import read_metashift, val_positions

# Visual Genome ids of different lengths, so that name order differs from number order
IDS = {
    "train/cat/cat(sofa)": [2317182, 107, 2400001],
    "train/cat/cat(bed)": [498, 2345678],
    "train/dog/dog(bench)": [61, 2319999, 713],
    "train/dog/dog(bike)": [2412345, 9000],
    "test/cat/cat(shelf)": [2330001, 5, 2388888, 44, 2301234, 1000000, 812, 2399999, 2312],
    "test/dog/dog(shelf)": [2411111, 77, 2300000, 123456, 2323232, 9, 2355555, 61, 30, 2344444, 88],
}  # fmt: skip
# what each folder means, written out by hand: (y, place)
CODES = {
    "train/cat/cat(sofa)": (0, 0),
    "train/cat/cat(bed)": (0, 0),
    "train/dog/dog(bench)": (1, 1),
    "train/dog/dog(bike)": (1, 1),
    "test/cat/cat(shelf)": (0, 0),
    "test/dog/dog(shelf)": (1, 0),
}


@cache
def _jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_metashift(root: Path) -> Path:
    """DISC's metashifts/MetaDatasetCatDog folder, with small real JPEGs."""
    for folder, ids in IDS.items():
        (root / folder).mkdir(parents=True)
        for vg_id in ids:
            (root / folder / f"{vg_id}.jpg").write_bytes(_jpeg())
    return root


@pytest.fixture
def metashift(tmp_path):
    return write_metashift(tmp_path / "metashifts" / "MetaDatasetCatDog")


def disc_val(seed=0, test_size=0.85) -> set[str]:
    """The val images as DISC chooses them: the cat(shelf) files then the dog(shelf) files
    (each folder's names sorted), positions split by train_test_split(test_size=0.85,
    random_state=0), val the first part."""
    from sklearn.model_selection import train_test_split  # here: test_formats imports this file

    shelf = [
        f"{folder}/{name}"
        for folder in ("test/cat/cat(shelf)", "test/dog/dog(shelf)")
        for name in sorted(f"{vg_id}.jpg" for vg_id in IDS[folder])
    ]
    val, _ = train_test_split(np.arange(len(shelf)), test_size=test_size, random_state=seed)
    return {shelf[i] for i in val}


def test_reads_the_folders(metashift):
    table = read_metashift(metashift)
    expected = {
        f"{folder}/{vg_id}.jpg": CODES[folder] for folder, ids in IDS.items() for vg_id in ids
    }
    assert len(table) == len(expected) == 30
    assert set(table["img_filename"]) == set(expected)
    for row in table.itertuples():
        assert (row.y, row.place) == expected[row.img_filename]
        assert (row.split == 0) == row.img_filename.startswith("train/")
        assert row.split in (0, 1, 2)
        assert (metashift / row.img_filename).is_file()
    assert table["context"].value_counts().to_dict() == {
        "shelf": 20, "sofa": 3, "bench": 3, "bed": 2, "bike": 2,
    }  # fmt: skip


def test_val_and_test_split_the_shelf_images_as_disc_does(metashift):
    table = read_metashift(metashift)
    val = set(table.loc[table["split"] == 1, "img_filename"])
    test = set(table.loc[table["split"] == 2, "img_filename"])
    assert val == disc_val()
    assert len(val) == 3 and len(test) == 17  # 15% of 20, rounded down
    assert val | test == {f"{f}/{i}.jpg" for f in IDS if f.startswith("test/") for i in IDS[f]}
    assert table["y"][table["split"] == 1].nunique() == 2  # both classes in val, this seed


def test_seed_and_val_share(metashift):
    for seed in (1, 7):
        table = read_metashift(metashift, seed=seed)
        assert set(table.loc[table["split"] == 1, "img_filename"]) == disc_val(seed)
    assert disc_val(1) != disc_val(0)
    table = read_metashift(metashift, val_share=0.3)
    assert set(table.loc[table["split"] == 1, "img_filename"]) == disc_val(0, test_size=0.7)
    with pytest.raises(ValueError, match="val_share"):
        read_metashift(metashift, val_share=1.0)


def test_hidden_files_are_skipped(metashift):
    (metashift / "test/cat/cat(shelf)/.DS_Store").write_bytes(b"\0")
    (metashift / "train/.DS_Store").write_bytes(b"\0")
    assert read_metashift(metashift).equals(read_metashift(metashift))
    assert len(read_metashift(metashift)) == 30


@pytest.mark.parametrize("val_share", [0.15, 0.3, 0.5])
def test_val_positions_are_train_test_splits(val_share):
    from sklearn.model_selection import train_test_split

    for n in range(2, 300, 7):
        for seed in (0, 1, 123):
            try:
                expected, _ = train_test_split(
                    np.arange(n), test_size=round(1 - val_share, 12), random_state=seed
                )
            except ValueError:
                with pytest.raises(ValueError):
                    val_positions(n, val_share, seed)
                continue
            assert val_positions(n, val_share, seed).tolist() == expected.tolist()


def _fails(root: Path, named: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as err:
        read_metashift(root)
    assert str(named) in str(err.value), str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_a_missing_folder(metashift):
    shutil.rmtree(metashift / "test/dog/dog(shelf)")
    _fails(metashift, metashift / "test/dog/dog(shelf)", "folder not found")


def test_a_missing_split_folder(metashift):
    shutil.rmtree(metashift / "train")
    _fails(metashift, metashift / "train", "folder not found", "test/dog/dog(shelf)/")


def test_an_unknown_subfolder(metashift):
    (metashift / "train/cat/cat(table)").mkdir()
    _fails(metashift, metashift / "train/cat/cat(table)", "unknown entry", "cat(sofa)")


def test_an_unknown_class_folder(metashift):
    (metashift / "test/horse").mkdir()
    _fails(metashift, metashift / "test/horse", "unknown entry")


def test_an_empty_folder(metashift):
    for image in (metashift / "train/dog/dog(bike)").iterdir():
        image.unlink()
    _fails(metashift, metashift / "train/dog/dog(bike)", "empty folder")


def test_a_stray_file_or_folder_in_a_context_folder(metashift):
    (metashift / "train/cat/cat(bed)/notes.txt").write_text("x")
    _fails(metashift, metashift / "train/cat/cat(bed)/notes.txt", "not an image file")
    (metashift / "train/cat/cat(bed)/notes.txt").unlink()
    (metashift / "train/cat/cat(bed)/more").mkdir()
    _fails(metashift, metashift / "train/cat/cat(bed)/more/", "not an image file")


def test_too_few_shelf_images(tmp_path):
    root = write_metashift(tmp_path / "m")
    for folder in ("test/cat/cat(shelf)", "test/dog/dog(shelf)"):
        for image in sorted((root / folder).iterdir())[2:]:
            image.unlink()  # 4 shelf images: 15% of them is no image
    _fails(root, root / "test", "4 images")
