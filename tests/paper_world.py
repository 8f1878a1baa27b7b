"""The offline world of a researcher who has the paper's checkpoints and the real Waterbirds
download, at toy size: the same hub ids, cache layouts, file formats, architectures'
traits and folder layout, with tiny random weights and a few dozen drawn images.

- `save_sd2_stand_ins`: `stabilityai/stable-diffusion-2-inpainting` (9-channel UNet) and
  `stabilityai/stable-diffusion-2-base` (4-channel UNet) in the Hugging Face hub cache,
  sharing one text encoder, tokenizer and VAE (SD2's two checkpoints share OpenCLIP ViT-H
  and the autoencoder), with the scheduler SD2 ships (PNDM, as its scheduler_config.json).
- `save_clipseg_stand_in`: `CIDAS/clipseg-rd64-refined` (352 px, patch 16, reduce_dim 64).
- `save_resnet50_stand_in`: torchvision's ResNet-50 file name in the torch hub cache.
- LangSAM's GroundingDINO and SAM 2 (`models.detector`, `models.sam`; the waterbirds
  profile's `segment.source: langsam`), by tests/tiny_langsam.py's `save_langsam_stand_ins`.
- `write_waterbirds_folder`: `waterbird_complete95_forest2water2/` with CUB species folders,
  JPEGs of varied sizes and the real `metadata.csv` columns.
- `paper_world`: all of it under one folder, and the environment a subprocess needs;
  `use_world` points this process at it.

Nothing here is trained: the models compute nonsense, but every code path a real checkpoint
takes (hub-id resolution offline, 512 px images and 64x64 latents, PNDM, shared text
encoder, the ImageNet weights file) runs on them.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tests.hub_cache import hub_snapshot, torch_hub_checkpoint

SD2_INPAINT = "stabilityai/stable-diffusion-2-inpainting"
SD2_BASE = "stabilityai/stable-diffusion-2-base"
CLIPSEG = "CIDAS/clipseg-rd64-refined"
WATERBIRDS_DIR = "waterbird_complete95_forest2water2"
DATA_ROOT_KEY = "WATERBIRDS_ROOT"  # the data root's key in paper_world's dict (not a real env var)

# stabilityai/stable-diffusion-2-inpainting and -2-base: scheduler/scheduler_config.json
# (which also lists "clip_sample": false, a key PNDMScheduler does not take and ignores)
SD2_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",  # the 512 px SD2 models (the 768 px one is v-prediction)
}
SD2_IMAGE_SIZE = 512
TEXT_WIDTH = 32  # the toy text encoder's width (SD2's OpenCLIP ViT-H: 1024)
UNET_CHANNELS = (32, 32, 64, 64)  # SD2: (320, 640, 1280, 1280)
VAE_CHANNELS = (8, 16, 16, 16)  # SD2: (128, 256, 512, 512); 4 blocks: vae_scale_factor 8

# Waterbirds: CUB species folders and their file-name prefixes (CUB capitalises every word of
# the file names, not of the folders), and Places categories as place_filename writes them.
WATER_SPECIES = (
    ("001.Black_footed_Albatross", "Black_Footed_Albatross"),
    ("059.California_Gull", "California_Gull"),
    ("086.Pacific_Loon", "Pacific_Loon"),
)
LAND_SPECIES = (
    ("010.Red_winged_Blackbird", "Red_Winged_Blackbird"),
    ("094.White_breasted_Nuthatch", "White_Breasted_Nuthatch"),
    ("118.House_Sparrow", "House_Sparrow"),
)
PLACES = {0: ("/b/bamboo_forest", "/f/forest/broadleaf"), 1: ("/o/ocean", "/l/lake/natural")}
SIZES = ((500, 375), (333, 500), (500, 332), (500, 333), (375, 500), (500, 400))  # (w, h)
# group (2 y + place) -> (train, val, test): 24 train images per class, 92% of each class on
# its usual place (the real train split: 95%), 4 of every group in val and test
DEFAULT_PER_GROUP = {0: (22, 4, 4), 1: (2, 4, 4), 2: (2, 4, 4), 3: (22, 4, 4)}
METADATA_COLUMNS = ["img_id", "img_filename", "y", "split", "place", "place_filename"]


def sd2_text_encoder_and_tokenizer():
    """One tiny CLIP text encoder with SD2's config traits, and the CLIP tokenizer as SD2
    ships it (real vocabulary; pads with "!", id 0, as SD2's tokenizer does)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from ddb.models.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer()
    tokenizer.pad_token = "!"
    torch.manual_seed(0)
    config = CLIPTextConfig(  # SD2's text_encoder/config.json, at toy width and depth
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu",  # OpenCLIP; OpenAI CLIP (SD1) uses quick_gelu
        layer_norm_eps=1e-5,
        projection_dim=TEXT_WIDTH,
        # the ids SD2's converted config carries (legacy: pooling at the highest id)
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config), tokenizer


def sd2_vae():
    """SD2's autoencoder traits: 4 blocks (vae_scale_factor 8), 4 latent channels, 0.18215."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SD2_IMAGE_SIZE,
        scaling_factor=0.18215,
    )


def sd2_unet(in_channels: int, seed: int):
    """SD2's UNet traits: 64x64 latents, cross-attention in the 3 upper levels, linear
    projections, cross-attention width = the text encoder's; `in_channels` 9 (inpainting:
    latents, mask, masked-image latents) or 4 (base)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=SD2_IMAGE_SIZE // 8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=(1, 2, 4, 4),  # diffusers' name for SD2's heads: (5, 10, 20, 20)
        use_linear_projection=True,
        norm_num_groups=32,
    )


