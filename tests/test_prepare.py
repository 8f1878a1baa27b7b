import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ddb import paths
from ddb.data import embedded
from ddb.data.dataset import WATERBIRDS_GROUPS, check_images, read_metadata
from ddb.data.embedded import plan_rows
from ddb.stages import prepare
from tests.conftest import needs_sources, tiny_config


def test_plan_has_the_correlation_and_balanced_eval_splits():
    rows = pd.DataFrame(plan_rows(200, 10, 30, 0.95), columns=["split", "y", "place"])
    train = rows[rows.split == 0]
    assert len(train) == 400
    for y, own_place in ((0, 0), (1, 1)):
        of_class = train[train.y == y]
        assert (of_class.place == own_place).mean() == pytest.approx(0.95)
    for split, per_group in ((1, 10), (2, 30)):
        counts = rows[rows.split == split].groupby(["y", "place"]).size()
        assert (counts == per_group).all() and len(counts) == 4


def test_every_species_and_scene_has_a_class():
    assert set(embedded.BIRDS.values()) == {0, 1}
    assert set(embedded.SCENES.values()) == {0, 1}
    assert len([s for s, y in embedded.BIRDS.items() if y == 1]) >= 10


@needs_sources
def test_prepare_builds_a_valid_deterministic_benchmark(in_tmp_repo):
    config = tiny_config()
    prepare.run(config)
    groups = WATERBIRDS_GROUPS
    table = read_metadata(paths.PREPARED, groups)
    check_images(paths.PREPARED, table)
    check_images(paths.PREPARED, table, column="mask_filename")
    assert list(table.columns[:7]) == [
        "img_id",
        "img_filename",
        "y",
        "split",
        "place",
        "place_filename",
        "mask_filename",
    ]
    counts = table.groupby(["split", "group"]).size()
    assert counts[0].to_dict() == {0: 19, 1: 1, 2: 1, 3: 19}  # round(0.95 * 20) = 19
    assert (counts[2] == 4).all()
    # species labels follow the table; masks are binary and cover a real share of the image
    assert all(embedded.BIRDS[s] == y for s, y in zip(table.species, table.y, strict=True))
    for mask_file in table.mask_filename[:10]:
        mask = np.asarray(Image.open(paths.PREPARED / mask_file))
        assert set(np.unique(mask)) <= {0, 255}
        assert 0.05 < (mask > 0).mean() < 0.9
    assert "GPL-2" in (paths.REPORTS / "data.md").read_text()
    # data/prepared.md5 (foundation_report's dep) hashes every file of the folder
    listed = dict(
        reversed(line.split("  ", 1)) for line in paths.PREPARED_MD5.read_text().splitlines()
    )
    files = sorted(p for p in paths.PREPARED.rglob("*") if p.is_file())
    assert sorted(listed) == [p.relative_to(paths.PREPARED).as_posix() for p in files]
    some = files[3]
    expected = hashlib.md5(some.read_bytes()).hexdigest()
    assert listed[some.relative_to(paths.PREPARED).as_posix()] == expected
    assert (paths.FIGURES / "data_grid.png").is_file()
    first = (paths.PREPARED / table.img_filename[5]).read_bytes()
    prepare.run(config)  # same params -> the same bytes
    assert (paths.PREPARED / table.img_filename[5]).read_bytes() == first


@needs_sources
def test_holdout_species_never_reach_train(in_tmp_repo):
    import dataclasses

    config = tiny_config()
    config = dataclasses.replace(
        config, prepare=dataclasses.replace(config.prepare, holdout_species=["duck", "crow"])
    )
    prepare.run(config)
    table = pd.read_csv(paths.PREPARED / "metadata.csv")
    assert not table[table.split == 0].species.isin(["duck", "crow"]).any()


@needs_sources
def test_changed_source_file_is_caught(in_tmp_repo):
    sources = json.loads(paths.SOURCES.read_text())
    key = next(iter(sources["files"]))
    sources["files"][key]["sha256"] = "0" * 64
    paths.SOURCES.write_text(json.dumps(sources))
    with pytest.raises(embedded.SourcesError, match="ddb sources"):
        prepare.run(tiny_config())
    assert not paths.PREPARED.exists()


def test_missing_packages_name_them():
    message = embedded.missing_help(["bird:duck", "scene:mate-backgrounds:Aqua.jpg"])
    assert "tuxpaint-stamps-default" in message and "mate-backgrounds" in message
    assert "data.root" in message
