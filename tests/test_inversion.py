"""Textual inversion on the tiny inpainting pipeline: only the new row trains, the saved file
loads through diffusers' own loader, the loss drops, and the seed fixes the result; the
invert stage on images of several sizes, as Waterbirds' JPEGs are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ddb import paths
from ddb.config import Config
from ddb.models.inversion import (
    TEMPLATES,
    inversion_prompts,
    save_learned_embeds,
    train_textual_inversion,
)
from ddb.stages import invert
from tests.conftest import tiny_config
from tests.tiny_models import tiny_inpaint_pipeline

TOKEN = "<waterbird>"
VOCAB = 49408  # CLIP's vocabulary: the first new id


def _data(n=4, size=32):
    """Noise images with a magenta square: the region the token must explain."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    images[:, 8:24, 10:26] = (250, 0, 250)
    masks = np.zeros((n, size, size), bool)
    masks[:, 8:24, 10:26] = True
    return images, masks


def _train(pipe, seed=0, **kwargs):
    images, masks = _data()
    options = dict(steps=3, lr=1e-1, batch_size=2, grad_accum=2, seed=seed) | kwargs
    return train_textual_inversion(pipe, images, masks, TOKEN, "bird", "bird", **options)


def test_only_the_new_row_changes():
    pipe = tiny_inpaint_pipeline()
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    init = before[pipe.tokenizer.encode("bird", add_special_tokens=False)[0]]
    result = _train(pipe, lr=1.0, weight_decay=0.5)
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    new_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert new_id == VOCAB and after.shape[0] == VOCAB + 1
    # "bird" and the template words had gradients and every row had weight decay
    assert torch.equal(after[:VOCAB], before)
    assert not torch.allclose(after[new_id], init)
    assert torch.equal(result.embedding, after[new_id][None])
    assert result.embedding.shape == (1, 32) and result.embedding.dtype == torch.float32
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()
    assert not pipe.text_encoder.training and not pipe.unet.training
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())


def test_saved_embedding_loads_in_a_fresh_pipeline(tmp_path):
    embedding = _train(tiny_inpaint_pipeline()).embedding
    path = tmp_path / "learned_embeds.safetensors"
    save_learned_embeds(path, TOKEN, embedding)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind

    pipe = tiny_inpaint_pipeline()
    pipe.load_textual_inversion(str(path))
    ids = pipe.tokenizer.encode(TOKEN, add_special_tokens=False)
    assert len(ids) == 1 and ids[0] >= VOCAB
    row = pipe.text_encoder.get_input_embeddings().weight[ids[0]]
    assert torch.equal(row.detach(), embedding[0])

    images, masks = _data(n=1)
    out = pipe(
        prompt=f"a photo of a {TOKEN} bird",
        image=images[0],
        mask_image=masks[0].astype(np.uint8) * 255,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_inversion_lowers_the_fixed_eval_loss():
    pipe = tiny_inpaint_pipeline()
    result = _train(pipe, steps=30, batch_size=4, grad_accum=1)
    assert np.isfinite([result.initial_loss, result.final_loss]).all()
    assert result.final_loss < result.initial_loss


def test_no_learning_leaves_the_eval_loss_unchanged():
    """lr = 0: the eval loss is deterministic, so any drop above comes from the embedding."""
    result = _train(tiny_inpaint_pipeline(), lr=0.0, steps=1)
    assert result.final_loss == result.initial_loss


def test_seed_fixes_the_embedding():
    first = _train(tiny_inpaint_pipeline(), seed=0).embedding
    again = _train(tiny_inpaint_pipeline(), seed=0).embedding
    other = _train(tiny_inpaint_pipeline(), seed=1).embedding
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_prompts_name_the_token_and_the_common_noun():
    prompts = inversion_prompts(TOKEN, "bird")
    assert len(prompts) == len(TEMPLATES) == 15 == len(set(prompts))
    assert prompts[0] == "a photo of a <waterbird> bird"
    for prompt in prompts:
        assert "<waterbird> bird" in prompt
        assert "waterbird bird" not in prompt.replace("<waterbird>", "")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(masks=np.zeros((4, 16, 16), bool)), "do not match"),
        (dict(images=np.zeros((0, 32, 32, 3), np.uint8), masks=np.zeros((0, 32, 32), bool)),
         "no images"),
        (dict(steps=0), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(grad_accum=0), "grad_accum"),
        (dict(class_name=""), "class_name"),
        (dict(initializer="waterbird"), "single CLIP token"),
    ],
)  # fmt: skip
def test_invalid_arguments_raise_before_touching_the_pipeline(change, message):
    pipe = tiny_inpaint_pipeline()
    images, masks = _data()
    args = dict(
        images=images, masks=masks, token=TOKEN, initializer="bird", class_name="bird",
        steps=1, lr=1e-3, batch_size=1, grad_accum=1, seed=0,
    ) | change  # fmt: skip
    with pytest.raises(ValueError, match=message):
        train_textual_inversion(pipe, **args)
    assert TOKEN not in pipe.tokenizer.get_vocab()