def save_sd2_stand_ins(hf_home: Path) -> dict[str, Path]:
    """Write the SD2 inpainting and base stand-ins into the hub cache; {hub id: snapshot}."""
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    text_encoder, tokenizer = sd2_text_encoder_and_tokenizer()
    vae = sd2_vae()
    shared = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    inpaint = StableDiffusionInpaintPipeline(
        unet=sd2_unet(9, seed=2), scheduler=PNDMScheduler(**SD2_SCHEDULER), **shared
    )
    base = StableDiffusionPipeline(
        unet=sd2_unet(4, seed=3), scheduler=PNDMScheduler(**SD2_SCHEDULER), **shared
    )
    return {
        SD2_INPAINT: hub_snapshot(hf_home, SD2_INPAINT, inpaint.save_pretrained),
        SD2_BASE: hub_snapshot(hf_home, SD2_BASE, base.save_pretrained),
    }


def save_clipseg_stand_in(hf_home: Path) -> Path:
    """CLIPSeg with rd64-refined's input traits (352 px, patch 16, reduce_dim 64) at toy
    width, built by the project's own builder, saved as `CIDAS/clipseg-rd64-refined`."""
    import torch

    from ddb.models.segmenter import build_segmenter
    from ddb.models.tokenizer import clip_tokenizer

    torch.manual_seed(4)
    processor, model = build_segmenter(
        clip_tokenizer(), image_size=352, width=32, layers=2, patch_size=16, reduce_dim=64
    )

    def save(folder: Path) -> None:
        processor.save_pretrained(folder)
        model.save_pretrained(folder)

    return hub_snapshot(hf_home, CLIPSEG, save)


def save_resnet50_stand_in(torch_home: Path, seed: int = 0) -> Path:
    """A seeded random ResNet-50 state dict (ImageNet's 1000-way head, real shapes) under
    the file name of the weights URL that `build_classifier("resnet50", ...)` looks for."""
    import torch

    from ddb.models.classifier import ARCHITECTURES

    constructor, weights = ARCHITECTURES["resnet50"]
    torch.manual_seed(seed)
    model = constructor(weights=None)
    return torch_hub_checkpoint(torch_home, weights.url, model.state_dict())


