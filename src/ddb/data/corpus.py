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

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def build_corpus(sources: CorpusSources, n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """n composites as arrays (deterministic in seed): images, three masks, captions."""
    names = sorted(sources.objects)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = {key: np.empty((n, size, size), bool) for key in ("object", "box", "random")}
    captions, objects, categories = [], [], []
    for i in range(n):
        image, obj, box, region, name, noun, caption = make_sample(
            sources, names, np.random.default_rng([seed, i]), size
        )
        images[i], masks["object"][i], masks["box"][i], masks["random"][i] = image, obj, box, region
        captions.append(caption)
        objects.append(name)
        categories.append(noun)
    return {
        "images": images,
        "object_masks": masks["object"],
        "box_masks": masks["box"],
        "random_masks": masks["random"],
        "captions": np.array(captions),
        "objects": np.array(objects),
        "categories": np.array(categories),
    }
