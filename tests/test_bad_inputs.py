"""Bad inputs a user can meet, across params, data, models and disk (issue 12).

Each test asserts that the message names the exact key or file (and row), that it says
what to do, that no long work started (training, decoding every image, predicting), and
that the outputs of an earlier complete run are neither removed nor half-written, nor is a
temporary file or folder left beside them. Where a stage is the entry point, it is run the
way DVC runs it, through `ddb <stage>` (cli.main), so the user-facing exit is tested too.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ddb import cli, paths
from ddb.config import ConfigError
from ddb.data import dataset
from ddb.data.dataset import (
    MAX_SIDE,
    WATERBIRDS_GROUPS,
    DataError,
    groups_of,
    load_image,
    read_metadata,
)
from ddb.data.masks import load_mask
from ddb.models.inversion import load_learned_embeds, save_learned_embeds
from ddb.models.loaders import load_inpaint_pipeline
from ddb.stages import baselines as baselines_stage
from ddb.stages import erm as erm_stage
from ddb.stages import evaluate as evaluate_stage
from ddb.stages import select
from ddb.utils import StageError
from tests.conftest import tiny_config, tiny_params, write_waterbirds_folder
from tests.tiny_models import tiny_inpaint_pipeline

# ---------------------------------------------------------------------------------------
# Shared helpers


def tree(*folders: str) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folders`, by path."""
    found: dict[str, bytes | None] = {}
    for folder in map(Path, folders):
        for path in sorted(folder.rglob("*")):
            found[str(path)] = path.read_bytes() if path.is_file() else None
    return found


def train_outputs(per_class: int) -> pd.DataFrame:
    """A models/erm/train_outputs.csv as the erm stage writes it."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], per_class)
    prob_1 = rng.uniform(0.05, 0.95, len(y))
    probs = np.stack([1 - prob_1, prob_1], 1)
    return pd.DataFrame(
        {
            "img_filename": [f"images/{i:03d}.jpg" for i in range(len(y))],
            "y": y,
            "loss": -np.log(probs[np.arange(len(y)), y]),
            "prob_0": probs[:, 0],
            "prob_1": probs[:, 1],
            "pred": probs.argmax(1),
        }
    )


@pytest.fixture
def earlier_run(in_tmp_repo: Path) -> dict[str, bytes | None]:
    """Outputs of an earlier complete run, and their snapshot to compare with afterwards."""
    paths.ERM.mkdir(parents=True)
    (paths.ERM / "model.pt").write_bytes(b"the earlier ERM checkpoint")
    train_outputs(8).to_csv(paths.ERM / "train_outputs.csv", index=False)
    paths.SELECT.mkdir(parents=True)
    (paths.SELECT / "selected.csv").write_text("img_filename,y,loss,prob_y,role,rank\n")
    (paths.SELECT / "summary.json").write_text('{"earlier": true}\n')
    paths.REPORTS.mkdir()
    paths.METRICS.write_text('{"erm": "earlier metrics"}\n')
    return tree("models", "reports")


@pytest.fixture
def no_long_work(monkeypatch):
    """Training or predicting after a bad input fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("long work started although the input was bad")

    monkeypatch.setattr(erm_stage, "fit_classifier", refuse)
    monkeypatch.setattr(evaluate_stage, "load_classifier", refuse)
    monkeypatch.setattr(evaluate_stage, "predict", refuse)


def run_stage(stage: str, params_text: str, capsys) -> str:
    """`ddb --params params.yaml <stage>`; it must exit 2 with one 'error:' line."""
    Path("params.yaml").write_text(params_text)
    code = cli.main(["--params", "params.yaml", stage])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def edit_metadata(root: Path, edit) -> None:
    table = pd.read_csv(root / "metadata.csv")
    edit(table).to_csv(root / "metadata.csv", index=False)


# ---------------------------------------------------------------------------------------
# params.yaml


