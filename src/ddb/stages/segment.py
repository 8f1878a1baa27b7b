"""segment: masks of the causal component (`segment.prompt`, e.g. "bird") in the selected images.

The language segmenter is CLIPSeg by default (`models.segmenter`: the small offline one, or
`CIDAS/clipseg-rd64-refined`), or with `segment.source: langsam` the paper's LangSAM
(GroundingDINO `models.detector` boxes above `segment.box_threshold`, at most
`segment.max_boxes` of them, then the union of their SAM 2 `models.sam` masks; see
ddb.models.langsam). Every selected image (sources and
inversion images) is segmented at its own size; the mask (CLIPSeg: the probability above
`segment.threshold`) is grown by `segment.dilate` px, and with `segment.mask_shape: box`
replaced by its bounding box (an outline carries the source's shape into the new image; a
box does not). With
`segment.source: truth` (a control) the dataset's own masks replace the segmenter's. A mask
covering less than `segment.min_area` of the image is "no detection": generate skips that
source and the count is reported. Where the dataset has ground-truth masks (a
`mask_filename` column, as the embedded benchmark has), the IoU of the thresholded mask
before dilation is reported per image.

Writes models/segment/: masks/NNNNN.png (one per row of selected.csv), segments.csv
(selected.csv plus mask_filename, detected, area, iou) and summary.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ddb import paths
from ddb.config import Config, SegmentConfig
from ddb.data.corpus import bounding_box, dilate
from ddb.data.dataset import DataError, load_image, load_indexed
from ddb.data.masks import load_mask, save_mask
from ddb.models.langsam import load_langsam
from ddb.models.loaders import load_segmenter
from ddb.models.segmenter import mask_iou, segment
from ddb.training import resolve_device
from ddb.utils import atomic_path, write_json

log = logging.getLogger(__name__)


def run(config: Config) -> None:
    cfg = config.segment
    root = Path(config.data.root)
    selected = pd.read_csv(paths.SELECT / "selected.csv")
    metadata = load_indexed(config.data)[1].set_index("img_filename")
    if cfg.source == "truth":
        raw = true_masks(root, metadata, selected.img_filename)
    elif cfg.source == "langsam":
        images = [load_image(root / name) for name in selected.img_filename]
        langsam = load_langsam(config.models.detector, config.models.sam, resolve_device("auto"))
        raw = langsam.masks(
            images,
            cfg.prompt,
            cfg.box_threshold,
            cfg.text_threshold,
            cfg.batch_size,
            cfg.max_boxes,
        )
    else:
        images = [np.asarray(load_image(root / name)) for name in selected.img_filename]
        processor, model = load_segmenter(config.models.segmenter, resolve_device("auto"))
        raw = segment_images(processor, model, images, cfg.prompt, cfg.threshold, cfg.batch_size)
    table = selected.copy()
    table["mask_filename"] = [f"masks/{i:05d}.png" for i in range(len(table))]
    table["area"] = [float(m.mean()) for m in raw]
    table["detected"] = table["area"] >= cfg.min_area
    table["iou"] = ground_truth_iou(root, metadata, selected.img_filename, raw)
    with atomic_path(paths.SEGMENT) as out:
        (out / "masks").mkdir(parents=True)
        for name, mask, detected in zip(table.mask_filename, raw, table.detected):
            final = shape_mask(mask, cfg) if detected else np.zeros_like(mask)
            save_mask(final, out / name)
        table.to_csv(out / "segments.csv", index=False)
        summary = segment_summary(table)
        write_json(out / "summary.json", summary)
    log.info("segment: %s", summary)


def segment_images(processor, model, images: list[np.ndarray], prompt, threshold, batch_size):
    """Masks at each image's own size; images of one size are segmented together."""
    masks: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        batch = np.stack([images[i] for i in indices])
        for i, mask in zip(
            indices, segment(processor, model, batch, prompt, threshold, batch_size)
        ):
            masks[i] = mask
    return masks


def true_masks(root: Path, metadata: pd.DataFrame, filenames) -> list[np.ndarray]:
    """The dataset's own masks (its `mask_filename` column), for the ground-truth control."""
    if "mask_filename" not in metadata.columns:
        raise DataError(
            f"{root}/metadata.csv has no mask_filename column, so segment.source: truth has no "
            "masks to read; use segment.source: clipseg (or langsam)"
        )
    return [load_mask(root / metadata.at[name, "mask_filename"]) for name in filenames]


def shape_mask(mask: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    """The region generate repaints: the dilated outline, or its bounding box."""
    grown = dilate(mask, cfg.dilate)
    return bounding_box(grown, margin=0) if cfg.mask_shape == "box" else grown


def ground_truth_iou(root: Path, metadata: pd.DataFrame, filenames, masks) -> list[float]:
    """IoU against the dataset's own masks where it has them (NaN elsewhere)."""
    if "mask_filename" not in metadata.columns:
        return [float("nan")] * len(masks)
    ious = []
    for name, mask in zip(filenames, masks):
        truth = load_mask(root / metadata.at[name, "mask_filename"])
        ious.append(mask_iou(mask, truth) if truth.shape == mask.shape else float("nan"))
    return ious


def segment_summary(table: pd.DataFrame) -> dict:
    summary = {
        "images": len(table),
        "detected": int(table.detected.sum()),
        "skipped_sources": int((~table.detected & (table.role == "source")).sum()),
        "mean_area": float(table.area.mean()),
    }
    if table.iou.notna().any():
        summary["iou"] = float(table.iou.mean())
    return summary
