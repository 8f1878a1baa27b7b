"""LangSAM, the paper's language segmenter: GroundingDINO boxes, then SAM 2 masks in them.

As lang-segment-anything (luca-medeiros/lang-segment-anything, `LangSAM.predict`) does it,
with transformers' own classes: GroundingDINO (`models.detector`) finds the boxes whose
score exceeds the box threshold (0.3) for the prompt, lower-cased and ended with "." as
GroundingDINO expects; the text threshold (0.25) only picks each box's phrase label there,
so it does not change which boxes are kept. SAM 2 (`models.sam`) predicts one mask per box
(`multimask_output=False`, logits > 0 at the image's size). DDB needs one region per image,
so the image's mask is the union of its boxes' masks; no box is an empty mask, which the
segment stage counts as no detection.

Two bounds lang-sam does not have: it sends every box above the threshold to SAM in one
call (`SAM2ImagePredictor.predict_batch`; only GroundingDINO's 900 queries bound the count),
and each box costs about 0.37 s and 40 MB in SAM's decoder on CPU. Here at most `max_boxes`
boxes per image are kept (`segment.max_boxes`, the highest-scoring; 0 keeps all, as
lang-sam), and they go through the decoder `BOXES_PER_CALL` at a time; the union of the
chunks' masks is the union of all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from transformers import (
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    Sam2Model,
    Sam2Processor,
)

from ddb.models.loaders import load_detector, load_sam

# lang-sam's own models (its sam2.1_hiera_small): the paper's LangSAM. conf/'s models.detector
# and models.sam name the same (tests/test_langsam.py checks they agree)
DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-base"
DEFAULT_SAM = "facebook/sam2.1-hiera-small"
MASK_THRESHOLD = 0.0  # on SAM's mask logits, as SAM2ImagePredictor and post_process_masks
BOXES_PER_CALL = 8  # boxes per SAM mask-decoder call: bounds its memory (~40 MB a box)


def detector_prompt(prompt: str) -> str:
    """GroundingDINO's text form: lower case, ending with "." ("Bird" -> "bird.")."""
    text = prompt.strip().lower()
    if not text:
        raise ValueError("the prompt is empty")
    return text if text.endswith(".") else text + "."


def union_mask(
    mask_logits: torch.Tensor, size: tuple[int, int], mask_threshold: float = MASK_THRESHOLD
) -> np.ndarray:
    """One bool H×W mask from SAM's per-box mask logits (N×H×W, or N×1×H×W with
    `multimask_output=False`) at the image's size (H, W): a pixel is in the mask if it is
    in any box's mask (logit > mask_threshold). N = 0 (no box) gives an empty mask."""
    if len(mask_logits) == 0:
        return np.zeros(size, dtype=bool)
    logits = mask_logits.reshape(len(mask_logits), *mask_logits.shape[-2:])
    if tuple(logits.shape[-2:]) != tuple(size):
        raise ValueError(f"mask logits are {tuple(logits.shape[-2:])}, the image is {size}")
    return (logits > mask_threshold).any(dim=0).cpu().numpy()