PARAMS_CASES = {
    # text, what the message must name, what it must say to do
    "not_yaml": (
        "erm:\n  seed: 0\nclassifier: {lr: 0.1\nretrain:\n  lr: 1\n",
        ["params.yaml: not valid YAML at line 4", "starts at line 3 'classifier: {lr: 0.1'"],
        "Fix the syntax there",
    ),
    "tab": (
        "erm:\n  seed: 0\nclassifier:\n\tlr: 0.1\n",
        ["params.yaml: line 4 has a tab character"],
        "Replace the tab(s) with spaces",
    ),
    "list_for_float": (
        {"classifier": {"lr": [0.001]}},  # tiny_params' overrides: every other key is there
        ["'classifier.lr' must be float, got [0.001] (a list)"],
        "write a number (one value, not a list)",
    ),
    "list_for_int": (
        {"select": {"sources_per_class": [4, 2]}},
        ["'select.sources_per_class' must be int, got [4, 2] (a list)"],
        "write a whole number (one value, not a list)",
    ),
}


@pytest.mark.parametrize("case", PARAMS_CASES)
def test_bad_params_stop_before_the_stage(case, earlier_run, no_long_work, capsys):
    text, names, fix = PARAMS_CASES[case]
    err = run_stage("erm", text if isinstance(text, str) else tiny_params(**text), capsys)
    for name in names:
        assert name in err
    assert fix in err
    assert tree("models", "reports") == earlier_run


# ---------------------------------------------------------------------------------------
# metadata.csv


def _duplicate_row(table):
    table.loc[7, "img_filename"] = table.loc[3, "img_filename"]
    return table


def _empty_cell(column):
    def edit(table):
        table[column] = table[column].astype(object)
        table.loc[4, column] = np.nan
        return table

    return edit


METADATA_CASES = {
    "duplicated_img_filename": (
        _duplicate_row,
        "metadata.csv: rows 5 and 9 both list img_filename",
        "remove the duplicate rows",
    ),
    "nan_y": (_empty_cell("y"), "metadata.csv: row 6 has no y (an empty cell", "fill in one of"),
    "nan_place": (_empty_cell("place"), "metadata.csv: row 6 has no place", "fill in one of"),
    "nan_split": (_empty_cell("split"), "metadata.csv: row 6 has no split", "fill in one of"),
    "nan_img_filename": (
        _empty_cell("img_filename"),
        "metadata.csv: row 6 has no img_filename",
        "write the image's path relative to the folder, or remove the row",
    ),
}


@pytest.mark.parametrize("case", METADATA_CASES)
def test_bad_metadata_names_the_row(case, earlier_run, waterbirds_folder, no_long_work, capsys):
    edit, names, fix = METADATA_CASES[case]
    edit_metadata(waterbirds_folder, edit)
    err = run_stage("index", tiny_params(waterbirds_folder), capsys)
    assert f"{waterbirds_folder}/{names}" in err
    assert fix in err
    assert tree("models", "reports") == earlier_run


def _drop(condition):
    return lambda table: table[~condition(table)]


@pytest.mark.parametrize(
    ("edit", "names", "fix"),
    [
        (  # waterbird_land (y 1, place 0) has no val image, though val has both
            _drop(lambda t: (t.split == 1) & (t.y == 1) & (t.place == 0)),
            "the val split has images of class waterbird and of place land but none of "
            "group waterbird_land",
            "Add val images of it (y = 1, place = 0, split = 1)",
        ),
        (  # no waterbird at all in test
            _drop(lambda t: (t.split == 2) & (t.y == 1)),
            "the test split has no image of class waterbird (y = 1)",
            "Add test images of that class (split = 2)",
        ),
    ],
    ids=["val_group_empty", "test_class_empty"],
)
def test_evaluation_split_with_an_empty_group_is_an_error(
    edit, names, fix, earlier_run, waterbirds_folder, no_long_work, capsys
):
    # Its WGA would be undefined, or quietly computed over the other groups.
    edit_metadata(waterbirds_folder, edit)
    err = run_stage("index", tiny_params(waterbirds_folder), capsys)
    assert f"{waterbirds_folder / 'metadata.csv'}: {names}" in err
    assert fix in err
    assert tree("models", "reports") == earlier_run


def test_train_split_with_an_empty_group_is_a_warning(waterbirds_folder, caplog):
    edit_metadata(waterbirds_folder, _drop(lambda t: (t.split == 0) & (t.y == 0) & (t.place == 1)))
    with caplog.at_level("WARNING", logger="ddb.data.dataset"):
        table = read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "train split has no image of group(s) landbird_water" in warnings[0].getMessage()
    assert set(table[table.split == 0].group) == {0, 2, 3}  # read, not refused


