"""The controls of issue 6: no inversion, ground-truth masks, copy-paste without diffusion."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ddb import paths
from ddb.data.dataset import DataError
from ddb.data.masks import load_mask
from ddb.stages import generate, invert, report, segment
from tests.conftest import indexed, tiny_config
from tests.test_ddb_stages import generation_inputs  # noqa: F401 (fixture)

YELLOW, BROWN = (250, 250, 0), (120, 60, 0)  # the fixture's waterbird / landbird squares


def add_true_masks(root: Path) -> Path:
    """Give the fixture dataset a mask_filename column: each image's bright square."""
    table = pd.read_csv(root / "metadata.csv")
    names = []
    for name in table.img_filename:
        pixels = np.asarray(Image.open(root / name).convert("RGB")).astype(int)
        square = (np.abs(pixels - YELLOW).sum(-1) < 40) | (np.abs(pixels - BROWN).sum(-1) < 40)
        mask_name = "masks/" + Path(name).with_suffix(".png").name
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(square.astype(np.uint8) * 255).save(root / mask_name)
        names.append(mask_name)
    table.assign(mask_filename=names).to_csv(root / "metadata.csv", index=False)
    return root


def test_copy_paste_replaces_the_masked_object_and_keeps_the_rest():
    source = np.zeros((20, 20, 3), np.uint8)
    source[...] = (0, 200, 0)
    source[5:15, 4:16] = (255, 0, 0)  # the source's object
    mask = np.zeros((20, 20), bool)
    mask[5:15, 4:16] = True
    donor = np.zeros((30, 30, 3), np.uint8)
    donor[10:20, 5:25] = (0, 0, 255)  # a wide donor object: scaled to the mask's width
    donor_mask = (donor == (0, 0, 255)).all(-1)
    out = generate.copy_paste(source, mask, donor, donor_mask)
    assert (out[~mask] == source[~mask]).all()
    inside = out[mask]
    assert not (inside == (255, 0, 0)).all(-1).any()  # nothing of the source's object is left
    blue = (inside == (0, 0, 255)).all(-1)
    assert 0.4 < blue.mean() < 1  # the donor object, aspect kept (20x10 into 12x10)
    rest = inside[~blue]
    assert (rest == (0, 200, 0)).all()  # the rest: the colour just outside the mask


def test_generate_copy_paste_pastes_objects_of_the_target_class(generation_inputs):  # noqa: F811
    config = generation_inputs
    add_true_masks(Path(config.data.root))
    indexed(config)  # the dataset changed: index it again, as DVC would
    config = dataclasses.replace(
        config, generate=dataclasses.replace(config.generate, method="copy_paste")
    )
    generate.run(config)
    manifest = pd.read_csv(paths.GENERATE / "manifest.csv")
    metadata = pd.read_csv(Path(config.data.root) / "metadata.csv").set_index("img_filename")
    assert len(manifest) == 4
    assert (metadata.loc[manifest.donor_filename, "y"].to_numpy() == manifest.y).all()
    assert (metadata.loc[manifest.donor_filename, "split"] == 0).all()
    for row in manifest.itertuples():
        source = np.asarray(Image.open(Path(config.data.root) / row.source_filename))
        sample = np.asarray(Image.open(paths.GENERATE / row.img_filename)).astype(int)
        mask = load_mask(paths.SEGMENT / row.mask_filename)
        assert (sample[~mask] == source[~mask]).all()
        colour = YELLOW if row.y == 1 else BROWN
        near_target = np.abs(sample[mask] - colour).sum(-1) < 60
        assert near_target.mean() > 0.5  # the target class's object fills the region


def test_copy_paste_without_true_masks_is_a_clear_error(generation_inputs):  # noqa: F811
    config = dataclasses.replace(
        generation_inputs,
        generate=dataclasses.replace(generation_inputs.generate, method="copy_paste"),
    )
    with pytest.raises(DataError, match="mask_filename.*generate.method: diffusion"):
        generate.run(config)


def test_no_inversion_prompts_name_the_class_word(generation_inputs):  # noqa: F811
    config = generation_inputs
    config = dataclasses.replace(config, invert=dataclasses.replace(config.invert, num_images=0))
    for path in paths.INVERT.glob("*/learned_embeds.safetensors"):
        path.unlink()  # must not be needed
    generate.run(config)
    manifest = pd.read_csv(paths.GENERATE / "manifest.csv")
    assert set(manifest.prompt) == {"a photo of a landbird bird", "a photo of a waterbird bird"}
    assert (manifest.prompt.str.contains("waterbird") == (manifest.y == 1)).all()


def test_invert_with_no_images_trains_nothing(in_tmp_repo, waterbirds_folder):
    config = indexed(tiny_config(waterbirds_folder))
    config = dataclasses.replace(config, invert=dataclasses.replace(config.invert, num_images=0))
    paths.SEGMENT.mkdir(parents=True)
    pd.DataFrame(columns=["img_filename", "y", "role", "mask_filename", "detected"]).to_csv(
        paths.SEGMENT / "segments.csv", index=False
    )
    invert.run(config)
    summary = json.loads((paths.INVERT / "summary.json").read_text())
    assert [s["images"] for s in summary.values()] == [0, 0]
    assert [s["token"] for s in summary.values()] == ["landbird", "waterbird"]
    assert not list(paths.INVERT.glob("*/learned_embeds.safetensors"))
    text = report.ddb_stages_markdown({"invert": summary})
    assert "prompts name 'waterbird'" in text


def _selected(root: Path) -> pd.DataFrame:
    table = pd.read_csv(root / "metadata.csv")
    train = table[table.split == 0].head(6)
    return train[["img_filename", "y"]].assign(loss=0.1, prob_y=0.9, role="source", rank=0)


def test_segment_truth_uses_the_datasets_masks(in_tmp_repo, waterbirds_folder):
    root = add_true_masks(waterbirds_folder)
    config = indexed(tiny_config(root))
    config = dataclasses.replace(
        config, segment=dataclasses.replace(config.segment, source="truth", dilate=0)
    )
    paths.SELECT.mkdir(parents=True)
    _selected(root).to_csv(paths.SELECT / "selected.csv", index=False)
    segment.run(config)  # models.segmenter is never loaded (it does not exist here)
    table = pd.read_csv(paths.SEGMENT / "segments.csv")
    metadata = pd.read_csv(root / "metadata.csv").set_index("img_filename")
    for row in table.itertuples():
        truth = load_mask(root / metadata.at[row.img_filename, "mask_filename"])
        assert (load_mask(paths.SEGMENT / row.mask_filename) == truth).all()
    assert (table.iou == 1.0).all()


def test_segment_truth_without_masks_is_a_clear_error(in_tmp_repo, waterbirds_folder):
    config = indexed(tiny_config(waterbirds_folder))
    config = dataclasses.replace(
        config, segment=dataclasses.replace(config.segment, source="truth")
    )
    paths.SELECT.mkdir(parents=True)
    _selected(waterbirds_folder).to_csv(paths.SELECT / "selected.csv", index=False)
    with pytest.raises(DataError, match="mask_filename.*segment.source: clipseg"):
        segment.run(config)
