"""The small CLIPSeg: building, training from scratch, segmenting, IoU, save/load."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from ddb.models.loaders import load_segmenter
from ddb.models.segmenter import (
    TensorInputs,
    build_segmenter,
    extract_layers,
    mask_iou,
    model_inputs,
    segment,
    segmentation_logits,
    train_segmenter,
)
from ddb.models.tokenizer import clip_tokenizer

REFERENCE = Path(__file__).parent / "hub_reference"  # real checkpoints' small files
SIZE = 32  # the processor's (and logits') side; the synthetic images are 48 px


def squares(n: int, seed: int, side: int = 48) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bright squares of random colour and place on noise; the mask is the square."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (n, side, side, 3), dtype=np.uint8)
    masks = np.zeros((n, side, side), bool)
    for i in range(n):
        size = int(rng.integers(side // 3, side // 2))
        y, x = rng.integers(0, side - size, 2)
        images[i, y : y + size, x : x + size] = rng.integers(160, 256, 3)
        masks[i, y : y + size, x : x + size] = True
    return images, masks, ["square"] * n


@pytest.fixture
def segmenter():
    torch.manual_seed(0)
    return build_segmenter(clip_tokenizer(), image_size=SIZE, width=32, layers=2, reduce_dim=16)


def test_extract_layers_match_clipseg_and_fit_the_depth():
    assert extract_layers(12) == [3, 6, 9]  # CIDAS/clipseg-rd64-refined
    assert extract_layers(4) == [1, 2, 3]
    assert extract_layers(2) == [0, 1]
    assert extract_layers(1) == [0]


def test_build_config(segmenter):
    processor, model = segmenter
    config = model.config
    assert config.text_config.vocab_size == 49408
    assert config.text_config.eos_token_id == 49407  # pool at the first <|endoftext|>
    assert config.vision_config.image_size == SIZE and config.extract_layers == [0, 1]
    assert processor.image_processor.size == {"height": SIZE, "width": SIZE}


def test_gradient_path_equals_clipseg_forward(segmenter):
    processor, model = segmenter
    images, _, _ = squares(3, seed=1)
    inputs = model_inputs(processor, images, ["square", "a duck", "x"], torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        ours = segmentation_logits(model, inputs)
    assert ours.shape == (3, SIZE, SIZE)
    # Two code paths through the same weights: equal up to float32 rounding of the order in
    # which they sum (kernels differ by CPU), so the tolerance scales with the logits; a
    # missing layer or a wrong pooling moves them by O(1).
    scale = expected.abs().max().item()
    assert (ours - expected).abs().max().item() <= 1e-5 * scale


def test_training_lowers_the_loss_and_trains_the_backbone(segmenter):
    processor, model = segmenter
    data = [squares(8, seed=s) for s in range(4)]
    patch_before = model.clip.vision_model.embeddings.patch_embedding.weight.detach().clone()
    text_before = model.clip.text_model.embeddings.token_embedding.weight.detach().clone()

    losses = train_segmenter(
        processor, model, itertools.cycle(data), steps=60, lr=2e-3, device="cpu", log_every=10
    )

    assert len(losses) == 60 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    patch = model.clip.vision_model.embeddings.patch_embedding.weight
    assert not torch.equal(patch, patch_before)  # CLIPSeg's forward would freeze the towers
    square_id = processor.tokenizer.convert_tokens_to_ids("square</w>")
    assert not torch.equal(
        model.clip.text_model.embeddings.token_embedding.weight[square_id],
        text_before[square_id],
    )
    # unseen images; predicting all or nothing scores at most the square's share (~0.16)
    images, masks, _ = squares(8, seed=99)
    assert mask_iou(segment(processor, model, images, "square", 0.5), masks) > 0.3


def test_training_needs_enough_batches(segmenter):
    processor, model = segmenter
    with pytest.raises(ValueError, match="ran out after 1 of 3"):
        train_segmenter(processor, model, [squares(2, 0)], steps=3, lr=1e-3, device="cpu")


def test_segment_shape_dtype_and_threshold(segmenter):
    processor, model = segmenter
    images, _, _ = squares(3, seed=2, side=40)
    masks = segment(processor, model, images, "square", threshold=0.5, batch_size=2)
    assert masks.shape == (3, 40, 40) and masks.dtype == bool
    one = segment(processor, model, images[0], "square", threshold=0.5)
    assert one.shape == (1, 40, 40)
    # Batching does not change the answer. A batch of 1 and one of 2 may take different CPU
    # kernels, so a probability within float rounding of the threshold may fall either side:
    # compare exactly only where the mask is the same for thresholds 0.5 +- 1e-4.
    low = segment(processor, model, images, "square", threshold=0.5 - 1e-4, batch_size=2)
    high = segment(processor, model, images, "square", threshold=0.5 + 1e-4, batch_size=2)
    settled = low[0] == high[0]
    assert settled.mean() > 0.99
    assert np.array_equal(one[0][settled], masks[0][settled])
    assert segment(processor, model, images, "square", threshold=0.0).all()
    assert not segment(processor, model, images, "square", threshold=1.0).any()


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3] = True  # 8 pixels, 4 shared
    empty = np.zeros((4, 4), bool)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert mask_iou(empty, a) == 0.0
    assert mask_iou(np.stack([a, a]), np.stack([a, ~a])) == 0.5  # mean over images
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, np.zeros((4, 5), bool))


def test_save_and_load_round_trip(segmenter, tmp_path: Path):
    processor, model = segmenter
    processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)

    loaded_processor, loaded = load_segmenter(str(tmp_path))

    images, _, _ = squares(2, seed=3)
    assert loaded_processor.tokenizer("a photo")["input_ids"] == [49406, 320, 1125, 49407]
    assert loaded_processor.image_processor.image_mean == processor.image_processor.image_mean
    assert np.array_equal(
        segment(processor, model, images, "square", 0.5),
        segment(loaded_processor, loaded, images, "square", 0.5),
    )
    assert loaded.config.extract_layers == model.config.extract_layers


def test_tensor_inputs_equal_the_processors(segmenter):
    processor, _ = segmenter
    images = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    prompts = ["a photo of a duck", "bird", "bird"]
    expected = model_inputs(processor, images, prompts, torch.device("cpu"))
    ours = TensorInputs(processor, torch.device("cpu"))(torch.from_numpy(images), prompts)
    assert torch.equal(ours["input_ids"], expected["input_ids"])
    assert torch.equal(ours["attention_mask"], expected["attention_mask"])
    assert torch.allclose(ours["pixel_values"], expected["pixel_values"], atol=1e-5)
    with pytest.raises(ValueError, match="the model takes"):
        TensorInputs(processor, torch.device("cpu"))(torch.from_numpy(images[:, :16]), prompts)


def test_tensor_inputs_normalise_with_the_checkpoints_own_mean_and_std(segmenter):
    """The real CLIPSeg processor (CIDAS/clipseg-rd64-refined's preprocessor_config.json, as
    shipped) normalises with ImageNet's mean and std, not CLIP's: the fast path must too."""
    from transformers import CLIPSegProcessor, ViTImageProcessor

    real = REFERENCE / "CIDAS--clipseg-rd64-refined"
    image_processor = ViTImageProcessor.from_pretrained(real, size={"height": SIZE, "width": SIZE})
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406]  # ImageNet's, as the file says
    tokenizer = segmenter[0].tokenizer
    processor = CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)
    images = np.random.default_rng(4).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)

    expected = model_inputs(processor, images, ["bird", "bird"], torch.device("cpu"))
    ours = TensorInputs(processor, torch.device("cpu"))(torch.from_numpy(images), ["bird"] * 2)

    # CLIP's constants instead of the file's move pixels by up to ~0.25; rounding by 1e-5
    assert torch.allclose(ours["pixel_values"], expected["pixel_values"], atol=1e-5)