def test_a_split_on_one_place_by_design_passes(waterbirds_folder, caplog):
    # MetaShift's test set: cats and dogs, all on shelves. No group it implies is missing.
    edit_metadata(waterbirds_folder, _drop(lambda t: (t.split == 2) & (t.place == 1)))
    table = read_metadata(waterbirds_folder, WATERBIRDS_GROUPS)
    assert set(table[table.split == 2].group) == {0, 2}
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# ---------------------------------------------------------------------------------------
# Image files


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def _truncated_png(path: Path) -> None:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "PNG")  # a PNG under the listed name: PIL reads content
    path.write_bytes(buffer.getvalue()[: int(len(buffer.getvalue()) * 0.6)])


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


IMAGE_CASES = {
    "truncated_jpeg": (_truncated, "unreadable image (image file is truncated"),
    "truncated_png": (_truncated_png, "unreadable image"),
    "zero_bytes": (_zero_bytes, "empty image file (0 bytes)"),
    "directory": (_directory, "is a directory, not an image file"),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_broken_image_files_stop_erm_before_training(
    case, earlier_run, waterbirds_folder, no_long_work, capsys
):
    corrupt, problem = IMAGE_CASES[case]
    name = pd.read_csv(waterbirds_folder / "metadata.csv").img_filename[3]
    corrupt(waterbirds_folder / name)
    err = run_stage("index", tiny_params(waterbirds_folder), capsys)
    assert f"{waterbirds_folder / name}: {problem}" in err
    assert f"{waterbirds_folder / 'metadata.csv'} row 5 (img_filename)" in err
    assert "replace it with a complete copy" in err and "or remove its row" in err
    assert tree("models", "reports") == earlier_run


def test_verify_alone_would_pass_the_truncated_jpeg(tmp_path):
    # Why check_images decodes: PIL's verify() reads a JPEG's headers only.
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
    _truncated(path)
    with Image.open(path) as image:
        image.verify()  # no error
    with pytest.raises(DataError, match="cut.jpg: unreadable image"):
        dataset.check_images(tmp_path, pd.DataFrame({"img_filename": ["cut.jpg"]}))


def test_mask_of_the_wrong_size_names_both_sizes(
    earlier_run, waterbirds_folder, no_long_work, capsys
):
    table = pd.read_csv(waterbirds_folder / "metadata.csv")
    table["mask_filename"] = [f"masks/{i:03d}.png" for i in range(len(table))]
    (waterbirds_folder / "masks").mkdir()
    for i, name in enumerate(table.mask_filename):
        side = 16 if i == 6 else 24  # the images are 24 x 24
        Image.new("L", (side, side), 255).save(waterbirds_folder / name)
    table.to_csv(waterbirds_folder / "metadata.csv", index=False)
    err = run_stage("index", tiny_params(waterbirds_folder), capsys)
    assert f"{waterbirds_folder / 'masks/006.png'}: mask is 16x16 but its image" in err
    assert "is 24x24" in err and "row 8 (mask_filename)" in err
    assert "rebuild the mask from the image" in err
    assert tree("models", "reports") == earlier_run


def test_stage_mask_of_the_wrong_size_names_both_sizes(tmp_path):
    # What invert meets when a mask in models/segment is stale (made from other images).
    Image.new("L", (20, 10), 255).save(tmp_path / "00001.png")
    with pytest.raises(DataError) as err:
        load_mask(tmp_path / "00001.png", shape=(24, 32))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / '00001.png'}: mask is 20x10")
    assert "is 32x24" in message and "rebuild the mask" in message
    assert load_mask(tmp_path / "00001.png", shape=(10, 20)).all()  # the right size passes


# Accepted and converted: other pixel formats.


def test_ordinary_rgb_images_load_exactly_as_before(tmp_path):
    # The committed pipeline results depend on these pixels: load_image was
    # `Image.open(path).convert("RGB")`; the same decoder runs twice here, so exact.
    pixels = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    for name in ("photo.jpg", "photo.png"):
        Image.fromarray(pixels).save(tmp_path / name)
        with Image.open(tmp_path / name) as image:
            before = np.asarray(image.convert("RGB"))
        after = load_image(tmp_path / name)
        assert after.mode == "RGB" and after.size == (40, 24)
        assert np.array_equal(np.asarray(after), before)
    assert np.array_equal(np.asarray(load_image(tmp_path / "photo.png")), pixels)  # lossless


