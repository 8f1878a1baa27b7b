"""Random-weight GroundingDINO and SAM 2.1 (LangSAM's two models) built from their real files.

`save_langsam_stand_ins(hf_home, size="tiny")` writes both into a Hugging Face hub cache under
`IDEA-Research/grounding-dino-base` and `facebook/sam2.1-hiera-small`, the way
tests/paper_world.py builds the SD2 and CLIPSeg stand-ins: the files of
tests/hub_reference/<org>--<name>/ as shipped, size keys shrunk at "tiny", random weights of
transformers' own classes, so that `ddb.models.langsam` loads and runs them exactly as it
would the real checkpoints.

Two reference configs are partial (tests/hub_reference/README.md), so some keys are ours:
- GroundingDINO base: the file's keys are kept; the tail keys it omits (`init_std`,
  `layer_norm_eps`, ...) and its `text_config` (only `model_type: bert`, i.e.
  bert-base-uncased) take transformers' defaults. The vocabulary is a tiny WordPiece one
  with BERT's special ids (the real `vocab.txt` is not copied).
- SAM 2.1 hiera-small: only `model_type: sam2_video` is known. Every other key of
  config.json is our assumption: transformers' `Sam2VideoConfig` defaults (Hiera-tiny) with
  hiera-small's depth (blocks [1, 2, 11, 2], global attention at 7, 10, 13, from the
  original `sam2.1_hiera_s.yaml`), and the image and video processor files are what
  `Sam2VideoProcessor.save_pretrained` writes. Only processor_config.json is the real one.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch
from transformers import (
    BertTokenizerFast,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    Sam2ImageProcessor,
    Sam2Model,
    Sam2Processor,
    Sam2VideoConfig,
    Sam2VideoModel,
    Sam2VideoVideoProcessor,
)

from ddb.models.langsam import DEFAULT_DETECTOR, DEFAULT_SAM
from tests.hub_cache import hub_snapshot
from tests.paper_world import REFERENCE, copy_reference, merged, save_weights

WORDS = ["a", "photo", "of", "the", "bird", "animal", "hair", "duck", "sea", "forest", "person"]

# size="tiny": GroundingDINO base's size keys (Swin-B 128 wide, depths 2/2/18/2; d_model 256;
# 6 + 6 layers; 900 queries; BERT-base 768 wide, 12 layers). The processor keeps 800 px.
TINY_DETECTOR = {
    "backbone_config": {
        "depths": [1, 1, 1, 1],
        "embed_dim": 8,
        "hidden_size": 64,  # embed_dim * 2**3, Swin's last stage
        "num_heads": [1, 1, 1, 1],
    },
    "d_model": 64,  # GroupNorm(32 groups) on the feature levels needs >= 2 channels per group
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 64,
    "decoder_layers": 2,  # >= 2: the box heads of layers 1.. are tied to layer 0's
    "decoder_n_points": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "encoder_layers": 1,
    "encoder_n_points": 2,
    "num_queries": 10,
    "text_config": {
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
    },
}
# SAM 2.1 (our assumption, see above): full = Sam2VideoConfig's defaults at hiera-small's
# depth; tiny shrinks the widths and depths and keeps the 1024 px input.
SAM_FULL_BACKBONE = {"blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13]}
SAM_TINY_BACKBONE = {
    "hidden_size": 12,
    "blocks_per_stage": [1, 1, 2, 1],
    "embed_dim_per_stage": [12, 24, 48, 96],
    "num_attention_heads_per_stage": [1, 1, 1, 1],
    "global_attention_blocks": [3],  # in stage 3, not its first block, as hiera-small's
}
SAM_TINY = {
    "vision_config": {"backbone_channel_list": [96, 48, 24, 12], "fpn_hidden_size": 32},
    "prompt_encoder_config": {"hidden_size": 32, "mask_input_channels": 8},
    "mask_decoder_config": {
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "iou_head_hidden_dim": 32,
    },
    "memory_attention_hidden_size": 32,
    "memory_attention_num_layers": 1,
    "memory_attention_feed_forward_hidden_size": 32,
    "memory_encoder_hidden_size": 32,
    "memory_encoder_output_channels": 16,
    "mask_downsampler_embed_dim": 32,
    "memory_fuser_embed_dim": 32,
    "memory_fuser_intermediate_dim": 64,
}


def tiny_bert_tokenizer() -> BertTokenizerFast:
    """An uncased WordPiece tokenizer whose special ids are bert-base-uncased's: GroundingDINO
    hard-codes [CLS] 101, [SEP] 102, "." 1012 and "?" 1029 to split the prompt into phrases.
    Punctuation sits from 999 in ASCII order, as there; letters and ##letters spell any word."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 999 - len(vocab))]
    vocab += sorted(string.punctuation + string.digits)  # ASCII order, as in BERT's vocabulary
    vocab += WORDS + list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    ids = {token: i for i, token in enumerate(vocab)}
    assert ids["[CLS]"] == 101 and ids["."] == 1012 and ids["?"] == 1029, "not BERT's ids"
    return BertTokenizerFast(vocab=ids, do_lower_case=True)


