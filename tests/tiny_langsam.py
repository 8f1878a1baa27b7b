"""Tiny random-weight GroundingDINO and SAM 2 (LangSAM's two models) with their processors.

The architectures and processors are transformers' own, at toy size, so that
`ddb.models.langsam` loads and runs them exactly as it would the real checkpoints
(`IDEA-Research/grounding-dino-base`, `facebook/sam2.1-hiera-small`).
`save_langsam_stand_ins(hf_home)` writes both into a Hugging Face hub cache under those ids.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import (
    BertTokenizerFast,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2ImageProcessor,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2Processor,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
    SwinConfig,
)

from ddb.models.langsam import DEFAULT_DETECTOR, DEFAULT_SAM
from tests.hub_cache import hub_snapshot

WORDS = ["a", "photo", "of", "the", "bird", "animal", "hair", "duck", "sea", "forest", "person"]
SAM_IMAGE_SIZE = 128  # the real SAM 2 takes 1024 × 1024


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


def tiny_grounding_dino(
    tokenizer: BertTokenizerFast,
) -> tuple[GroundingDinoProcessor, GroundingDinoForObjectDetection]:
    """GroundingDINO with a 4-stage Swin of width 8, a 2-layer BERT of width 8, 10 queries
    and 1 encoder / 2 decoder layers of width 64;
    its processor resizes to 64 px on the short side (800 for the real one)."""
    torch.manual_seed(0)
    swin = SwinConfig(
        window_size=7,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=64,
        out_indices=[2, 3, 4],
    )
    bert = {
        "model_type": "bert",
        "vocab_size": len(tokenizer),
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 32,
    }
    config = GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        d_model=64,  # GroupNorm(32 groups) on a 1×1 level needs >= 2 channels per group
        encoder_layers=1,
        decoder_layers=2,  # >= 2: the box heads of layers 1.. are tied to layer 0's
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return processor, GroundingDinoForObjectDetection(config).eval()


def tiny_sam2() -> tuple[Sam2Processor, Sam2Model]:
    """SAM 2 with a 4-stage Hiera of width 12 on 128 px inputs, a 2-layer mask decoder."""
    torch.manual_seed(0)
    size = SAM_IMAGE_SIZE
    backbone = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=size,
        patch_kernel_size=7,
        patch_stride=4,
        patch_padding=3,
        blocks_per_stage=[1, 1, 1, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
        num_attention_heads_per_stage=[1, 1, 1, 1],
    )
    stride = 4
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[size // stride // 2**i] * 2 for i in range(3)],
        fpn_hidden_size=32,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            image_size=size, patch_size=16, hidden_size=32, mask_input_channels=8
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32,
            mlp_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            iou_head_hidden_dim=32,
        ),
        image_size=size,
        memory_attention_hidden_size=12,
        memory_encoder_hidden_size=32,
        mask_downsampler_embed_dim=32,
        memory_fuser_embed_dim=32,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32,
    )
    image_processor = Sam2ImageProcessor(
        size={"height": size, "width": size}, mask_size={"height": size // 4, "width": size // 4}
    )
    return Sam2Processor(image_processor=image_processor), Sam2Model(config).eval()


def save_pair(processor, model):
    def save(folder: Path) -> None:
        processor.save_pretrained(folder)
        model.save_pretrained(folder)

    return save


def save_langsam_stand_ins(
    hf_home: Path, detector: str = DEFAULT_DETECTOR, sam: str = DEFAULT_SAM
) -> None:
    """Both tiny models in the HF hub cache under `hf_home`, as `detector` and `sam` (by
    default the hub ids that `models.detector` and `models.sam` default to)."""
    hf_home = Path(hf_home)
    tokenizer = tiny_bert_tokenizer()
    hub_snapshot(hf_home, detector, save_pair(*tiny_grounding_dino(tokenizer)))
    hub_snapshot(hf_home, sam, save_pair(*tiny_sam2()))
