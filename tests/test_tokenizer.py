"""The offline CLIP tokenizer against open_clip's own (OpenAI's) tokenizer, and placeholders."""

from __future__ import annotations

import importlib.util
import itertools
import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ddb.models.tokenizer import VOCAB_SIZE, add_placeholder_tokens, clip_tokenizer

SPECIES = [
    "duck", "seagull", "little-penguin", "crowned crane", "mallard", "pelican", "flamingo",
    "great blue heron", "Canada goose", "robin", "house sparrow", "blue jay", "cardinal",
    "woodpecker", "barn owl", "hummingbird", "bald eagle", "parrot", "toucan", "kingfisher",
    "Atlantic puffin", "black-footed albatross", "Laysan_Albatross", "emperor penguin",
]  # fmt: skip
SCENES = ["a forest", "the sea", "waves", "a meadow", "fallen leaves", "bamboo forest", "ocean"]
TEMPLATES = [
    "a photo of a {species} on {scene}",
    "A PHOTO OF A {species} ON {scene}!",
    "{species}, {scene}; {n} birds.",
    "a {species} (photo #{n}) at {scene}...",
    "the {species}'s nest near {scene}, isn't it?",
    "{species} 🐦 in {scene}",
    "une photo d'un {species} à {scene} — café",
    "  {species}   \t standing   on\n{scene}  ",
    "{species}-{n}x{n} @ {scene}?!",
    "Straße: {species} über {scene} 鳥 {n}%",
    "<{species}> [{scene}] {{n}} $3.14",
]
NUMBERS = ["1", "42", "2026", "3.5", "007"]


def prompts() -> list[str]:
    cases = itertools.product(enumerate(TEMPLATES), enumerate(SPECIES))
    texts = [
        template.format(species=species, scene=SCENES[(i + j) % 7], n=NUMBERS[(i * j) % 5])
        for (i, template), (j, species) in cases
    ]
    long = " ".join(f"{s} on {c}" for s, c in zip(SPECIES, itertools.cycle(SCENES)))
    return [*texts, long, long.upper(), "", "bird"]  # 267 prompts; `long` is > 77 tokens


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return clip_tokenizer()


@pytest.fixture(scope="module")
def reference():
    """open_clip's SimpleTokenizer, loaded from its file alone (the package imports timm)."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    module_spec.loader.exec_module(module)  # sets TOKENIZERS_PARALLELISM; put it back
    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before
    return module.SimpleTokenizer()


def reference_ids(reference, text: str, context_length: int = 77) -> list[int]:
    """open_clip's ids for one text, unpadded: <sot> ids <eot>, truncated as open_clip does."""
    ids = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
    if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = reference.eot_token_id
    return ids


def test_ids_match_open_clip_on_bird_prompts(tokenizer, reference):
    texts = prompts()
    ours = tokenizer(texts, truncation=True, max_length=77)["input_ids"]
    theirs = [reference_ids(reference, text) for text in texts]
    mismatches = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatches, mismatches[:3]
    assert max(len(ids) for ids in ours) == 77  # the long prompt was truncated, like open_clip


def test_padded_batch_matches_open_clip_and_pads_with_endoftext(tokenizer, reference):
    texts = prompts()[:40]
    batch = tokenizer(
        texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
    )
    theirs = reference(texts)  # open_clip pads with 0
    keep = batch["attention_mask"].bool()
    assert torch.equal(batch["input_ids"][keep], theirs[keep])
    assert (batch["input_ids"][~keep] == 49407).all()
    assert (theirs[~keep] == 0).all()


def test_vocabulary_and_known_ids(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE == 49408
    assert tokenizer("a photo")["input_ids"] == [49406, 320, 1125, 49407]
    assert tokenizer("bird")["input_ids"] == [49406, 3329, 49407]
    assert tokenizer.bos_token_id == 49406
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 49407
    assert tokenizer.model_max_length == 77
    assert tokenizer.decode(tokenizer("a photo of a duck")["input_ids"][1:-1]) == (
        "a photo of a duck"
    )


def tiny_text_encoder(vocab_size: int = VOCAB_SIZE) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        eos_token_id=49407,
    )
    torch.manual_seed(0)
    return CLIPTextModel(config).eval()


def test_placeholders_are_single_new_ids_initialised_from_the_word():
    tokenizer, encoder = clip_tokenizer(), tiny_text_encoder()
    before = encoder.get_input_embeddings().weight.detach().clone()
    bird = tokenizer.convert_tokens_to_ids("bird</w>")

    ids = add_placeholder_tokens(tokenizer, encoder, ["<landbird>", "<waterbird>"], "bird")

    assert ids == [49408, 49409]
    text = tokenizer("a photo of a <waterbird> on water, not a <landbird>")["input_ids"]
    plain = tokenizer("a photo of a bird on water, not a bird")["input_ids"]
    first, second = [i for i, token in enumerate(plain) if token == bird]
    plain[first], plain[second] = 49409, 49408
    assert text == plain  # each placeholder is one token, not "<", "water", "bird", ">"
    weight = encoder.get_input_embeddings().weight.detach()
    assert weight.shape == (49410, 32)
    assert torch.equal(weight[49408], before[bird]) and torch.equal(weight[49409], before[bird])
    assert torch.equal(weight[:VOCAB_SIZE], before)  # the old rows are untouched
    out = encoder(input_ids=torch.tensor([text])).last_hidden_state
    assert out.shape == (1, len(text), 32)


def test_placeholder_errors():
    tokenizer, encoder = clip_tokenizer(), tiny_text_encoder()
    with pytest.raises(ValueError, match="2 tokens"):
        add_placeholder_tokens(tokenizer, encoder, ["<crane>"], "crowned crane")
    with pytest.raises(ValueError, match="already taken"):
        add_placeholder_tokens(tokenizer, encoder, ["bird</w>"], "bird")
    add_placeholder_tokens(tokenizer, encoder, ["<landbird>"], "bird")
    with pytest.raises(ValueError, match="<landbird>"):
        add_placeholder_tokens(tokenizer, encoder, ["<landbird>"], "bird")
    assert len(tokenizer) == 49409  # the failed calls added nothing


def test_save_and_load_keeps_ids(tmp_path):
    tokenizer, encoder = clip_tokenizer(), tiny_text_encoder()
    add_placeholder_tokens(tokenizer, encoder, ["<waterbird>"], "bird")
    tokenizer.save_pretrained(tmp_path)

    loaded = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)

    texts = [*prompts()[::10], "a <waterbird> on the sea"]
    assert len(loaded) == len(tokenizer) == 49409
    assert loaded(texts, padding=True)["input_ids"] == tokenizer(texts, padding=True)["input_ids"]
    assert loaded.model_max_length == 77 and loaded.pad_token_id == 49407