def save_grounding_dino(
    folder: Path, size: str = "tiny", tokenizer: BertTokenizerFast | None = None
) -> None:
    """GroundingDINO base's files (config shrunk at "tiny"; preprocessor and tokenizer
    configs as shipped), the vocabulary of `tokenizer` (default: tiny_bert_tokenizer) as
    vocab.txt and tokenizer.json, random weights."""
    copy_reference(
        REFERENCE / "IDEA-Research--grounding-dino-base", folder, size,
        {"config.json": TINY_DETECTOR},
    )  # fmt: skip
    tokenizer = tokenizer or tiny_bert_tokenizer()
    with tempfile.TemporaryDirectory() as scratch:  # the real repo ships both files
        tokenizer.save_pretrained(scratch)
        (folder / "tokenizer.json").write_bytes((Path(scratch) / "tokenizer.json").read_bytes())
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id))
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig.from_pretrained(folder))
    save_weights(model, folder)


def save_sam2(folder: Path, size: str = "tiny") -> None:
    """SAM 2.1 hiera-small as `sam2_video` (its Hub tag): config and processor files as
    described in the module docstring, processor_config.json as shipped, random weights."""
    config = Sam2VideoConfig().to_dict()
    backbone = SAM_TINY_BACKBONE if size == "tiny" else SAM_FULL_BACKBONE
    config = merged(config, {"vision_config": {"backbone_config": backbone}})
    if size == "tiny":
        config = merged(config, SAM_TINY)
    torch.manual_seed(0)
    model = Sam2VideoModel(Sam2VideoConfig.from_dict(config))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    # the sub-processors in their own files, as transformers 4.5x wrote them beside a
    # processor_config.json as short as the real one (transformers 5 nests them in it)
    Sam2ImageProcessor().save_pretrained(folder)
    Sam2VideoVideoProcessor().save_pretrained(folder)
    copy_reference(REFERENCE / "facebook--sam2.1-hiera-small", folder / "real", size)
    real = folder / "real"
    assert (
        json.loads((folder / "config.json").read_text())["model_type"]
        == json.loads((real / "config.json").read_text())["model_type"]
    )
    (real / "processor_config.json").replace(folder / "processor_config.json")
    (real / "config.json").unlink()
    real.rmdir()


def tiny_grounding_dino(
    tokenizer: BertTokenizerFast | None = None,
) -> tuple[GroundingDinoProcessor, GroundingDinoForObjectDetection]:
    """The tiny GroundingDINO's processor and model (eval), as loaded from its files."""
    with tempfile.TemporaryDirectory() as folder:
        save_grounding_dino(Path(folder), "tiny", tokenizer)
        processor = GroundingDinoProcessor.from_pretrained(folder)
        return processor, GroundingDinoForObjectDetection.from_pretrained(folder).eval()


def tiny_sam2() -> tuple[Sam2Processor, Sam2Model]:
    """The tiny SAM 2.1's processor and model (eval), loaded as ddb.models.loaders does."""
    with tempfile.TemporaryDirectory() as folder:
        save_sam2(Path(folder), "tiny")
        return Sam2Processor.from_pretrained(folder), Sam2Model.from_pretrained(folder).eval()


def save_pair(processor, model):
    """A `save(folder)` writing both with save_pretrained (a folder for models.detector/sam)."""

    def save(folder: Path) -> None:
        processor.save_pretrained(folder)
        model.save_pretrained(folder)

    return save


def save_langsam_stand_ins(
    hf_home: Path, detector: str = DEFAULT_DETECTOR, sam: str = DEFAULT_SAM, size: str = "tiny"
) -> None:
    """Both models in the HF hub cache under `hf_home`, as `detector` and `sam` (by default
    the hub ids that `models.detector` and `models.sam` default to)."""
    hub_snapshot(Path(hf_home), detector, lambda folder: save_grounding_dino(folder, size))
    hub_snapshot(Path(hf_home), sam, lambda folder: save_sam2(folder, size))
