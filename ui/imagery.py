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
