"""Pictures for the pages: PNG bytes and small thumbnails (as bytes or as data URIs for st.dataframe)."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def as_pil(image) -> Image.Image:
    """A PIL image from a PIL image, a uint8 array, or a float [0, 1] radiograph array."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(array)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    as_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_png(image, size: int = 96) -> bytes:
    small = as_pil(image).copy()
    small.thumbnail((size, size))
    return png_bytes(small)


def thumbnail_uri(image, size: int = 96) -> str:
    """A small PNG as a data URI, for st.column_config.ImageColumn."""
    return "data:image/png;base64," + base64.b64encode(thumbnail_png(image, size)).decode()


def downscaled(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A float [0, 1] radiograph no larger than ``max_side`` px, and the factor applied to coordinates.

    Drawing and blending on the display-size copy keeps a 2048 px film as quick to show as a small one.
    """
    scale = min(1.0, max_side / max(pixels.shape[:2]))
    if scale == 1.0:
        return np.asarray(pixels, dtype=np.float32), 1.0
    image = as_pil(pixels)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return small, scale
