import pandas as pd
import pytest

from ddb.data.dataset import (
    WATERBIRDS_GROUPS,
    DataError,
    Groups,
    check_images,
    load_dataset,
    read_metadata,
    split_table,
)
from tests.conftest import tiny_config, write_waterbirds_folder


def test_reads_the_real_format_and_defines_groups(waterbirds_folder):
    root, table, groups = load_dataset(tiny_config(waterbirds_folder).data)
    assert root == waterbirds_folder
    # group = 2 y + place, named after data.class_names / data.place_names
    assert (table["group"] == 2 * table["y"] + table["place"]).all()
    assert groups.names == ["landbird_land", "landbird_water", "waterbird_land", "waterbird_water"]
    assert split_table(table, "train")["group"].value_counts().to_dict() == {
        0: 12,
        3: 12,
        1: 2,
        2: 2,
    }
    assert len(split_table(table, "test")) == 12
    assert "place_filename" in table.columns  # extra columns are kept


def test_any_number_of_classes_and_places():
    groups = Groups(("cat", "dog", "cow"), ("sofa", "bed", "bench"))
    assert groups.n_groups == 9
    assert groups.group_id(2, 1) == 7
    assert groups.name(7) == "cow_bed"


def test_missing_column_names_it(waterbirds_folder):
    path = waterbirds_folder / "metadata.csv"
    pd.read_csv(path).drop(columns=["place"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"metadata.csv: missing column\(s\) place"):
        read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)


@pytest.mark.parametrize(
    ("column", "value"), [("split", 3), ("y", 2), ("place", -1), ("split", "x")]
)
def test_unknown_codes_name_the_row(waterbirds_folder, column, value):
    path = waterbirds_folder / "metadata.csv"
    table = pd.read_csv(path)
    table[column] = table[column].astype(object)
    table.loc[4, column] = value
    table.to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"row 6 has {column} = "):
        read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)


def test_empty_split_is_an_error(tmp_path):
    root = write_waterbirds_folder(tmp_path, {0: (2, 0, 1), 3: (2, 0, 1)})
    with pytest.raises(DataError, match="val split"):
        read_metadata(root, WATERBIRDS_GROUPS)


def test_missing_metadata_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        read_metadata(tmp_path, WATERBIRDS_GROUPS)


def test_missing_and_corrupt_images_are_named(waterbirds_folder):
    table = read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)
    first, second = table["img_filename"].iloc[0], table["img_filename"].iloc[3]
    (waterbirds_folder / second).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"unreadable image .* row 5"):
        check_images(waterbirds_folder, table)
    (waterbirds_folder / first).unlink()
    with pytest.raises(DataError, match=rf"{first}: image not found.*row 2"):
        check_images(waterbirds_folder, table)
