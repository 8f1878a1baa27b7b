"""The foundation models' training corpus: objects composited on *neutral* scenes.

Objects are the photographic stamps (with alpha) of `tuxpaint-stamps-default`: animals
(the 35 bird species among them, named by species), fruit, vegetables, flowers, tools...
Scenes are the photographs the embedded benchmark does *not* use (rock, bark, mud, sky,
wood, flowers, machinery) plus plain colour and gradient backgrounds. Every object goes
on every scene with equal probability, so the generator learns no place-class shortcut;
captions name the object and the scene ("a photo of a duck on rocks"), never the
benchmark's class words (landbird, waterbird) or its land/water scenes.

Each sample carries three masks a text-conditioned inpainting model trains on: the
object's outline (what a segmenter gives), its bounding box, and a random region.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddb.data import embedded

STAMPS = Path("/usr/share/tuxpaint/stamps")
OBJECT_DIRS = ("animals", "food", "plants", "household", "sports", "hobbies", "clothes")
# Neutral scene photographs -> the word a caption uses for them.
NEUTRAL_SCENES = {
    embedded.TEMPLATES / "burnt_bark.jpg": "bark",
    embedded.TEMPLATES / "mossy_bark.jpg": "bark",
    embedded.TEMPLATES / "cliff.jpg": "a cliff",
    embedded.TEMPLATES / "mudstone.jpg": "mud",
    embedded.TEMPLATES / "rocks.jpg": "pebbles",
    embedded.TEMPLATES / "sun_behind_clouds.jpg": "the sky",
    embedded.TEMPLATES / "lighthouse.jpg": "a lighthouse",
    embedded.TEMPLATES / "wool_mill_machine.jpg": "a machine",
    embedded.TEMPLATES / "spiders_web.jpg": "a dark background",
    embedded.NATURE / "Wood.jpg": "wood",
    embedded.NATURE / "FreshFlower.jpg": "flowers",
    embedded.NATURE / "YellowFlower.jpg": "flowers",
    embedded.NATURE / "TwoWings.jpg": "flowers",
}
TEMPLATES = (
    "a photo of a {obj} on {scene}",
    "a photo of a {obj}",
    "a {obj} on {scene}",
    "a photo of a {obj} {category}",
    "a photo of a {category} on {scene}",
)
# Category words (what a segmenter prompt or a DDB prompt's class noun names), by folder.
CATEGORIES = {
    "birds": "bird",
    "fish": "fish",
    "insects": "insect",
    "fruit": "fruit",
    "vegetables": "vegetable",
    "flowers": "flower",
    "trees": "tree",
}


@dataclass(frozen=True)
class CorpusSources:
    objects: dict[str, tuple[Image.Image, str]]  # caption name -> (trimmed RGBA, category)
    scenes: list[tuple[Image.Image, str]]  # (RGB photograph, caption word)


def object_name(path: Path) -> str:
    """'heron_greatblue_flying.png' -> 'heron greatblue flying'; digits dropped."""
    name = re.sub(r"[_\-]+", " ", path.stem).lower()
    return re.sub(r"\s*\d+$", "", name).strip()


def category(path: Path) -> str:
    """The common noun of a stamp: 'bird' for animals/birds, 'animal' for other animals,
    'fruit', 'vegetable', 'flower', 'tree' by folder, else 'food', 'plant' or 'object'."""
    parts = path.relative_to(STAMPS).parts
    for folder in reversed(parts[:-1]):
        if folder in CATEGORIES:
            return CATEGORIES[folder]
    return {"animals": "animal", "food": "food", "plants": "plant"}.get(parts[0], "object")


def object_paths() -> list[Path]:
    paths = []
    for folder in OBJECT_DIRS:
        paths += [p for p in sorted((STAMPS / folder).rglob("*.png")) if "cartoon" not in p.parts]
    return paths


def load_sources(max_side: int = 160) -> CorpusSources:
    """Decode every object stamp (trimmed to its alpha) and neutral scene once."""
    missing = [p for p in NEUTRAL_SCENES if not p.is_file()]
    paths = object_paths()
    if missing or not paths:
        raise embedded.SourcesError(
            f"foundation corpus: {len(missing)} scene(s) missing (e.g. {missing[:1]}) and "
            f"{len(paths)} object stamps found; install the Debian packages "
            f"{' '.join(embedded.PACKAGES)} (`make setup`)"
        )
    objects = {}
    for path in paths:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
        box = rgba.getchannel("A").point(lambda a: 255 * (a > 127)).getbbox()
        if box is None:
            continue
        rgba = rgba.crop(box)
        # keep real photographs with a real silhouette, not text or flat clip art
        alpha = np.asarray(rgba.getchannel("A")) > 127
        if alpha.mean() < 0.15 or min(rgba.size) < 24:
            continue
        rgba.thumbnail((max_side, max_side), Image.LANCZOS)
        objects.setdefault(object_name(path), (rgba, category(path)))
    scenes = []
    for path, word in NEUTRAL_SCENES.items():
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        scale = 384 / min(rgb.size)
        if scale < 1:
            rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.LANCZOS)
        scenes.append((rgb, word))
    return CorpusSources(objects=objects, scenes=scenes)


def plain_background(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """A flat colour or a two-colour gradient."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None] if rng.random() < 0.5 else np.zeros((1, 1, 1))
    pixels = np.broadcast_to(a * (1 - t) + b * t, (size, size, 3))
    if rng.random() < 0.5:
        pixels = pixels.transpose(1, 0, 2)
    return Image.fromarray(pixels.astype(np.uint8)), "a plain background"