# ---- the invert stage -----------------------------------------------------------------

SIZES = [(500, 375), (333, 500), (375, 500), (500, 333)]  # width x height, as in Waterbirds


def write_inversion_inputs(root: Path, pipe_dir: Path) -> Config:
    """In the cwd (a project folder): an image folder whose JPEGs have SIZES, each with a
    bird-like ellipse and its segment mask at the image's size (one without a detection),
    models/segment/segments.csv naming two inversion images per class, and the tiny config
    with models.diffusion = `pipe_dir`."""
    rng = np.random.default_rng(0)
    rows = []
    (paths.SEGMENT / "masks").mkdir(parents=True)
    for i in range(4):
        y = i % 2
        w, h = SIZES[i]
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 < 1
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        image[mask] = (250, 250, 0) if y else (120, 60, 0)
        name = f"{y:03d}.class/{i:04d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name, quality=95)
        mask_name = f"masks/{i:05d}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(paths.SEGMENT / mask_name)
        rows.append(
            {
                "img_filename": name,
                "y": y,
                "role": "inversion",
                "mask_filename": mask_name,
                "detected": i != 3,
            }
        )
    pd.DataFrame(rows).to_csv(paths.SEGMENT / "segments.csv", index=False)
    config = tiny_config(root)
    return dataclasses.replace(
        config,
        # Waterbirds' folder layout without its metadata.csv (invert reads segments.csv)
        data=dataclasses.replace(config.data, format="waterbirds"),
        models=dataclasses.replace(config.models, diffusion=str(pipe_dir)),
        invert=dataclasses.replace(config.invert, steps=2, batch_size=2, num_images=2),
    )


def test_invert_brings_images_of_several_sizes_to_the_model_resolution(in_tmp_repo, tmp_path):
    pipe_dir = tmp_path / "inpaint"
    tiny_inpaint_pipeline().save_pretrained(pipe_dir)
    config = write_inversion_inputs(tmp_path / "images", pipe_dir)
    invert.run(config)  # stopped at np.stack: "all input arrays must have the same shape"
    summary = json.loads((paths.INVERT / "summary.json").read_text())
    assert [s["images"] for s in summary.values()] == [2, 2]
    assert summary["waterbird"]["whole_image_masks"] == 1
    assert summary["landbird"]["model"] == "models.diffusion"
    for name in ("landbird", "waterbird"):
        assert (paths.INVERT / name / "learned_embeds.safetensors").is_file()
        assert np.isfinite([summary[name]["initial_loss"], summary[name]["final_loss"]]).all()


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_image_and_mask_get_the_same_resize_and_centre_crop(width, height):
    yy, xx = np.mgrid[:height, :width]
    mask = (abs(yy - height / 2) < height / 5) & (abs(xx - width / 3) < width / 8)
    image = np.zeros((height, width, 3), np.uint8)
    image[mask] = 255
    square = invert.center_square(image, 64, Image.BICUBIC)
    small = invert.center_square(mask.astype(np.uint8) * 255, 64, Image.NEAREST) > 127
    assert square.shape == (64, 64, 3) and small.shape == (64, 64) and small.dtype == bool
    assert 0.03 < small.mean() < 0.5  # the region survives the crop
    inside, outside = square[small].mean(), square[~small].mean()
    assert inside > 200 and outside < 40, (inside, outside)  # mask and image aligned
    assert invert.center_square(square, 64, Image.BICUBIC) is square  # the right size: as is