def best_boxes(boxes: torch.Tensor, scores: torch.Tensor, max_boxes: int) -> torch.Tensor:
    """The `max_boxes` highest-scoring of `boxes` (N×4), best first (0: all of them)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return boxes[order[:max_boxes] if max_boxes else order]


@dataclass
class LangSam:
    """GroundingDINO and SAM 2 with their processors, on one device, in eval mode."""

    detector_processor: GroundingDinoProcessor
    detector: GroundingDinoForObjectDetection
    sam_processor: Sam2Processor
    sam: Sam2Model

    @property
    def device(self) -> torch.device:
        return next(self.detector.parameters()).device

    @torch.no_grad()
    def boxes(
        self,
        images: list[Image.Image],
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        max_boxes: int = 0,
    ) -> list[torch.Tensor]:
        """GroundingDINO's boxes for `prompt` in one batch of images: per image a float
        N×4 tensor (x0, y0, x1, y1 in its pixels), the boxes scoring above box_threshold,
        at most the `max_boxes` highest-scoring (0: all), best first."""
        text = detector_prompt(prompt)
        inputs = self.detector_processor(
            images=images, text=[text] * len(images), padding=True, return_tensors="pt"
        ).to(self.device)
        outputs = self.detector(**inputs)
        results = self.detector_processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=box_threshold,
            text_threshold=text_threshold,
            target_sizes=[image.size[::-1] for image in images],
        )
        return [best_boxes(r["boxes"], r["scores"], max_boxes).float().cpu() for r in results]

    @torch.no_grad()
    def box_masks(
        self,
        images: list[Image.Image],
        boxes: list[torch.Tensor],
        boxes_per_call: int = BOXES_PER_CALL,
    ) -> list[np.ndarray]:
        """SAM 2's masks for the given boxes, united per image (bool H×W at its own size).

        The image encoder runs once for the batch (the images that have a box); the mask
        decoder then runs per image, since images may have different numbers of boxes (the
        processor cannot pad boxes), on `boxes_per_call` boxes at a time."""
        masks = [np.zeros(image.size[::-1], dtype=bool) for image in images]
        with_boxes = [i for i, b in enumerate(boxes) if len(b)]
        if not with_boxes:
            return masks
        inputs = self.sam_processor(images=[images[i] for i in with_boxes], return_tensors="pt")
        embeddings = self.sam.get_image_embeddings(inputs["pixel_values"].to(self.device))
        for row, i in enumerate(with_boxes):
            embedding = [level[row : row + 1] for level in embeddings]
            for start in range(0, len(boxes[i]), boxes_per_call):
                chunk = boxes[i][start : start + boxes_per_call]
                masks[i] |= self._decode(embedding, chunk, images[i].size[::-1])
        return masks

    def _decode(
        self, embedding: list[torch.Tensor], boxes: torch.Tensor, size: tuple[int, int]
    ) -> np.ndarray:
        """The union of SAM 2's masks for `boxes` (N×4) in one image of `size` (H, W),
        given its image embedding: one mask-decoder call."""
        original_size = [list(size)]
        prompt = self.sam_processor(
            input_boxes=[boxes.tolist()], original_sizes=original_size, return_tensors="pt"
        )
        outputs = self.sam(
            image_embeddings=embedding,
            input_boxes=prompt["input_boxes"].to(self.device),
            multimask_output=False,
        )
        logits = self.sam_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), original_size, binarize=False
        )[0]
        return union_mask(logits, size)

    def masks(
        self,
        images: list[Image.Image],
        prompt: str,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        batch_size: int = 8,
        max_boxes: int = 0,
    ) -> list[np.ndarray]:
        """Where `prompt` is in each image: bool H×W at each image's own size, empty where
        GroundingDINO finds no box; from at most `max_boxes` boxes an image (0: all). Images
        of one size are batched together (up to `batch_size`), so no image is padded to a
        neighbour's size."""
        images = [image.convert("RGB") for image in images]
        masks: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.size, []).append(i)
        chunks = [
            indices[start : start + batch_size]
            for indices in by_size.values()
            for start in range(0, len(indices), batch_size)
        ]
        with tqdm(total=len(images), desc="langsam", unit="image") as bar:
            for chunk in chunks:
                batch = [images[i] for i in chunk]
                boxes = self.boxes(batch, prompt, box_threshold, text_threshold, max_boxes)
                for i, mask in zip(chunk, self.box_masks(batch, boxes)):
                    masks[i] = mask
                bar.update(len(chunk))
        return masks


def load_langsam(
    detector: str = DEFAULT_DETECTOR,
    sam: str = DEFAULT_SAM,
    device: str | torch.device = "cpu",
) -> LangSam:
    """GroundingDINO (`models.detector`) and SAM 2 (`models.sam`), each a hub id in the local
    Hugging Face cache or a folder written by `save_pretrained`, in float32 (the processors'
    inputs are float32; thresholded masks want it). A model that is not here raises the
    loaders' ConfigError naming its key."""
    detector_processor, detector_model = load_detector(detector, device)
    sam_processor, sam_model = load_sam(sam, device)
    return LangSam(detector_processor, detector_model, sam_processor, sam_model)
