"""The CLIP tokenizer, built offline from the BPE vocabulary that open-clip-torch ships.

No hub access means no `CLIPTokenizer.from_pretrained("openai/clip-vit-...")`, but the
open-clip-torch wheel carries OpenAI's original BPE file. Built from it, the tokenizer gives
the same ids as OpenAI CLIP and Stable Diffusion ("a photo" -> 320, 1125), so the small
offline models and real checkpoints share one vocabulary and params can swap one for the
other.

open-clip-torch is installed with `--no-deps` (requirements-nodeps.txt): only its data file
is used, and importing the package would pull in timm, so it is located, never imported.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import logging
from pathlib import Path

import torch
from transformers import CLIPTokenizer, PreTrainedModel

log = logging.getLogger(__name__)

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the merges OpenAI CLIP uses (the file holds more)
VOCAB_SIZE = 49408  # 256 bytes + 256 end-of-word bytes + merges + 2 special tokens
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bpe_path() -> Path:
    """Where open-clip-torch keeps the BPE file, found without importing open_clip.

    `importlib.util.find_spec` only locates the package; `open_clip/__init__.py` (which
    imports timm, deliberately not installed) never runs.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "open-clip-torch is not installed; it provides the CLIP BPE vocabulary. Run "
            "`make setup` (or `pip install --no-deps -r requirements-nodeps.txt`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    if not path.is_file():
        raise ImportError(f"{path}: the CLIP BPE vocabulary is missing from open-clip-torch")
    return path


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (as in open_clip)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@functools.cache
def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges in rank order), built exactly as open_clip's SimpleTokenizer does.

    Cached: the 49,408-entry vocabulary takes a moment to build and never changes.
    """
    with gzip.open(bpe_path()) as file:
        lines = file.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]  # line 0: "#version"
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"{bpe_path()}: built {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer (49,408 tokens), padding with "<|endoftext|>".

    transformers 5 builds the tokenizer from `vocab=` and `merges=` only; `vocab_file=` and
    `merges_file=` are silently ignored and give a 2-token vocabulary.

    Padding with "<|endoftext|>" is Stable Diffusion 1.x's choice (SD 2.x pads with "!", id
    0). The text encoders here pool at the *first* end-of-text token (their config's
    `eos_token_id` is 49407), so the padding never moves the pooled position, and the UNet
    sees the padded positions' hidden states exactly as SD 1.x was trained to.

    One difference from open_clip remains: open_clip cleans text with ftfy and unescapes
    HTML ("&amp;"); this tokenizer only applies NFC, so mojibake, curly quotes and HTML
    entities may tokenize differently. Plain prompts tokenize identically (tested).
    """
    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=model_max_length,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
    )


def add_placeholder_tokens(
    tokenizer: CLIPTokenizer,
    text_encoder: PreTrainedModel,
    tokens: list[str],
    initializer: str,
) -> list[int]:
    """Add each placeholder (e.g. "<waterbird>") as one new id, initialised from a word.

    Textual inversion learns one embedding row per placeholder; starting that row at a
    related word's embedding ("bird") is the standard initialisation. The text encoder's
    input embeddings grow to the new vocabulary size and the new rows are copies of the
    initializer's row. Returns the new ids, in the order of `tokens`.

    Raises ValueError when the initializer is not exactly one token (its embedding would be
    ambiguous) or a placeholder is already a token (it would silently share an id).
    """
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(init_ids)
        raise ValueError(
            f"initializer '{initializer}' is {len(init_ids)} tokens ({pieces}); "
            "choose a word that is a single CLIP token, such as 'bird'"
        )
    vocab = tokenizer.get_vocab()
    taken = [token for token in tokens if token in vocab]
    if taken or len(set(tokens)) != len(tokens):
        raise ValueError(f"placeholder tokens must be new and distinct; already taken: {taken}")
    added = tokenizer.add_tokens(list(tokens))
    if added != len(tokens):
        raise RuntimeError(f"tokenizer added {added} of the placeholder tokens {tokens}")
    new_ids = tokenizer.convert_tokens_to_ids(list(tokens))

    embeddings = text_encoder.get_input_embeddings()
    if embeddings.num_embeddings < len(tokenizer):
        # mean_resizing=False: the new rows are overwritten below anyway
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embeddings = text_encoder.get_input_embeddings()
    with torch.no_grad():
        embeddings.weight[new_ids] = embeddings.weight[init_ids[0]].clone()
    if getattr(text_encoder.config, "eos_token_id", None) == 2:
        log.warning(
            "the text encoder's config has the legacy eos_token_id 2: its pooled output picks "
            "the highest id, which is now a placeholder; use last_hidden_state"
        )
    log.info("added placeholders %s as ids %s (from '%s')", tokens, new_ids, initializer)
    return new_ids
