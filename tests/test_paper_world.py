"""The offline paper world (tests/paper_world.py): the paper's checkpoints load by hub id
(and pinned revision) from the caches, from the real checkpoints' config files, and the
Waterbirds folder reads as the real one."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddb.config import ConfigError
from tests.conftest import default_section
from tests.paper_world import (
    CLIPSEG,
    DATA_ROOT_KEY,
    OLD_SD2_INPAINT,
    REFERENCE,
    SD2_BASE,
    SD2_BASE_PINNED,
    SD2_INPAINT,
    SD2_INPAINT_PINNED,
    TINY,
    TINY_CLIPSEG,
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

    pipe = load_inpaint_pipeline(SD2_INPAINT_PINNED)

    assert isinstance(pipe.scheduler, PNDMScheduler)
    scheduler = pipe.scheduler.config
    assert (scheduler.beta_start, scheduler.beta_end) == (0.00085, 0.012)
    assert scheduler.beta_schedule == "scaled_linear" and scheduler.num_train_timesteps == 1000
    assert scheduler.steps_offset == 1 and scheduler.skip_prk_steps
    # the file has no prediction_type (diffusers 0.8): the default, epsilon, is SD2-512's
    assert not scheduler.set_alpha_to_one and scheduler.prediction_type == "epsilon"
    assert pipe.vae.config.scaling_factor == 0.18215  # absent from the file: the default
    unet = pipe.unet.config
    assert unet.in_channels == 9 and unet.out_channels == 4
    assert unet.sample_size * pipe.vae_scale_factor == 512 and pipe.vae_scale_factor == 8
    assert unet.use_linear_projection
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.tokenizer("a photo")["input_ids"] == [49406, 320, 1125, 49407]
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.pad_token_id == 0  # SD2 pads "!"
    assert pipe.safety_checker is None
    repo = Path(in_world["HF_HUB_CACHE"]) / "models--sd2-community--stable-diffusion-2-inpainting"
    assert (repo / "snapshots" / SD2_INPAINT_PINNED.split("@")[1]).is_dir()


def test_inpainting_and_base_share_one_text_encoder(in_world: dict):
    from diffusers import PNDMScheduler

    from ddb.models.loaders import (
        load_inpaint_pipeline,
        load_text2image_pipeline,
        load_text_encoder_spec,
    )

    inpaint = load_inpaint_pipeline(SD2_INPAINT_PINNED)
    base = load_text2image_pipeline(SD2_BASE_PINNED)

    assert base.unet.config.in_channels == 4 and base.unet.config.sample_size == 64
    assert base.vae_scale_factor == 8 and isinstance(base.scheduler, PNDMScheduler)
    assert load_text_encoder_spec("models.inversion", SD2_BASE_PINNED) == load_text_encoder_spec(
        "models.diffusion", SD2_INPAINT_PINNED
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
    from transformers import Sam2Model

    # the real checkpoint is a sam2_video one (its Hub tag); Sam2Model loads its image part
    assert isinstance(langsam.sam, Sam2Model) and langsam.sam.config.model_type == "sam2_video"
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
    from ddb.data.dataset import load_image
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
    pipe = load_inpaint_pipeline(SD2_INPAINT_PINNED)
    latent_sides = []
    pipe.unet.register_forward_pre_hook(lambda _, args: latent_sides.append(args[0].shape[-2:]))

    [out] = generate_batch(
        pipe, [source], [mask], ["a photo of a bird"], [7], default_section("generate", steps=2)
    )

    assert latent_sides and all(tuple(s) == (64, 64) for s in latent_sides)  # 512 px
    assert out.shape == source.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], source[~mask])
    assert not np.array_equal(out[mask], source[mask])


def test_waterbirds_folder_reads_as_the_real_download(in_world: dict):
    from ddb.data.dataset import WATERBIRDS_GROUPS, check_images, read_metadata

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

    table = read_metadata(root, WATERBIRDS_GROUPS)
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


def without(config: dict, changes: dict) -> dict:
    """`config` minus the keys that `changes` (a shrink table) sets, nested key by key."""
    out = {}
    for key, value in config.items():
        if isinstance(changes.get(key), dict) and isinstance(value, dict):
            out[key] = without(value, changes[key])
        elif key not in changes:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("repo_id", "shrink"),
    [(SD2_INPAINT_PINNED, TINY), (SD2_BASE_PINNED, TINY),
     (CLIPSEG, {"config.json": TINY_CLIPSEG})],
)  # fmt: skip
def test_the_stand_ins_files_are_the_real_ones_but_for_sizes(
    in_world: dict, repo_id: str, shrink: dict
):
    from ddb.models.loaders import cached_snapshot, split_revision

    snapshot = cached_snapshot(*split_revision("models", repo_id))
    reference = REFERENCE / split_revision("models", repo_id)[0].replace("/", "--")
    files = [p for p in sorted(reference.rglob("*")) if p.is_file() and p.name != "README.md"]
    assert len(files) >= 4
    for real in files:
        relative = real.relative_to(reference).as_posix()
        ours = snapshot / relative
        if relative not in shrink:
            assert ours.read_bytes() == real.read_bytes(), relative
            continue
        real_keys, our_keys = json.loads(real.read_text()), json.loads(ours.read_text())
        assert list(our_keys) == list(real_keys), relative  # no key added, order kept
        assert without(our_keys, shrink[relative]) == without(real_keys, shrink[relative])
    # the quirks a loader meets in the real files, present in the stand-ins
    if repo_id != CLIPSEG:
        assert "prediction_type" not in json.loads(
            (snapshot / "scheduler/scheduler_config.json").read_text()
        )
        assert "scaling_factor" not in json.loads((snapshot / "vae/config.json").read_text())
        index = json.loads((snapshot / "model_index.json").read_text())
        assert index["safety_checker"] == [None, None]
        assert index["feature_extractor"] == ["transformers", "CLIPFeatureExtractor"]
        weights = {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                   "vae/diffusion_pytorch_model.safetensors"}  # fmt: skip
        assert weights <= {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")}


def test_sd2_pads_prompts_with_its_special_tokens_maps_pad(in_world: dict):
    """tokenizer_config.json says "<|endoftext|>", special_tokens_map.json "!": "!" (id 0)
    is what SD2's tokenizer pads with, and what our prompt encoding must use."""
    from ddb.models.diffusion import tokenize
    from ddb.models.loaders import load_inpaint_pipeline

    pipe = load_inpaint_pipeline(SD2_INPAINT_PINNED)

    ids = tokenize(pipe.tokenizer, ["a bird"])[0]
    assert ids.tolist()[:4] == [49406, 320, 3329, 49407] and len(ids) == 77
    assert (ids[4:] == 0).all()  # "!", not <|endoftext|> (49407)


