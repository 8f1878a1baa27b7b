"""LangSAM (GroundingDINO + SAM 2): tiny random-weight stand-ins under the paper's hub ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ddb import paths
from ddb.config import ConfigError
from ddb.data.masks import load_mask
from ddb.models.langsam import (
    DEFAULT_DETECTOR,
    DEFAULT_SAM,
    LangSam,
    best_boxes,
    detector_prompt,
    load_langsam,
    union_mask,
)
from ddb.stages import index, segment
from tests.conftest import default_section, tiny_config
from tests.tiny_langsam import save_langsam_stand_ins


def use_hf_home(hf_home: Path, monkeypatch) -> None:
    """Point this process's Hugging Face cache at `hf_home`, offline (huggingface_hub reads
    its constants once, at import, so patch them too)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models' ops are too small to split: on a busy 2-core machine two threads
    made the tiny GroundingDINO 20x slower (spinning) than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    """An HF home whose hub cache holds the tiny GroundingDINO and SAM 2 under the default ids."""
    hf_home = tmp_path_factory.mktemp("hf")
    save_langsam_stand_ins(hf_home)
    return hf_home


@pytest.fixture(scope="module")
def langsam(stand_ins: Path) -> LangSam:
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hf_home(stand_ins, monkeypatch)
        return load_langsam(DEFAULT_DETECTOR, DEFAULT_SAM, "cpu")