def write_waterbirds_folder(
    root: Path, per_group: dict[int, tuple[int, int, int]] | None = None, seed: int = 0
) -> Path:
    """A folder laid out as the real `waterbird_complete95_forest2water2` download.

    per_group: group (2 y + place) -> (n_train, n_val, n_test); default DEFAULT_PER_GROUP.
    Images are JPEGs of the sizes CUB's vary between, in CUB species folders (water species
    for y = 1), listed in `metadata.csv` with exactly the real columns, rows in img_id
    order (species by species, as CUB numbers them). Each is drawn so that both signals are
    learnable: the background is the place (green with trunks for land, blue with waves
    for water), the bird an ellipse whose colour is the class (brown for landbirds, white
    for waterbirds).
    """
    root = Path(root)
    per_group = DEFAULT_PER_GROUP if per_group is None else per_group
    rng = np.random.default_rng(seed)
    samples = [
        (group // 2, group % 2, split)
        for group, counts in sorted(per_group.items())
        for split, n in enumerate(counts)
        for _ in range(n)
    ]
    samples = [samples[i] for i in rng.permutation(len(samples))]
    species_of = {0: LAND_SPECIES, 1: WATER_SPECIES}
    seen = {0: 0, 1: 0}
    assigned = []
    for y, place, split in samples:
        species = species_of[y][seen[y] % len(species_of[y])]
        seen[y] += 1
        assigned.append((species, y, place, split))
    assigned.sort(key=lambda row: row[0][0])  # CUB order: by species folder (stable sort)

    rows, per_species = [], {}
    photo_ids = rng.choice(np.arange(100, 800_000), size=len(assigned), replace=False)
    for img_id, ((folder, prefix), y, place, split) in enumerate(assigned, start=1):
        per_species[folder] = per_species.get(folder, 0) + 1
        name = f"{folder}/{prefix}_{per_species[folder]:04d}_{photo_ids[img_id - 1]}.jpg"
        size = SIZES[int(rng.integers(len(SIZES)))]
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_bird(size, y, place, rng).save(path, quality=int(rng.integers(75, 96)))
        category = PLACES[place][int(rng.integers(len(PLACES[place])))]
        rows.append(
            {
                "img_id": img_id,
                "img_filename": name,
                "y": y,
                "split": split,
                "place": place,
                "place_filename": f"{category}/{int(rng.integers(1, 5000)):08d}.jpg",
            }
        )
    with open(root / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def draw_bird(size: tuple[int, int], y: int, place: int, rng) -> Image.Image:
    """A (w, h) RGB image: a place background and a class-coloured bird, with noise."""
    width, height = size
    pixels = np.empty((height, width, 3), np.float32)
    if place == 0:  # land: green, darker vertical trunks
        pixels[...] = (60, 130, 50)
        for x in rng.integers(0, width, 5):
            pixels[:, x : x + int(rng.integers(8, 20))] = (90, 70, 40)
    else:  # water: blue, lighter horizontal waves
        pixels[...] = (40, 80, 170)
        for row in rng.integers(0, height, 8):
            pixels[row : row + 3] = (110, 150, 220)
    pixels += rng.normal(0, 12, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    side = min(size)
    bw, bh = (int(side * f) for f in rng.uniform(0.3, 0.5, 2))
    x0 = int(rng.integers(0, width - bw))
    y0 = int(rng.integers(0, height - bh))
    colour = (150, 90, 40) if y == 0 else (235, 235, 225)
    colour = tuple(int(c + d) for c, d in zip(colour, rng.integers(-15, 16, 3)))
    ImageDraw.Draw(image).ellipse((x0, y0, x0 + bw, y0 + bh), fill=colour)
    return image


def paper_world(
    root: Path, per_group: dict[int, tuple[int, int, int]] | None = None, langsam: bool = True
) -> dict[str, str]:
    """Build the whole world under `root` (once: a second call on the same folder reuses it)
    and return what a subprocess needs: {HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE,
    TRANSFORMERS_OFFLINE, TORCH_HOME} and the data folder under DATA_ROOT_KEY.
    `langsam=False` leaves out GroundingDINO and SAM 2 (then only segment.source: clipseg
    runs in it).

    `env = {**os.environ, **paper_world(tmp)}` is a ready subprocess environment (the extra
    DATA_ROOT_KEY entry is harmless there); `use_world(world, monkeypatch)` for this process.
    """
    root = Path(root)
    hf_home, torch_home = root / "hf", root / "torch"
    data = root / "data" / WATERBIRDS_DIR
    world = {
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TORCH_HOME": str(torch_home),
        DATA_ROOT_KEY: str(data),
    }
    stamp = root / "paper_world.json"
    if stamp.is_file():
        return json.loads(stamp.read_text())["env"]
    start = time.perf_counter()
    save_sd2_stand_ins(hf_home)
    save_clipseg_stand_in(hf_home)
    if langsam:
        from tests.tiny_langsam import save_langsam_stand_ins

        save_langsam_stand_ins(hf_home)
    save_resnet50_stand_in(torch_home)
    write_waterbirds_folder(data, per_group)
    seconds = round(time.perf_counter() - start, 2)
    stamp.write_text(json.dumps({"env": world, "build_seconds": seconds}, indent=1))
    return world


def use_world(world: dict, monkeypatch) -> None:
    """Point this process at the world: the environment variables, and huggingface_hub's
    constants, which it reads once at import."""
    from huggingface_hub import constants

    for key, value in world.items():
        if key != DATA_ROOT_KEY:
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HOME", world["HF_HOME"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", world["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
