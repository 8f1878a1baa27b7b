"""Telling the dataset formats apart, and reading each one's raw table."""

from __future__ import annotations

import pandas as pd
import pytest

from ddb.data.celeba import read_celeba
from ddb.data.dataset import DataError, Groups, check_images, groups_of, read_metadata
from ddb.data.formats import detect_format, read_raw_table
from ddb.data.metashift import read_metashift
from tests.conftest import default_section, write_waterbirds_folder
from tests.test_celeba import write_celeba
from tests.test_metashift import write_metashift


@pytest.fixture
def folders(tmp_path):
    return {
        "waterbirds": write_waterbirds_folder(
            tmp_path / "waterbird_complete95_forest2water2", {g: (2, 1, 1) for g in range(4)}
        ),
        "official": write_celeba(tmp_path / "celeba"),
        "kaggle": write_celeba(tmp_path / "celeba-dataset", "kaggle"),
        "metashift": write_metashift(tmp_path / "metashifts" / "MetaDatasetCatDog"),
    }


def test_detects_each_format(folders):
    assert detect_format(folders["waterbirds"]) == "waterbirds"
    assert detect_format(folders["official"]) == "celeba"
    assert detect_format(folders["kaggle"]) == "celeba"
    assert detect_format(folders["metashift"]) == "metashift"


def test_reads_each_format(folders):
    waterbirds = read_raw_table(folders["waterbirds"])
    assert waterbirds.equals(pd.read_csv(folders["waterbirds"] / "metadata.csv"))
    assert read_raw_table(folders["official"]).equals(read_celeba(folders["official"]))
    assert read_raw_table(folders["kaggle"], "celeba").equals(read_celeba(folders["kaggle"]))
    assert read_raw_table(folders["metashift"]).equals(read_metashift(folders["metashift"]))


def test_passes_options_to_the_format_only(folders):
    options = {"target": "Smiling", "spurious": "Blond_Hair", "balance_train": True, "seed": 2}
    table = read_raw_table(folders["official"], celeba=options, metashift={"val_share": 0.3})
    assert table.equals(read_celeba(folders["official"], **options))
    table = read_raw_table(folders["metashift"], celeba=options, metashift={"val_share": 0.3})
    assert table.equals(read_metashift(folders["metashift"], val_share=0.3))


def test_a_wrong_option_or_format_gets_close_names(folders):
    with pytest.raises(ValueError, match="did you mean balance_train"):
        read_raw_table(folders["official"], celeba={"balance": True})
    with pytest.raises(ValueError, match="did you mean celeba"):
        read_raw_table(folders["official"], fmt="celebA")


@pytest.mark.parametrize("name", ["official", "kaggle", "metashift"])
def test_tables_pass_the_waterbirds_checks(folders, name):
    """Written as a metadata.csv next to the images, each table is a valid Waterbirds-format
    folder whose every image decodes."""
    root = folders[name]
    table = read_raw_table(root)
    table.to_csv(root / "metadata.csv", index=False)
    groups = Groups(("a", "b"), ("c", "d"))
    checked = read_metadata(root, groups)
    assert checked[["img_filename", "y", "place", "split"]].equals(
        table[["img_filename", "y", "place", "split"]]
    )
    check_images(root, checked)


def test_an_unknown_folder_lists_what_each_format_needs(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError) as err:
        detect_format(tmp_path / "photos")
    message = str(err.value)
    assert str(tmp_path / "photos") in message
    for needs in ("metadata.csv", "list_attr_celeba.txt", "list_attr_celeba.csv", "train/"):
        assert needs in message
    with pytest.raises(DataError, match="not a folder"):
        read_raw_table(tmp_path / "absent")


def test_points_at_the_sub_folder_a_download_unpacks_into(folders):
    parent = folders["metashift"].parent  # metashifts/, the zip's top folder
    with pytest.raises(DataError) as err:
        read_raw_table(parent)
    assert f"{folders['metashift']} is a metashift folder: point data.root at it" in str(err.value)


def test_an_incomplete_celeba_folder_names_the_missing_file(folders):
    (folders["kaggle"] / "list_eval_partition.csv").unlink()
    with pytest.raises(DataError, match="list_eval_partition.csv: not found"):
        detect_format(folders["kaggle"])


def data_section(root, **changes):
    """conf/'s data section (class and place names null: the format's own) at `root`."""
    return default_section("data", root=str(root), **changes)


def test_a_format_brings_its_own_group_names_unless_params_set_them(folders):
    # CelebA's two attributes, lowercased (data.celeba.target / .spurious: Blond_Hair / Male)
    names = groups_of(data_section(folders["official"])).names
    assert names == [
        "not_blond_hair_not_male",
        "not_blond_hair_male",
        "blond_hair_not_male",
        "blond_hair_male",
    ]
    # ... which follow the attributes chosen
    other = default_section("data.celeba", target="Smiling", spurious="Eyeglasses")
    smiling = groups_of(data_section(folders["kaggle"], celeba=other))
    assert smiling.class_names == ("not_smiling", "smiling")
    assert smiling.place_names == ("not_eyeglasses", "eyeglasses")
    metashift = groups_of(data_section(folders["metashift"])).names
    assert metashift == ["cat_indoor", "cat_outdoor", "dog_indoor", "dog_outdoor"]
    waterbirds = groups_of(data_section(folders["waterbirds"])).names
    assert waterbirds[0] == "landbird_land" and waterbirds[-1] == "waterbird_water"
    # a forced format is believed; names set in params win, each list on its own
    forced = data_section(folders["waterbirds"], format="metashift")
    assert groups_of(forced).class_names == ("cat", "dog")
    mine = data_section(folders["official"], class_names=["dark", "blond"])
    assert groups_of(mine).names[0] == "dark_not_male"