def test_grayscale_is_replicated_to_rgb(tmp_path):
    gray = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgb = np.asarray(load_image(tmp_path / "gray.png"))
    assert rgb.shape == (8, 8, 3)
    assert all(np.array_equal(rgb[..., c], gray) for c in range(3))


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (200, 30, 10, 255)  # opaque: unchanged
    rgba[0, 1] = (0, 0, 0, 0)  # transparent black: the page (white), not black
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white: 255 * (1 - 128/255) = 127
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    rgb = np.asarray(load_image(tmp_path / "alpha.png")).astype(int)
    assert rgb[0, 0].tolist() == [200, 30, 10]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert np.abs(rgb[0, 2] - 127).max() <= 1  # PIL's compositing rounds its own way


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 220, 20, 60] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "palette.png", transparency=0)  # index 0 is transparent
    rgb = np.asarray(load_image(tmp_path / "palette.png"))
    assert rgb.tolist() == [[[255, 255, 255], [220, 20, 60]]]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    # 65535 -> 255; PIL's own convert("RGB") would clip everything above 255 to white
    assert rgb[..., 0].tolist() == [[0, 1, 4, 128, 255]]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def _png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_rgb_reads_as_eight_bit(tmp_path):
    # 48-bit PNG (PIL cannot write one): each channel 0..65535.
    pixels = np.array([[[0, 32896, 65535], [4660, 51400, 257]]], np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    (tmp_path / "deep_rgb.png").write_bytes(_png(2, 1, 16, 2, rows))
    rgb = np.asarray(load_image(tmp_path / "deep_rgb.png")).astype(int)
    # PIL keeps the high byte (floor of v / 256); within 1 of the rounded v / 257
    assert np.abs(rgb - np.rint(pixels / 257)).max() <= 1
    assert rgb[0, 0].tolist()[2] == 255 and rgb[0, 0].tolist()[0] == 0


@pytest.fixture
def spy_bitmaps(monkeypatch) -> list[tuple[str, tuple[int, int]]]:
    """(operation, size) of every resize and convert: where full-size bitmaps would show."""
    seen: list[tuple[str, tuple[int, int]]] = []
    for name in ("resize", "convert"):
        original = getattr(Image.Image, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, self.size))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Image.Image, name, spy)
    return seen


def _huge(mode: str, side: int = 10000) -> Image.Image:
    """A mostly constant image (it compresses to little): a bright square in the middle."""
    image = Image.new(mode, (side, side), 60)
    image.paste(250, (4000, 4000, 6000, 6000))
    return image


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_huge_jpeg_is_decoded_small(tmp_path, spy_bitmaps):
    _huge("L").save(tmp_path / "huge.jpg", quality=90)  # 10000 x 10000, 100 M pixels
    image = load_image(tmp_path / "huge.jpg")
    assert image.size == (MAX_SIDE, MAX_SIDE) and image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[MAX_SIDE // 2, MAX_SIDE // 2] - 250).max() <= 3  # JPEG is lossy
    assert np.abs(pixels[10, 10] - 60).max() <= 3
    # libjpeg decoded it at 1/4 scale (2500 px, the smallest at least 2 x 1024): never
    # a 10000 px bitmap, and PIL's DecompressionBombWarning (above 89 M pixels) is silent
    assert max(max(size) for _, size in spy_bitmaps) == 2500


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_huge_png_and_its_mask_are_decoded_once_and_stay_aligned(tmp_path, spy_bitmaps):
    _huge("L").save(tmp_path / "huge.png", compress_level=1)
    mask = Image.new("L", (10000, 10000), 0)
    mask.paste(255, (4000, 4000, 6000, 6000))
    mask.save(tmp_path / "huge_mask.png", compress_level=1)
    image = np.asarray(load_image(tmp_path / "huge.png"))
    full_size = [op for op, size in spy_bitmaps if size == (10000, 10000)]
    assert full_size == ["resize"]  # decoded once, resized in its own mode, converted small
    loaded_mask = load_mask(tmp_path / "huge_mask.png")
    assert loaded_mask.shape == image.shape[:2] == (MAX_SIDE, MAX_SIDE)
    # the square is where the mask says: 4000..6000 of 10000 -> 410..614 of 1024
    bright = image[..., 0] > 155
    assert (bright == loaded_mask).mean() > 0.99  # the resampling fringes differ


def test_image_beyond_pils_limit_is_refused_with_advice(tmp_path):
    # 20000 x 20000 (400 M pixels) is over twice PIL's limit; the header alone says so
    (tmp_path / "giant.png").write_bytes(_png(20000, 20000, 8, 0, b""))
    with pytest.raises(DataError) as err:
        load_image(tmp_path / "giant.png")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'giant.png'}: image too large to decode")
    assert f"shrink it beforehand to at most {MAX_SIDE} px a side" in message


