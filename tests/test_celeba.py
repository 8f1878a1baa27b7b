"""CelebA read as unpacked: the official .txt files and the Kaggle mirror's CSVs."""

from __future__ import annotations

import io
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddb.data.celeba import read_celeba
from ddb.data.dataset import DataError

# The 40 attributes of list_attr_celeba, in the file's order (Blond_Hair 9, Male 20).
NAMES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
]  # fmt: skip
BLOND, MALE, SMILING = NAMES.index("Blond_Hair"), NAMES.index("Male"), NAMES.index("Smiling")

# (blond, male, partition) per image, 000001.jpg on: train has 3 blond and 7 not blond;
# val and test hold each (blond, male) group once.
SPEC = [
    (1, 0, 0), (0, 1, 0), (0, 0, 0), (1, 1, 0), (0, 1, 0), (0, 0, 0), (1, 0, 0), (0, 1, 0),
    (0, 0, 0), (0, 0, 0),
    (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1),
    (0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2),
]  # fmt: skip
IDS = [f"{i:06d}.jpg" for i in range(1, len(SPEC) + 1)]
ATTR_TXT, PART_TXT = "list_attr_celeba.txt", "list_eval_partition.txt"
ATTR_CSV, PART_CSV = "list_attr_celeba.csv", "list_eval_partition.csv"


