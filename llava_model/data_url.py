"""``data:`` URLs for images, as OpenAI-style chat messages carry them inline."""

import base64
import io
from pathlib import Path

MIME_BY_SUFFIX = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "gif": "gif"}


def image_data_url(image) -> str:
    """A ``data:`` URL for a PIL image (encoded as PNG) or an image file (its bytes as they are)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        mime = MIME_BY_SUFFIX.get(path.suffix.lower().lstrip("."), "png")
        return f"data:image/{mime};base64," + base64.b64encode(path.read_bytes()).decode()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