# ---------------------------------------------------------------------------------------
# Models


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inpaint") / "inpaint"
    tiny_inpaint_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def pipeline_copy(saved_pipeline: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy to damage; loading must stop before diffusers is asked to load anything."""
    from diffusers import StableDiffusionInpaintPipeline

    copy = tmp_path / "inpaint"
    shutil.copytree(saved_pipeline, copy)

    def refuse(*args, **kwargs):
        raise AssertionError("diffusers was asked to load a folder known to be broken")

    monkeypatch.setattr(StableDiffusionInpaintPipeline, "from_pretrained", refuse)
    return copy


def test_pipeline_folder_missing_its_unet(pipeline_copy: Path):
    shutil.rmtree(pipeline_copy / "unet")
    with pytest.raises(ConfigError) as err:
        load_inpaint_pipeline(str(pipeline_copy))
    message = str(err.value)
    assert f"'models.diffusion' is '{pipeline_copy}'" in message
    assert f"missing its unet/ component ({pipeline_copy / 'unet'} does not exist" in message
    assert "dvc repro -f foundation" in message and "download the checkpoint again" in message


@pytest.mark.parametrize(
    "weights",
    ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"],
    ids=["unet", "text_encoder"],  # the text encoder's used to escape as a bare SafetensorError
)
def test_pipeline_with_a_truncated_safetensors_file(pipeline_copy: Path, weights: str):
    _truncated(pipeline_copy / weights)
    with pytest.raises(ConfigError) as err:
        load_inpaint_pipeline(str(pipeline_copy))
    message = str(err.value)
    assert message.startswith(f"{pipeline_copy / weights}: corrupt or truncated safetensors")
    assert "'models.diffusion'" in message and "rebuild it" in message


@pytest.fixture(scope="module")
def pipe():
    return tiny_inpaint_pipeline()  # text encoder width 32


def test_learned_embedding_of_another_text_encoder_width(pipe, in_tmp_repo, saved_pipeline):
    # Through generate's loader: models/invert holds tokens learned with a wider encoder.
    from ddb.stages.generate import load_pipeline

    config = tiny_config()
    config = tiny_config(models=dataclasses.replace(config.models, diffusion=str(saved_pipeline)))
    names = groups_of(config.data).class_names
    for width, name in zip((32, 64), names):
        save_learned_embeds(
            paths.INVERT / name / "learned_embeds.safetensors", f"<{name}>", torch.ones(1, width)
        )
    earlier = tree("models")
    with pytest.raises(StageError) as err:
        load_pipeline(config, names, "cpu")
    message = str(err.value)
    wrong = paths.INVERT / names[1] / "learned_embeds.safetensors"
    assert message.startswith(f"{wrong}: the embedding of <{names[1]}> has shape [1, 64]")
    assert "rows of width 32 ([1, 32])" in message and "another text encoder" in message
    assert "dvc repro -f invert" in message
    assert tree("models") == earlier
    # the right width loads, and the token then means something to the tokenizer
    before = len(pipe.tokenizer)
    assert load_learned_embeds(pipe, paths.INVERT / names[0] / "learned_embeds.safetensors")
    assert len(pipe.tokenizer) == before + 1


def test_corrupt_learned_embedding_is_named(pipe, tmp_path):
    path = tmp_path / "landbird" / "learned_embeds.safetensors"
    save_learned_embeds(path, "<landbird>", torch.ones(1, 32))
    _truncated(path)
    before = len(pipe.tokenizer)
    with pytest.raises(StageError) as err:
        load_learned_embeds(pipe, path)
    message = str(err.value)
    assert message.startswith(f"{path}: corrupt or truncated safetensors file")
    assert "dvc repro -f invert" in message
    assert len(pipe.tokenizer) == before  # nothing half-loaded


# ---------------------------------------------------------------------------------------
# Disk


def test_output_folder_not_writable(
    earlier_run, waterbirds_folder, no_long_work, capsys, monkeypatch
):
    models = Path("models").resolve()
    if os.geteuid() == 0:
        # root writes through any mode bits, so chmod cannot make the folder unwritable:
        # the refusal is simulated where the stage first writes, making its temp folder.
        import tempfile

        real_mkdtemp = tempfile.mkdtemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == models:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real_mkdtemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    else:
        models.chmod(0o555)
    try:
        err = run_stage("erm", tiny_params(waterbirds_folder), capsys)
    finally:
        models.chmod(0o755)
    assert f"{paths.ERM}: cannot write it, the folder models is not writable" in err
    assert "Make it writable" in err
    assert tree("models", "reports") == earlier_run


def test_disk_full_mid_stage_keeps_the_earlier_output(earlier_run, capsys, monkeypatch):
    # select writes selected.csv, then summary.json: the disk fills between the two.
    real_write_text = Path.write_text

    def disk_full(self, *args, **kwargs):
        if self.name == "summary.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    err = run_stage("select", tiny_params(), capsys)
    assert f"{paths.SELECT}: the disk filled up while writing it" in err
    assert "Free space on the disk" in err and "run the stage again" in err
    # the earlier models/select is whole, and no temporary folder is left beside it
    assert tree("models", "reports") == earlier_run
    assert sorted(os.listdir("models")) == ["erm", "select"]


# ---------------------------------------------------------------------------------------
# A dataset too small for DDB's selection


@pytest.mark.parametrize("stage", ["erm", "baselines"])  # DVC may run either first
def test_dataset_too_small_stops_training_before_it_starts(
    stage, earlier_run, tmp_path, no_long_work, capsys, monkeypatch
):
    # A new user's folder: 40 train images per class, the default select and invert counts.
    root = write_waterbirds_folder(
        tmp_path / "small", {0: (36, 2, 2), 1: (4, 2, 2), 2: (4, 2, 2), 3: (36, 2, 2)}
    )

    def no_training(*args, **kwargs):
        raise AssertionError("a model trained before the check")

    monkeypatch.setattr(baselines_stage, "method", no_training)  # no baseline can train
    params = tiny_params(root, select={"sources_per_class": 400}, invert={"num_images": 30})
    Path("params.yaml").write_text(params)
    assert cli.main(["--params", "params.yaml", "index"]) == 0  # the index does not count
    earlier_run = tree("models", "reports")
    err = run_stage(stage, params, capsys)
    assert f"{paths.INDEX_TABLE}: class landbird has 40 train images" in err
    assert "select.sources_per_class (400) + invert.num_images (30) = 430" in err
    assert "lower select.sources_per_class to at most 10" in err
    assert "add train images of class landbird" in err
    assert tree("models", "reports") == earlier_run


def test_too_few_train_outputs_stop_select(earlier_run, capsys):
    train_outputs(5).to_csv(paths.ERM / "train_outputs.csv", index=False)
    earlier = tree("models", "reports")
    err = run_stage("select", tiny_params(), capsys)  # 4 sources + 2 inversion images
    assert f"{paths.ERM / 'train_outputs.csv'}: class landbird has 5 train images" in err
    assert "select.sources_per_class (4) + invert.num_images (2) = 6" in err
    assert "lower select.sources_per_class to at most 3" in err
    assert "lower invert.num_images to at most 1" in err
    assert tree("models", "reports") == earlier


def test_enough_images_pass_the_check():
    # The boundary: exactly sources + inversion images per class is enough.
    select.check_enough_images({0: 6, 1: 6}, ["a", "b"], 4, 2, where="x")
    with pytest.raises(DataError, match="class b has 5 train images"):
        select.check_enough_images({0: 6, 1: 5}, ["a", "b"], 4, 2, where="x")


def test_earlier_run_fixture_is_a_valid_select_input(earlier_run, capsys):
    # The disk-full test relies on select succeeding on the earlier run's outputs otherwise.
    Path("params.yaml").write_text(tiny_params())
    assert cli.main(["--params", "params.yaml", "select"]) == 0
    summary = json.loads((paths.SELECT / "summary.json").read_text())
    assert summary["landbird"]["sources"] == 4 and summary["waterbird"]["inversion_images"] == 2
