"""disc_concepts: the embedded default's concept bank for DISC, in DISC's folder layout
(`<concept>/positives/*.png` and `metadata.json`, as its concept_bank/ scripts write it).

DISC's Waterbirds run uses its `color-texture-nature` categories of Stable Diffusion
images ("ocean", "forest", "blueness"...). Offline, the bank is built from photographs:
"nature", one concept per scene photograph of the benchmark's sources (random crops, named
by the photograph), and "color", DISC's five colour concepts as noisy plain colours. No
bird is a concept: mixing a class's own object into the other class would teach the
opposite of the cure.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ddb import paths
from ddb.config import Config
from ddb.data import embedded
from ddb.utils import atomic_path

log = logging.getLogger(__name__)

# DISC's synthetic_concepts/metadata.json "color" category, as RGB
COLOURS = {
    "blackness": (20, 20, 20),
    "blueness": (40, 70, 200),
    "greenness": (50, 160, 60),
    "redness": (200, 40, 40),
    "whiteness": (235, 235, 235),
}


def concept_name(scene_key: str) -> str:
    """'tuxpaint-data:ocean_splash.jpg' -> 'ocean_splash'; 'mate-backgrounds:Aqua.jpg' -> 'aqua'."""
    return Path(scene_key.split(":", 1)[1]).stem.lower()


def colour_image(rgb: tuple[int, int, int], rng: np.random.Generator, size: int) -> Image.Image:
    """A plain colour with per-pixel noise and a random brightness, so the SVM sees spread."""
    pixels = np.array(rgb, np.float32) * rng.uniform(0.8, 1.2)
    pixels = pixels + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def build_bank(scenes: dict[str, Image.Image], images: int, size: int, seed: int, out: Path):
    """Write every concept's images and metadata.json under `out`."""
    metadata = {"nature": [], "color": []}
    concepts = [(concept_name(k), "nature", scenes[k]) for k in sorted(scenes)]
    concepts += [(name, "color", rgb) for name, rgb in COLOURS.items()]
    for index, (name, category, source) in enumerate(concepts):
        folder = out / name / "positives"
        folder.mkdir(parents=True)
        rng = np.random.default_rng([seed, index])
        for i in range(images):
            if category == "nature":
                image = embedded.crop_scene(source, rng, size)
            else:
                image = colour_image(source, rng, size)
            image.save(folder / f"{i:04d}.png")
        metadata[category].append(name)
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")


def run(config: Config) -> None:
    cfg = config.disc_concepts
    if not paths.SOURCES.is_file():
        raise embedded.SourcesError(
            f"{paths.SOURCES}: not found; run `ddb sources` (or `make setup`)"
        )
    sources = json.loads(paths.SOURCES.read_text())
    embedded.verify_sources(sources)
    scenes = embedded.Sources.load(sources).scenes
    with atomic_path(paths.DISC_CONCEPTS) as tmp:
        build_bank(scenes, cfg.images, cfg.image_size, cfg.seed, tmp)
    log.info("disc_concepts: %d concepts in %s", len(scenes) + len(COLOURS), paths.DISC_CONCEPTS)
