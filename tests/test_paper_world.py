"""The offline paper world (tests/paper_world.py): the paper's checkpoints load by hub id
from the caches, at the paper's sizes, and the Waterbirds folder reads as the real one."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.paper_world import (
    CLIPSEG,
    DATA_ROOT_KEY,
    SD2_BASE,
    SD2_INPAINT,
    paper_world,
    use_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return paper_world(tmp_path_factory.mktemp("paper_world"))


@pytest.fixture
def in_world(world: dict, monkeypatch, tmp_path: Path) -> dict:
    """This process pointed at the world, from a cwd without any model folder: a hub id can
    only resolve through the cache."""
    use_world(world, monkeypatch)
    monkeypatch.chdir(tmp_path)
    return world


def test_sd2_inpainting_loads_by_hub_id_with_sd2s_traits(in_world: dict):
    from diffusers import PNDMScheduler

    from ddb.models.loaders import load_inpaint_pipeline

    pipe = load_inpaint_pipeline(SD2_INPAINT)

    assert isinstance(pipe.scheduler, PNDMScheduler)
    scheduler = pipe.scheduler.config
    assert (scheduler.beta_start, scheduler.beta_end) == (0.00085, 0.012)
    assert scheduler.beta_schedule == "scaled_linear" and scheduler.num_train_timesteps == 1000
    assert scheduler.steps_offset == 1 and scheduler.skip_prk_steps
    assert not scheduler.set_alpha_to_one and scheduler.prediction_type == "epsilon"
    unet = pipe.unet.config
    assert unet.in_channels == 9 and unet.out_channels == 4
    assert unet.sample_size * pipe.vae_scale_factor == 512 and pipe.vae_scale_factor == 8
    assert unet.use_linear_projection
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.tokenizer("a photo")["input_ids"] == [49406, 320, 1125, 49407]
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.pad_token_id == 0  # SD2 pads "!"
    assert pipe.safety_checker is None
    snapshot = Path(in_world["HF_HUB_CACHE"]) / "models--stabilityai--stable-diffusion-2-inpainting"
    assert (snapshot / "refs" / "main").is_file()


def test_inpainting_and_base_share_one_text_encoder(in_world: dict):
    from diffusers import PNDMScheduler

    from ddb.models.loaders import (
        load_inpaint_pipeline,
        load_text2image_pipeline,
        load_text_encoder_spec,
    )

    inpaint = load_inpaint_pipeline(SD2_INPAINT)
    base = load_text2image_pipeline(SD2_BASE)

    assert base.unet.config.in_channels == 4 and base.unet.config.sample_size == 64
    assert base.vae_scale_factor == 8 and isinstance(base.scheduler, PNDMScheduler)
    assert load_text_encoder_spec("models.inversion", SD2_BASE) == load_text_encoder_spec(
        "models.diffusion", SD2_INPAINT
    )
    embeddings = inpaint.text_encoder.get_input_embeddings().weight
    assert embeddings.shape[0] == 49408
    assert torch.equal(embeddings, base.text_encoder.get_input_embeddings().weight)
    a, b = inpaint.text_encoder.state_dict(), base.text_encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prompt = "a photo of a bird on the sea"
    assert inpaint.tokenizer(prompt)["input_ids"] == base.tokenizer(prompt)["input_ids"]
    # different models: the UNets are not one another's
    assert not torch.equal(inpaint.unet.conv_out.weight, base.unet.conv_out.weight)


def test_clipseg_loads_by_hub_id_and_segments_a_varied_size_image(in_world: dict):
    from ddb.models.loaders import load_segmenter
    from ddb.models.segmenter import segment

    processor, model = load_segmenter(CLIPSEG)

    assert processor.image_processor.size == {"height": 352, "width": 352}
    assert model.config.vision_config.patch_size == 16 and model.config.reduce_dim == 64
    image = np.random.default_rng(0).integers(0, 256, (333, 500, 3), dtype=np.uint8)
    with torch.inference_mode():
        mask = segment(processor, model, image, "bird")
    assert mask.shape == (1, 333, 500) and mask.dtype == bool


def test_langsam_loads_by_its_default_hub_ids(in_world: dict):
    from ddb.models.langsam import load_langsam

    langsam = load_langsam()  # models.detector and models.sam's defaults: LangSAM's ids

    assert langsam.detector.config.model_type == "grounding-dino"
    assert langsam.sam.config.model_type == "sam2"
    image = Image.fromarray(np.zeros((333, 500, 3), np.uint8))
    [boxes] = langsam.boxes([image], "bird", box_threshold=0.0, text_threshold=0.0)
    assert boxes.ndim == 2 and boxes.shape[1] == 4


def test_resnet50_pretrained_loads_the_saved_imagenet_file(in_world: dict):
    from ddb.models.classifier import ARCHITECTURES, build_classifier

    saved = Path(in_world["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert Path(ARCHITECTURES["resnet50"][1].url).name == saved.name
    state = torch.load(saved, map_location="cpu", weights_only=True)

    model = build_classifier("resnet50", 2, pretrained=True)

    assert state["fc.weight"].shape == (1000, 2048)  # ImageNet's head, as downloaded
    assert torch.equal(model.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert model.fc.out_features == 2


def test_generate_batch_repaints_at_512_px_and_keeps_the_rest(in_world: dict):
    from ddb.config import GenerateConfig
    from ddb.data.waterbirds import load_image
    from ddb.models.loaders import load_inpaint_pipeline
    from ddb.stages.generate import generate_batch

    root = Path(in_world[DATA_ROOT_KEY])
    with open(root / "metadata.csv") as file:
        names = [row["img_filename"] for row in csv.DictReader(file)]
    # a source that is neither square nor 512 px
    source = next(
        np.asarray(load_image(root / n))
        for n in names
        if Image.open(root / n).size in {(500, 333), (500, 332), (333, 500)}
    )
    height, width = source.shape[:2]
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = True
    pipe = load_inpaint_pipeline(SD2_INPAINT)
    latent_sides = []
    pipe.unet.register_forward_pre_hook(lambda _, args: latent_sides.append(args[0].shape[-2:]))

    [out] = generate_batch(
        pipe, [source], [mask], ["a photo of a bird"], [7], GenerateConfig(steps=2)
    )

    assert latent_sides and all(tuple(s) == (64, 64) for s in latent_sides)  # 512 px
    assert out.shape == source.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], source[~mask])
    assert not np.array_equal(out[mask], source[mask])


def test_waterbirds_folder_reads_as_the_real_download(in_world: dict):
    from ddb.data.waterbirds import Groups, check_images, read_metadata

    root = Path(in_world[DATA_ROOT_KEY])
    assert root.name == "waterbird_complete95_forest2water2"
    with open(root / "metadata.csv") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == ["img_id", "img_filename", "y", "split", "place",
                                     "place_filename"]  # fmt: skip
        rows = list(reader)
    # the defaults promised in paper_world.DEFAULT_PER_GROUP, written out by hand
    expected = {
        (0, 0): 22, (0, 1): 2, (0, 2): 2, (0, 3): 22,
        (1, 0): 4, (1, 1): 4, (1, 2): 4, (1, 3): 4,
        (2, 0): 4, (2, 1): 4, (2, 2): 4, (2, 3): 4,
    }  # fmt: skip
    raw = Counter((int(r["split"]), 2 * int(r["y"]) + int(r["place"])) for r in rows)
    assert raw == expected

    table = read_metadata(root, Groups())
    assert Counter(zip(table.split, table.group)) == expected
    check_images(root, table)
    assert list(table.img_id) == list(range(1, len(table) + 1))
    for row in rows:
        assert re.fullmatch(r"\d{3}\.[A-Za-z_]+/[A-Za-z_]+_\d{4}_\d+\.jpg", row["img_filename"])
        assert re.fullmatch(r"/[a-z]/[a-z_]+(/[a-z]+)?/\d{8}\.jpg", row["place_filename"])
        water_place = row["place_filename"].startswith(("/o/ocean/", "/l/lake/"))
        assert water_place == (row["place"] == "1")
        water_bird = any(k in row["img_filename"] for k in ("Albatross", "Gull", "Loon"))
        assert water_bird == (row["y"] == "1")
    sizes = {Image.open(root / r["img_filename"]).size for r in rows}
    assert len(sizes) >= 3 and all(max(s) == 500 for s in sizes)
    assert {Image.open(root / rows[0]["img_filename"]).format} == {"JPEG"}
