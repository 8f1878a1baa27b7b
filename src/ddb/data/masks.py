"""Binary masks as the DDB stages store them: PNGs where any nonzero pixel is in the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ddb.data.dataset import MAX_SIDE, DataError, decode_fitted, quiet_bomb_warning


def load_mask(
    path: str | Path, shape: tuple[int, int] | None = None, max_side: int = MAX_SIDE
) -> np.ndarray:
    """The mask at `path` as a bool array (H, W).

    Shrunk like its image (`load_image`, the same `fitted_size`, nearest-neighbour so it
    stays binary) when larger than `max_side`. `shape`: the (H, W) of the image the mask
    belongs to; a mask of another size raises, naming both sizes.
    """
    try:
        with quiet_bomb_warning(), Image.open(path) as image:
            mask = np.asarray(decode_fitted(image, max_side, Image.NEAREST).convert("L")) > 0
    except Exception as err:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: unreadable mask ({err}); rebuild it") from err
    if shape is not None and mask.shape != tuple(shape[:2]):
        raise DataError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image "
            f"is {shape[1]}x{shape[0]}; a mask must have its image's size: rebuild the mask "
            "from the image (re-run the stage that wrote it), or resize it with "
            "nearest-neighbour"
        )
    return mask


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