def random_region(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random rectangle or ellipse covering 10-60% of the image."""
    mask = np.zeros((size, size), bool)
    w, h = (rng.uniform(0.3, 0.8, 2) * size).astype(int)
    x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
    if rng.random() < 0.5:
        mask[y : y + h, x : x + w] = True
    else:
        yy, xx = np.mgrid[:size, :size]
        mask = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 <= 1
    return mask


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def bounding_box(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[
        max(0, ys.min() - margin) : ys.max() + margin + 1,
        max(0, xs.min() - margin) : xs.max() + margin + 1,
    ] = True
    return box


def make_sample(sources: CorpusSources, names: list[str], rng: np.random.Generator, size: int):
    """One composite: (image uint8 HxWx3, object mask, box mask, random mask, object name,
    its category, caption)."""
    if rng.random() < 0.25:
        background, scene_word = plain_background(rng, size)
    else:
        scene, scene_word = sources.scenes[int(rng.integers(len(sources.scenes)))]
        background = embedded.crop_scene(scene, rng, size)
    name = names[int(rng.integers(len(names)))]
    sprite, noun = sources.objects[name]
    image, mask = embedded.paste_bird(background, sprite, rng, (0.4, 0.95))
    object_mask = np.asarray(mask) > 0
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    caption = template.format(obj=name, category=noun, scene=scene_word)
    return (
        np.asarray(image),
        object_mask,
        bounding_box(object_mask),
        random_region(rng, size),
        name,
        noun,
        caption,
    )


_FORKED: tuple = ()  # (sources, names, size, seed), inherited by forked workers


def _sample_range(indices: range) -> list:
    sources, names, size, seed = _FORKED
    return [make_sample(sources, names, np.random.default_rng([seed, i]), size) for i in indices]


def build_corpus(
    sources: CorpusSources, n: int, size: int, seed: int, workers: int | None = None
) -> dict[str, np.ndarray]:
    """n composites as arrays (deterministic in seed, whatever the number of worker
    processes: each sample has its own RNG): images, three masks, captions."""
    global _FORKED
    names = sorted(sources.objects)
    workers = min(workers or os.cpu_count() or 1, max(1, n // 1000))
    chunks = [range(start, min(n, start + 500)) for start in range(0, n, 500)]
    _FORKED = (sources, names, size, seed)
    try:
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                samples = [s for chunk in pool.map(_sample_range, chunks) for s in chunk]
        else:
            samples = [s for chunk in chunks for s in _sample_range(chunk)]
    finally:
        _FORKED = ()
    images, objects, boxes, regions, names_, nouns, captions = zip(*samples, strict=True)
    return {
        "images": np.stack(images),
        "object_masks": np.stack(objects),
        "box_masks": np.stack(boxes),
        "random_masks": np.stack(regions),
        "captions": np.array(captions),
        "objects": np.array(names_),
        "categories": np.array(nouns),
    }


CHANNEL_ORDERS = list(itertools.permutations(range(3)))


def recolour_backgrounds(
    images: torch.Tensor, object_masks: torch.Tensor, generator: torch.Generator, p: float = 0.5
) -> torch.Tensor:
    """Augmentation on a batch (uint8 B×H×W×3, bool B×H×W): with probability p, an image's
    background (not its object) gets its colour channels permuted and its brightness scaled
    by 0.7-1.3. Six channel orders turn the few neutral scenes (brown bark, grey rock) into
    green and blue textures too, so the models see varied backgrounds without the corpus
    ever holding the benchmark's land or water photographs."""
    n, device = len(images), images.device
    orders = torch.tensor(CHANNEL_ORDERS, device=device)
    order = orders[torch.randint(0, len(orders), (n,), generator=generator, device=device)]
    permuted = torch.gather(images, 3, order[:, None, None, :].expand_as(images))
    gain = 0.7 + 0.6 * torch.rand(n, generator=generator, device=device)
    recoloured = (permuted.float() * gain[:, None, None, None]).clamp(0, 255).to(images.dtype)
    apply = torch.rand(n, generator=generator, device=device) < p
    background = apply[:, None, None, None] & ~object_masks[..., None].bool()
    return torch.where(background, recoloured, images)


def mirror_half(
    generator: torch.Generator, *tensors: tuple[torch.Tensor, int]
) -> list[torch.Tensor]:
    """Mirror a random half of a batch: each (tensor, width dim) pair is flipped along its
    width in the same rows, so images and their masks or latents stay aligned."""
    first = tensors[0][0]
    flip = torch.rand(len(first), generator=generator, device=first.device) < 0.5
    return [torch.where(flip.view(-1, *[1] * (t.dim() - 1)), t.flip(dim), t) for t, dim in tensors]
