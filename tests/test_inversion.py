"""Textual inversion on the tiny inpainting pipeline: only the new row trains, the saved file
loads through diffusers' own loader, the loss drops, and the seed fixes the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddb.models.inversion import (
    TEMPLATES,
    inversion_prompts,
    save_learned_embeds,
    train_textual_inversion,
)
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
