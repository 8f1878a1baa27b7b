"""Binary masks as the DDB stages store them: PNGs where any nonzero pixel is in the mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ddb.data.waterbirds import DataError


def load_mask(path: str | Path) -> np.ndarray:
    """The mask at `path` as a bool array (H, W)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > 0
    except Exception as err:
        raise DataError(f"{path}: unreadable mask ({err})") from err


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
