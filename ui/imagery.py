"""Pictures for the pages: PNG bytes, data-URI thumbnails."""
from __future__ import annotations

import base64
import io



def png_bytes(image) -> bytes:
    """PNG bytes of a PIL image or a uint8 array."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_uri(image, size: int = 96) -> str:
    """A small PNG as a data URI, for st.dataframe's ImageColumn."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    image = image.copy()
    image.thumbnail((size, size))
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
