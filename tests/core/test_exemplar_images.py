"""Exemplar images: unreadable ones are named. (Every colour mode is tested once, for all packages, in
tests/retrieval/test_images.py: suti uses retrieval's to_rgb.)"""
import numpy as np
import pytest
from PIL import Image

from suti.images import ImageLoadError, load_image_tensor, open_image


def _ref(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rgb = np.kron(rgb[::8, ::8], np.ones((8, 8, 1), np.uint8))  # 8 px blocks: JPEG and resampling stay close
    return Image.fromarray(rgb)


def _tensor(src, fit="pad"):
    return load_image_tensor(src, 32, fit)


def test_truncated_lazy_pil_image_is_named(tmp_path):
    _ref(tmp_path).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    lazy = Image.open(tmp_path / "trunc.png")  # PIL decodes on first use
    with pytest.raises(ImageLoadError, match="trunc.png"):
        open_image(lazy)
    with pytest.raises(ImageLoadError, match=r"subject_images\[1\]"):
        load_image_tensor(data[:100], 8, name="subject_images[1]")
    with pytest.raises(ImageLoadError, match=r"^<bytes>: not an image format PIL can read$"):
        open_image(b"<html>not an image</html>")  # the reason, not a BytesIO repr