def noise_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """RGB noise images of the given (height, width)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("bird", "bird."), ("Bird", "bird."), (" land Bird ", "land bird."), ("bird.", "bird.")],
)
def test_detector_prompt_is_lower_case_and_ends_with_a_dot(prompt: str, expected: str):
    assert detector_prompt(prompt) == expected


def test_detector_prompt_must_not_be_empty():
    with pytest.raises(ValueError, match="empty"):
        detector_prompt("  ")


def test_union_mask_joins_the_boxes_masks_above_the_threshold():
    logits = torch.full((3, 1, 4, 6), -5.0)  # N×1×H×W, as SAM with multimask_output=False
    logits[0, 0, 0, :2] = 3.0  # box 0: top-left corner
    logits[1, 0, 3, 4:] = 0.5  # box 1: bottom-right corner
    logits[2, 0, 2, 2] = 0.0  # box 2: exactly at the threshold, so not in the mask
    expected = np.zeros((4, 6), bool)
    expected[0, :2] = expected[3, 4:] = True

    mask = union_mask(logits, (4, 6))

    assert mask.dtype == bool and mask.shape == (4, 6)
    assert (mask == expected).all()
    stricter = union_mask(logits, (4, 6), mask_threshold=1.0)  # box 1's 0.5 falls out
    assert stricter.sum() == 2 and stricter[0, :2].all()
    assert (union_mask(logits[:, 0], (4, 6)) == expected).all()  # N×H×W works too


def test_union_mask_of_no_box_is_empty_at_the_image_size():
    mask = union_mask(torch.zeros((0, 1, 256, 256)), (5, 7))
    assert mask.dtype == bool and mask.shape == (5, 7) and not mask.any()


def test_union_mask_rejects_masks_of_another_size():
    with pytest.raises(ValueError, match="the image is"):
        union_mask(torch.zeros((1, 1, 4, 4)), (4, 5))


def test_stand_ins_load_by_the_default_hub_ids_as_float32_eval(langsam: LangSam):
    paper = ("IDEA-Research/grounding-dino-base", "facebook/sam2.1-hiera-small")  # lang-sam's
    models = default_section("models")
    assert (models.detector, models.sam) == paper
    for model in (langsam.detector, langsam.sam):
        assert not model.training
        assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = langsam.detector_processor.tokenizer("bird.").input_ids
    assert ids[0] == 101 and ids[-2:] == [1012, 102]  # [CLS] ... "." [SEP], as BERT's


def test_masks_are_bool_at_each_images_own_size(langsam: LangSam):
    sizes = [(40, 60), (50, 30), (40, 60), (33, 33), (40, 60)]
    images = noise_images(sizes)
    images[3] = images[3].convert("L")  # converted to RGB, as any input

    masks = langsam.masks(images, "bird", box_threshold=0.3, text_threshold=0.25, batch_size=2)

    assert [m.shape for m in masks] == sizes
    assert all(isinstance(m, np.ndarray) and m.dtype == bool for m in masks)
    assert any(m.any() for m in masks)  # the random detector scores some boxes above 0.3


def test_box_threshold_above_any_score_gives_empty_masks(langsam: LangSam):
    images = noise_images([(40, 60), (50, 30)])
    assert all(len(b) == 0 for b in langsam.boxes(images, "bird", 1.0, 0.25))  # scores <= 1

    masks = langsam.masks(images, "bird", box_threshold=1.0, text_threshold=0.25)

    assert [m.shape for m in masks] == [(40, 60), (50, 30)]
    assert not any(m.any() for m in masks)


def test_an_images_mask_is_the_union_of_its_boxes_masks(langsam: LangSam, monkeypatch):
    images = noise_images([(40, 60), (40, 60)], seed=1)
    two_boxes = torch.tensor([[2.0, 3.0, 30.0, 20.0], [25.0, 10.0, 58.0, 38.0]])
    one_by_one = [langsam.box_masks(images[:1], [box[None]])[0] for box in two_boxes]
    assert one_by_one[0].shape == (40, 60)

    def hand_made_boxes(self, batch, prompt, box_threshold, text_threshold, max_boxes=0):
        return [two_boxes, torch.zeros((0, 4))]  # image 0: two boxes; image 1: none

    monkeypatch.setattr(LangSam, "boxes", hand_made_boxes)
    masks = langsam.masks(images, "bird")

    assert (masks[0] == (one_by_one[0] | one_by_one[1])).all()
    assert masks[1].shape == (40, 60) and not masks[1].any()  # no box: no detection


@pytest.mark.parametrize("per_call", [1, 3])
def test_boxes_in_chunks_through_the_decoder_give_the_same_union(
    langsam: LangSam, monkeypatch, per_call: int
):
    images = noise_images([(40, 60)], seed=2)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, (7, 2, 2)) * [60, 40]  # 7 boxes: (x, y) pairs
    boxes = torch.tensor(np.concatenate([corners.min(1), corners.max(1) + 2], 1)).float()
    whole = langsam.box_masks(images, [boxes], boxes_per_call=len(boxes))[0]
    first = langsam.box_masks(images, [boxes[:1]])[0]
    assert whole.any() and not np.array_equal(whole, first)  # the other boxes add to it
    calls = []
    decode = LangSam._decode

    def counted(self, embedding, chunk, size):
        calls.append(len(chunk))
        return decode(self, embedding, chunk, size)

    monkeypatch.setattr(LangSam, "_decode", counted)
    chunked = langsam.box_masks(images, [boxes], boxes_per_call=per_call)[0]
    assert np.array_equal(chunked, whole)
    assert max(calls) <= per_call and sum(calls) == len(boxes)


def test_best_boxes_keeps_the_highest_scoring_first():
    boxes = torch.arange(20.0).reshape(5, 4)
    scores = torch.tensor([0.4, 0.9, 0.35, 0.7, 0.5])
    assert best_boxes(boxes, scores, 2).tolist() == [boxes[1].tolist(), boxes[3].tolist()]
    assert best_boxes(boxes, scores, 0)[:, 0].tolist() == [4.0, 12.0, 16.0, 0.0, 8.0]  # all
    assert len(best_boxes(boxes, scores, 9)) == 5


def test_max_boxes_caps_the_detectors_boxes_per_image(langsam: LangSam):
    images = noise_images([(40, 60), (40, 60)], seed=3)
    every = langsam.boxes(images, "bird", 0.05, 0.25)  # a low threshold: many random boxes
    assert all(len(b) > 2 for b in every)
    capped = langsam.boxes(images, "bird", 0.05, 0.25, max_boxes=2)
    for few, many in zip(capped, every):
        assert len(few) == 2
        assert all(any(torch.equal(box, other) for other in many) for box in few)
    masks = langsam.masks(images, "bird", 0.05, 0.25, max_boxes=2)
    expected = langsam.box_masks(images, capped)
    assert all(np.array_equal(m, e) for m, e in zip(masks, expected))


@pytest.mark.parametrize(
    ("missing", "key"), [("detector", "models.detector"), ("sam", "models.sam")]
)
def test_a_hub_id_not_in_the_cache_is_a_clear_error(
    stand_ins: Path, monkeypatch, missing: str, key: str
):
    use_hf_home(stand_ins, monkeypatch)
    names = {"detector": DEFAULT_DETECTOR, "sam": DEFAULT_SAM, missing: "ddb-tests/not-cached"}
    with pytest.raises(ConfigError) as err:
        load_langsam(names["detector"], names["sam"])
    message = str(err.value)
    assert f"'{key}' is 'ddb-tests/not-cached'" in message
    assert "not in the local Hugging Face cache" in message and str(stand_ins / "hub") in message
    assert "hf download ddb-tests/not-cached" in message


def test_an_empty_folder_is_a_clear_error(tmp_path: Path):
    (tmp_path / "gdino").mkdir()
    with pytest.raises(ConfigError, match="'models.detector'.*not a complete saved model"):
        load_langsam(str(tmp_path / "gdino"), DEFAULT_SAM)


def test_segment_config_takes_langsam_and_checks_its_thresholds():
    default_section("segment", source="langsam")
    segment = default_section("segment")
    assert (segment.box_threshold, segment.text_threshold) == (0.3, 0.25)
    assert segment.max_boxes == 16
    bad_values = ({"box_threshold": 1.0}, {"text_threshold": 0.0}, {"source": "sam"})
    for bad in (*bad_values, {"max_boxes": -1}):
        with pytest.raises(ConfigError, match=f"'segment.{next(iter(bad))}'"):
            default_section("segment", **bad)


def test_segment_stage_with_langsam(in_tmp_repo, waterbirds_folder, stand_ins, monkeypatch):
    use_hf_home(stand_ins, monkeypatch)
    config = tiny_config(waterbirds_folder)
    config = dataclasses.replace(
        config,
        segment=dataclasses.replace(config.segment, source="langsam", dilate=0, batch_size=4),
        models=dataclasses.replace(config.models, segmenter="models/not-needed"),
    )
    train = pd.read_csv(waterbirds_folder / "metadata.csv").query("split == 0").head(6)
    paths.SELECT.mkdir(parents=True)
    selected = train[["img_filename", "y"]].assign(loss=0.1, prob_y=0.9, role="source", rank=0)
    selected.to_csv(paths.SELECT / "selected.csv", index=False)

    index.run(config)
    segment.run(config)  # models.segmenter (CLIPSeg) is never loaded

    table = pd.read_csv(paths.SEGMENT / "segments.csv")
    assert len(table) == 6 and table.detected.dtype == bool
    for row in table.itertuples():
        mask = load_mask(paths.SEGMENT / row.mask_filename)
        assert mask.shape == (24, 24)  # the fixture's image size
        if row.detected:
            assert mask.mean() == pytest.approx(row.area)  # dilate 0: the mask as LangSAM made it
        else:
            assert not mask.any()
    assert (table.area > 0).any()  # the random detector finds boxes in some of them