def test_clipseg_training_inputs_use_the_checkpoints_normalisation(in_world: dict):
    from ddb.models.loaders import load_segmenter
    from ddb.models.segmenter import TensorInputs, model_inputs

    processor, model = load_segmenter(CLIPSEG)
    assert list(processor.image_processor.image_mean) == [0.485, 0.456, 0.406]  # ImageNet's
    assert model.config.vision_config.image_size == 224  # under a 352 px processor
    images = np.random.default_rng(1).integers(0, 256, (2, 352, 352, 3), dtype=np.uint8)

    prompts = ["bird", "a bird"]
    expected = model_inputs(processor, images, prompts, torch.device("cpu"))
    ours = TensorInputs(processor, torch.device("cpu"))(torch.from_numpy(images), prompts)

    assert torch.allclose(ours["pixel_values"], expected["pixel_values"], atol=1e-5)
    assert torch.equal(ours["input_ids"], expected["input_ids"])


def test_a_branch_name_resolves_through_refs(in_world: dict):
    from ddb.models.loaders import load_text_encoder_spec

    spec = load_text_encoder_spec("models.inversion", f"{SD2_BASE}@main")
    assert spec == load_text_encoder_spec("models.inversion", SD2_BASE_PINNED)
    assert spec.width == TINY["text_encoder/config.json"]["hidden_size"]


def test_a_revision_not_in_the_cache_is_a_clear_error(in_world: dict):
    from ddb.models.loaders import load_inpaint_pipeline

    other = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(ConfigError) as err:
        load_inpaint_pipeline(f"{SD2_INPAINT}@{other}")
    message = str(err.value)
    assert "'models.diffusion'" in message and f"not at revision {other}" in message
    assert f"hf download {SD2_INPAINT} --revision {other}" in message


def test_the_taken_down_id_loads_from_an_old_cache_and_names_its_mirror_otherwise(
    in_world: dict, tmp_path: Path
):
    import shutil

    from ddb.models.loaders import load_inpaint_pipeline

    with pytest.raises(ConfigError) as err:
        load_inpaint_pipeline(OLD_SD2_INPAINT)
    message = str(err.value)
    assert "taken down" in message and "November 2025" in message
    assert f"models.diffusion: {SD2_INPAINT_PINNED}" in message
    assert f"hf download {SD2_INPAINT} --revision {SD2_INPAINT_PINNED.split('@')[1]}" in message

    # a researcher who downloaded stabilityai's repository before the takedown (its final
    # main, 81a84f4) keeps loading it by that id
    hub = Path(in_world["HF_HUB_CACHE"])
    old = hub / ("models--" + OLD_SD2_INPAINT.replace("/", "--"))
    final_main = "81a84f49b15956b60b4272a405ad3daef3da4590"
    mirror = hub / "models--sd2-community--stable-diffusion-2-inpainting" / "snapshots"
    shutil.copytree(mirror / SD2_INPAINT_PINNED.split("@")[1], old / "snapshots" / final_main)
    (old / "refs").mkdir()
    (old / "refs" / "main").write_text(final_main)
    try:
        pipe = load_inpaint_pipeline(OLD_SD2_INPAINT)
        assert pipe.unet.config.in_channels == 9
    finally:
        shutil.rmtree(old)


@pytest.mark.parametrize(("repo", "low", "high"), [("inpainting", 865e6, 867e6),
                                                   ("base", 865e6, 867e6)])  # fmt: skip
def test_full_size_configs_build_sd2s_unet(tmp_path: Path, repo: str, low: float, high: float):
    """size="full" keeps the real sizes: the SD2 UNet has its 865M parameters (built on the
    meta device: no memory, no weights)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from tests.paper_world import copy_reference

    copy_reference(REFERENCE / f"sd2-community--stable-diffusion-2-{repo}", tmp_path, "full")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tmp_path / "unet"))
    assert low < sum(p.numel() for p in unet.parameters()) < high
    assert list(unet.config.block_out_channels) == [320, 640, 1280, 1280]
