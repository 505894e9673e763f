"""PNG files that carry the settings that made them, readable back with ``read_png_settings``."""
from __future__ import annotations

import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

SETTINGS_KEY = "suti"          # iTXt chunk: the settings as JSON
PARAMETERS_KEY = "parameters"  # iTXt chunk: the same, one readable line per setting


def png_with_settings(image: Image.Image, settings: dict) -> bytes:
    info = PngInfo()
    info.add_itxt(SETTINGS_KEY, json.dumps(settings, ensure_ascii=False, sort_keys=True))
    info.add_itxt(PARAMETERS_KEY, "\n".join(f"{k}: {v}" for k, v in settings.items()))
    info.add_text("Software", "suti serve")
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_settings(data: bytes) -> dict:
    """The settings stored by ``png_with_settings``; ValueError when the PNG has none."""
    with Image.open(io.BytesIO(data)) as im:
        text = im.text.get(SETTINGS_KEY) if hasattr(im, "text") else None
    if text is None:
        raise ValueError("this PNG carries no suti settings")
    return json.loads(text)