@cache
def _jpeg() -> bytes:
    """A real 178x218 JPEG, as every aligned CelebA image is."""
    pixels = np.random.default_rng(0).integers(0, 255, (218, 178, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def attribute_matrix() -> np.ndarray:
    """-1/1 values of the 40 attributes per image: Blond_Hair and Male as in SPEC, Smiling
    = 1 on odd images, the rest random."""
    values = np.where(np.random.default_rng(1).random((len(SPEC), 40)) < 0.3, 1, -1)
    values[:, BLOND] = [1 if blond else -1 for blond, _, _ in SPEC]
    values[:, MALE] = [1 if male else -1 for _, male, _ in SPEC]
    values[:, SMILING] = [1 if i % 2 else -1 for i in range(1, len(SPEC) + 1)]
    return values


def write_celeba(root: Path, form: str = "official") -> Path:
    """A CelebA folder as unpacked: "official" (torchvision's layout), "kaggle" (the
    nested Kaggle zip), or "drive" (the official Google Drive folder: Anno/, Eval/, Img/)."""
    values = attribute_matrix()
    partitions = [part for _, _, part in SPEC]
    image_dir = {
        "official": "img_align_celeba",
        "kaggle": "img_align_celeba/img_align_celeba",
        "drive": "Img/img_align_celeba",
    }[form]
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    for name in IDS:
        (root / image_dir / name).write_bytes(_jpeg())
    if form == "kaggle":
        lines = [",".join(["image_id", *NAMES])]
        lines += [",".join([name, *map(str, row)]) for name, row in zip(IDS, values)]
        (root / ATTR_CSV).write_text("\n".join(lines) + "\n")
        lines = ["image_id,partition", *(f"{n},{p}" for n, p in zip(IDS, partitions))]
        (root / PART_CSV).write_text("\n".join(lines) + "\n")
        return root
    anno, evald = (root / "Anno", root / "Eval") if form == "drive" else (root, root)
    anno.mkdir(exist_ok=True)
    evald.mkdir(exist_ok=True)
    # the real file: the count, the names (a trailing space), values right-aligned in 2
    rows = [name + "".join(f" {v:2d}" for v in row) for name, row in zip(IDS, values)]
    (anno / ATTR_TXT).write_text(f"{len(IDS)}\n" + " ".join(NAMES) + " \n" + "\n".join(rows) + "\n")
    (evald / PART_TXT).write_text("".join(f"{n} {p}\n" for n, p in zip(IDS, partitions)))
    return root


@pytest.fixture
def official(tmp_path):
    return write_celeba(tmp_path / "celeba")


@pytest.fixture
def kaggle(tmp_path):
    return write_celeba(tmp_path / "celeba-dataset", "kaggle")


def test_the_fixture_is_the_real_layout(official):
    lines = (official / ATTR_TXT).read_text().splitlines()
    assert lines[0] == "18"
    assert lines[1].split()[9] == "Blond_Hair" and lines[1].split()[20] == "Male"
    assert lines[2].startswith("000001.jpg ") and "  1" in lines[2] and " -1" in lines[2]
    with Image.open(official / "img_align_celeba" / "000001.jpg") as image:
        assert image.size == (178, 218) and image.format == "JPEG"


@pytest.mark.parametrize("form", ["official", "kaggle", "drive"])
def test_reads_each_form(tmp_path, form):
    root = write_celeba(tmp_path / form, form)
    table = read_celeba(root)
    folder = {
        "official": "img_align_celeba",
        "kaggle": "img_align_celeba/img_align_celeba",
        "drive": "Img/img_align_celeba",
    }[form]
    assert table["img_filename"].tolist() == [f"{folder}/{name}" for name in IDS]
    assert table["y"].tolist() == [blond for blond, _, _ in SPEC]
    assert table["place"].tolist() == [male for _, male, _ in SPEC]
    assert table["split"].tolist() == [part for _, _, part in SPEC]
    assert table["split"].value_counts().to_dict() == {0: 10, 1: 4, 2: 4}
    assert all((root / name).is_file() for name in table["img_filename"])


def test_other_attributes(official):
    table = read_celeba(official, target="Smiling", spurious="Blond_Hair")
    assert table["y"].tolist() == [i % 2 for i in range(1, 19)]
    assert table["place"].tolist() == [blond for blond, _, _ in SPEC]


def test_balance_train_is_seeded_and_leaves_val_and_test(official):
    whole = read_celeba(official)
    tables = {seed: read_celeba(official, balance_train=True, seed=seed) for seed in range(6)}
    for table in tables.values():
        train = table[table["split"] == 0]
        assert train["y"].value_counts().to_dict() == {0: 3, 1: 3}
        # every blond train image stays: 000001, 000004, 000007
        assert set(train.loc[train["y"] == 1, "image_id"]) == {
            "000001.jpg",
            "000004.jpg",
            "000007.jpg",
        }
        assert set(train["image_id"]) <= set(IDS[:10])
        rest = table[table["split"] != 0].reset_index(drop=True)
        assert rest.equals(whole[whole["split"] != 0].reset_index(drop=True))
        assert table["image_id"].is_monotonic_increasing  # the file's order
    again = read_celeba(official, balance_train=True, seed=3)
    assert again.equals(tables[3])
    chosen = {tuple(t.loc[t["split"] == 0, "image_id"]) for t in tables.values()}
    assert len(chosen) > 1  # 35 ways to keep 3 of the 7 non-blond: seeds differ


def test_kaggle_and_official_agree(official, kaggle):
    a, b = read_celeba(official), read_celeba(kaggle)
    assert (a[["y", "place", "split", "image_id"]]).equals(b[["y", "place", "split", "image_id"]])


def _edit_line(path: Path, number: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("\n".join(lines) + "\n")


def _fails(root: Path, path: Path, line: int | None, *fragments: str, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        read_celeba(root, **kwargs)
    message = str(err.value)
    assert str(path) in message
    if line is not None:
        assert f"line {line} " in message or f"line {line})" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_row_missing_a_value(official):
    path = official / ATTR_TXT
    _edit_line(path, 7, lambda line: line[:-3])  # 000005.jpg loses its last value
    _fails(official, path, 7, "39 value(s) after the image name, not 40")


def test_a_row_with_one_value_too_many(official):
    path = official / ATTR_TXT
    _edit_line(path, 4, lambda line: line + "  1")
    _fails(official, path, 4, "41 value(s)")


@pytest.mark.parametrize("bad", ["0", "2", "x"])
def test_a_value_other_than_minus_one_or_one(official, bad):
    path = official / ATTR_TXT
    # 000009.jpg is line 11; its Male value sits at field 21 (after the image name)
    _edit_line(path, 11, lambda line: " ".join([*line.split()[:21], bad, *line.split()[22:]]))
    _fails(official, path, 11, f"Male = {bad!r}", "000009.jpg")


@pytest.mark.parametrize("count", ["17", "19", "many"])
def test_a_wrong_count_line(official, count):
    path = official / ATTR_TXT
    _edit_line(path, 1, lambda _: count)
    _fails(official, path, 1)


def test_a_missing_partition_row(official):
    path = official / PART_TXT
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4] + lines[5:]) + "\n")  # drop 000005.jpg
    # named where the attribute file lists the image: line 7
    _fails(official, official / ATTR_TXT, 7, "000005.jpg", str(path))


def test_a_partition_row_of_an_unknown_image(official):
    path = official / PART_TXT
    path.write_text(path.read_text() + "999999.jpg 0\n")
    _fails(official, path, 19, "999999.jpg")


@pytest.mark.parametrize("code", ["3", "-1", "train"])
def test_a_bad_partition_code(official, code):
    path = official / PART_TXT
    _edit_line(path, 12, lambda line: f"{line.split()[0]} {code}")
    _fails(official, path, 12, repr(code), "000012.jpg")


def test_a_repeated_image(official):
    path = official / ATTR_TXT
    lines = path.read_text().splitlines()
    lines[0] = "19"
    path.write_text("\n".join([*lines, lines[5]]) + "\n")  # 000004.jpg again, line 21
    _fails(official, path, None, "lines 6 and 21", "000004.jpg")


@pytest.mark.parametrize(
    ("option", "wrong", "close"),
    [("target", "Blonde_Hair", "Blond_Hair"), ("spurious", "male", "Male")],
)
def test_an_unknown_attribute_gets_close_names(official, option, wrong, close):
    message = _fails(official, official / ATTR_TXT, 2, repr(wrong), **{option: wrong})
    assert f"close matches: {close}" in message


def test_a_missing_image(official):
    (official / "img_align_celeba" / "000013.jpg").unlink()
    _fails(official, official / ATTR_TXT, 15, "000013.jpg: image not found")


def test_a_missing_partition_file(official):
    (official / PART_TXT).unlink()
    _fails(official, official / PART_TXT, None, "not found")


def test_kaggle_empty_cell_and_long_row(kaggle):
    path = kaggle / ATTR_CSV
    original = path.read_text()
    # 000003.jpg is line 4 of the CSV; empty its Blond_Hair cell (column 11, after image_id)
    _edit_line(
        path, 4, lambda line: ",".join(c if i != 10 else "" for i, c in enumerate(line.split(",")))
    )
    _fails(kaggle, path, 4, "Blond_Hair = nothing")
    path.write_text(original)
    _edit_line(path, 9, lambda line: line + ",1")
    _fails(kaggle, path, 9, "41 value(s)")
    path.write_text(original)
    _edit_line(kaggle / PART_CSV, 3, lambda line: line.replace(",0", ",5"))
    _fails(kaggle, kaggle / PART_CSV, 3, "'5'")


def test_no_celeba_files(tmp_path):
    shutil.copytree(
        write_celeba(tmp_path / "a") / "img_align_celeba", tmp_path / "b" / "img_align_celeba"
    )
    _fails(tmp_path / "b", tmp_path / "b", None, "list_attr_celeba.txt", "list_attr_celeba.csv")
