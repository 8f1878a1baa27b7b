"""The embedded Waterbirds-like benchmark, composited from photographs Debian ships.

Birds are the photographic stamps of `tuxpaint-stamps-default` (RGBA, so each carries its
own ground-truth mask), labelled by species as in Waterbirds (seabirds, waterfowl and
waders are waterbirds). Land scenes are forest and meadow photographs, water scenes sea and
water photographs, from `tuxpaint-data` and `mate-backgrounds`. The remaining photographs
of those packages (rock, bark, sky, flowers, sand...) are deliberately left out: they are
the neutral scenes for the foundation models' corpus, which must not copy the benchmark.

Every image is drawn from its own RNG, seeded by (prepare.seed, image index), so the
benchmark is a pure function of params and the source files.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ddb.utils import sha256_file

PACKAGES = ("tuxpaint-stamps-default", "tuxpaint-data", "mate-backgrounds")
BIRD_DIR = Path("/usr/share/tuxpaint/stamps/animals/birds")
TEMPLATES = Path("/usr/share/tuxpaint/templates")
NATURE = Path("/usr/share/backgrounds/mate/nature")
LICENCE = "GPL-2 (Tux Paint stamps, Tux Paint templates) and GPL-2+ (MATE backgrounds)"

LAND, WATER = 0, 1
LANDBIRD, WATERBIRD = 0, 1

# Species stamp -> class. Waterbirds' waterbirds are seabirds and waterfowl; waders
# (herons, cranes, flamingos) and penguins join them here.
BIRDS: dict[str, int] = {
    "drake": WATERBIRD,
    "duck": WATERBIRD,
    "gander": WATERBIRD,
    "heron_greatblue": WATERBIRD,
    "heron_greatblue_flying": WATERBIRD,
    "little-penguin": WATERBIRD,
    "magellanic_penguin": WATERBIRD,
    "pelican": WATERBIRD,
    "penguin": WATERBIRD,
    "pink_flamingo": WATERBIRD,
    "seagull": WATERBIRD,
    "silver-gull": WATERBIRD,
    "crowned_crane": WATERBIRD,
    "adelaide-rosella": LANDBIRD,
    "albino_peahen": LANDBIRD,
    "blackbird": LANDBIRD,
    "chicken_profile": LANDBIRD,
    "crow": LANDBIRD,
    "cuckoo": LANDBIRD,
    "guineafowl": LANDBIRD,
    "helmeted_guineafowl": LANDBIRD,
    "hen": LANDBIRD,
    "lark": LANDBIRD,
    "magpie": LANDBIRD,
    "nandou": LANDBIRD,
    "ostrich": LANDBIRD,
    "owl": LANDBIRD,
    "peacock": LANDBIRD,
    "pigeon": LANDBIRD,
    "quetzal": LANDBIRD,
    "rainbow-lorikeet": LANDBIRD,
    "rooster": LANDBIRD,
    "tucan": LANDBIRD,
    "turkey": LANDBIRD,
    "vulture": LANDBIRD,
}

SCENES: dict[str, int] = {
    "tuxpaint-data:corn_maze.jpg": LAND,
    "tuxpaint-data:mossy_log.jpg": LAND,
    "tuxpaint-data:redwoods_above.jpg": LAND,
    "tuxpaint-data:sun_behind_leaves.jpg": LAND,
    "tuxpaint-data:trees_above.jpg": LAND,
    "tuxpaint-data:sheep.jpg": LAND,
    "mate-backgrounds:GreenMeadow.jpg": LAND,
    "mate-backgrounds:Blinds.jpg": LAND,
    "mate-backgrounds:Garden.jpg": LAND,
    "tuxpaint-data:ocean_splash.jpg": WATER,
    "tuxpaint-data:ocean_waves.jpg": WATER,
    "tuxpaint-data:jellyfish.jpg": WATER,
    "mate-backgrounds:Aqua.jpg": WATER,
}

_PACKAGE_DIRS = {
    "tuxpaint-stamps-default": BIRD_DIR,
    "tuxpaint-data": TEMPLATES,
    "mate-backgrounds": NATURE,
}


class SourcesError(RuntimeError):
    """The photographs are missing or differ from data/sources.json."""


def source_paths() -> dict[str, tuple[str, Path]]:
    """Every source file: key -> (package, path)."""
    paths = {
        f"bird:{name}": ("tuxpaint-stamps-default", BIRD_DIR / f"{name}.png") for name in BIRDS
    }
    for key in SCENES:
        package, filename = key.split(":")
        paths[f"scene:{key}"] = (package, _PACKAGE_DIRS[package] / filename)
    return paths


def missing_help(missing: list[str]) -> str:
    packages = sorted({package for package, _ in (source_paths()[k] for k in missing)})
    return (
        f"{len(missing)} source photograph(s) missing (e.g. {source_paths()[missing[0]][1]}). "
        f"Install the Debian package(s) {' '.join(packages)} (`make setup` does it as root), "
        "or point data.root in params.yaml at a Waterbirds-format folder."
    )


def describe_sources() -> dict:
    """The source list with sha256 and package versions (written to data/sources.json)."""
    paths = source_paths()
    missing = [key for key, (_, path) in paths.items() if not path.is_file()]
    if missing:
        raise SourcesError(missing_help(missing))
    return {
        "packages": {package: _package_version(package) for package in PACKAGES},
        "licence": LICENCE,
        "files": {
            key: {"package": package, "path": str(path), "sha256": sha256_file(path)}
            for key, (package, path) in sorted(paths.items())
        },
    }


def _package_version(package: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        )
    except FileNotFoundError:
        return "unknown (no dpkg)"
    return out.stdout.strip() if out.returncode == 0 else "not installed"


def verify_sources(sources: dict) -> None:
    """Check the files on disk are those data/sources.json lists, byte for byte."""
    missing = [k for k, f in sources["files"].items() if not Path(f["path"]).is_file()]
    if missing:
        raise SourcesError(missing_help(missing))
    for key, entry in sources["files"].items():
        if sha256_file(entry["path"]) != entry["sha256"]:
            raise SourcesError(
                f"{entry['path']} ({key}) differs from data/sources.json (a package update?). "
                "Run `ddb sources` (or `make setup`) to record the new files; prepare then re-runs."
            )


@dataclass(frozen=True)
class Sources:
    """Decoded source images: birds as trimmed RGBA, scenes as RGB."""

    birds: dict[str, Image.Image]
    scenes: dict[str, Image.Image]

    @classmethod
    def load(cls, sources: dict) -> Sources:
        birds, scenes = {}, {}
        for key, entry in sources["files"].items():
            kind, name = key.split(":", 1)
            with Image.open(entry["path"]) as image:
                if kind == "bird":
                    rgba = image.convert("RGBA")
                    rgba = rgba.crop(
                        rgba.getchannel("A").point(lambda a: 255 * (a > 127)).getbbox()
                    )
                    rgba.thumbnail((192, 192), Image.LANCZOS)
                    birds[name] = rgba
                else:
                    rgb = image.convert("RGB")
                    scale = 384 / min(rgb.size)  # keep crops sharp, decode once
                    if scale < 1:
                        rgb = rgb.resize(
                            (round(rgb.width * scale), round(rgb.height * scale)), Image.LANCZOS
                        )
                    scenes[name] = rgb
        return cls(birds=birds, scenes=scenes)


def crop_scene(scene: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """A random square crop (35-80% of the short side), resized, maybe flipped."""
    side = int(min(scene.size) * rng.uniform(0.35, 0.8))
    left = int(rng.integers(0, scene.width - side + 1))
    top = int(rng.integers(0, scene.height - side + 1))
    crop = scene.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return _jitter_brightness(crop, rng)


def paste_bird(
    background: Image.Image,
    bird: Image.Image,
    rng: np.random.Generator,
    scale: tuple[float, float],
) -> tuple[Image.Image, Image.Image]:
    """Composite `bird` at a random scale and position; returns (image, binary mask)."""
    size = background.width
    longest = max(2, int(round(size * rng.uniform(*scale))))
    ratio = longest / max(bird.size)
    width, height = max(1, round(bird.width * ratio)), max(1, round(bird.height * ratio))
    sprite = bird.resize((width, height), Image.LANCZOS)
    if rng.random() < 0.5:
        sprite = sprite.transpose(Image.FLIP_LEFT_RIGHT)
    sprite = _jitter_brightness(sprite, rng)
    left = int(rng.integers(0, size - width + 1))
    top = int(rng.integers(0, size - height + 1))
    image = background.convert("RGBA")
    image.alpha_composite(sprite, (left, top))
    mask = Image.new("L", background.size, 0)
    mask.paste(sprite.getchannel("A").point(lambda a: 255 * (a > 127)), (left, top))
    return image.convert("RGB"), mask


def _jitter_brightness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = rng.uniform(0.85, 1.15)
    pixels = np.asarray(image).astype(np.float32)
    pixels[..., :3] = np.clip(pixels[..., :3] * factor, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), mode=image.mode)


def plan_rows(
    train_per_class: int,
    val_per_group: int,
    test_per_group: int,
    correlation: float,
) -> list[tuple[int, int, int]]:
    """(split, y, place) for every image: train correlated, val and test balanced."""
    rows = []
    majority = int(round(correlation * train_per_class))
    for y in (LANDBIRD, WATERBIRD):
        own_place = LAND if y == LANDBIRD else WATER
        rows += [(0, y, own_place)] * majority + [(0, y, 1 - own_place)] * (
            train_per_class - majority
        )
    for split, per_group in ((1, val_per_group), (2, test_per_group)):
        for y in (LANDBIRD, WATERBIRD):
            for place in (LAND, WATER):
                rows += [(split, y, place)] * per_group
    return rows


def species_for(y: int, split: int, holdout: set[str]) -> list[str]:
    """The species of class y a split may use (held-out species never reach train)."""
    names = sorted(name for name, label in BIRDS.items() if label == y)
    if split == 0:
        names = [name for name in names if name not in holdout]
    return names


def scenes_for(place: int) -> list[str]:
    return sorted(key for key, label in SCENES.items() if label == place)
