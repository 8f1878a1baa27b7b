import numpy as np
import pytest

from ddb.data import corpus, embedded
from tests.conftest import needs_sources

BENCHMARK_WORDS = ("landbird", "waterbird", "land", "water", "ocean", "forest", "sea")


def test_object_names_and_categories():
    stamps = corpus.STAMPS
    assert corpus.object_name(stamps / "animals/birds/heron_greatblue_flying.png") == (
        "heron greatblue flying"
    )
    assert corpus.object_name(stamps / "food/fruit/Apple-red2.png") == "apple red"
    assert corpus.category(stamps / "animals/birds/duck.png") == "bird"
    assert corpus.category(stamps / "animals/mammals/bovines/cow.png") == "animal"
    assert corpus.category(stamps / "food/fruit/apple.png") == "fruit"
    assert corpus.category(stamps / "household/tools/hammer.png") == "object"


def test_neutral_scenes_are_not_the_benchmarks():
    benchmark = {embedded.source_paths()[f"scene:{key}"][1] for key in embedded.SCENES}
    assert not benchmark & set(corpus.NEUTRAL_SCENES)
    for word in corpus.NEUTRAL_SCENES.values():
        assert not any(w in word.split() for w in BENCHMARK_WORDS)


def test_masks_dilate_and_box():
    mask = np.zeros((8, 8), bool)
    mask[3, 4] = True
    assert corpus.dilate(mask, 1).sum() == 5  # the pixel and its 4 neighbours
    assert corpus.dilate(mask, 0).sum() == 1
    box = corpus.bounding_box(corpus.dilate(mask, 1), margin=0)
    assert box.sum() == 9 and box[2:5, 3:6].all()


@needs_sources
def test_corpus_is_deterministic_balanced_and_captioned():
    sources = corpus.load_sources()
    assert {"duck", "crow", "seagull"} <= set(sources.objects)
    assert sources.objects["duck"][1] == "bird"
    first = corpus.build_corpus(sources, 40, 32, seed=3, workers=1)
    again = corpus.build_corpus(sources, 40, 32, seed=3, workers=1)
    assert np.array_equal(first["images"], again["images"])
    assert list(first["captions"]) == list(again["captions"])
    forked = corpus.build_corpus(sources, 2000, 32, seed=3, workers=2)  # 2 worker processes
    assert np.array_equal(forked["images"][:40], first["images"])
    assert list(forked["captions"][:40]) == list(first["captions"])
    assert first["images"].shape == (40, 32, 32, 3)
    for i in range(40):
        obj, box = first["object_masks"][i], first["box_masks"][i]
        assert obj.any() and (box | obj).sum() == box.sum()  # the box covers the object
        caption = str(first["captions"][i])
        assert first["objects"][i] in caption or first["categories"][i] in caption
        assert not any(f" {w} " in f" {caption} " for w in ("landbird", "waterbird"))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_region_covers_a_real_share(seed):
    region = corpus.random_region(np.random.default_rng(seed), 64)
    assert 0.03 < region.mean() < 0.7


def test_recolour_backgrounds_keeps_objects_and_permutes_backgrounds():
    import torch

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 200, (64, 8, 8, 3), dtype=np.uint8))
    masks = torch.zeros(64, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    out = corpus.recolour_backgrounds(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out[masks], images[masks])  # objects untouched
    changed = (out != images).flatten(1).any(1)
    assert 0.25 < changed.float().mean() < 0.75  # p = 0.5
    for i in np.flatnonzero(changed.numpy()):
        before = images[i][~masks[i]].float()
        after = out[i][~masks[i]].float()
        # some channel order and one gain in [0.7, 1.3] explain the new background
        fits = []
        for order in corpus.CHANNEL_ORDERS:
            permuted = before[:, list(order)]
            gain = (after * permuted).sum() / (permuted * permuted).sum()
            error = (after - (permuted * gain).clamp(0, 255)).abs().max()
            fits.append(bool(0.69 < gain < 1.31 and error <= 1.0))
        assert any(fits)
    again = corpus.recolour_backgrounds(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded
