"""Exemplar images of any mode decode to the right pixels, not just the right shape."""
import numpy as np
import pytest
import torch
from PIL import Image

from suti.images import ImageLoadError, load_image_tensor, open_image


def _ref(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rgb = np.kron(rgb[::8, ::8], np.ones((8, 8, 1), np.uint8))  # 8 px blocks: JPEG and resampling stay close
    return Image.fromarray(rgb)


def _tensor(src, fit="pad"):
    return load_image_tensor(src, 32, fit)


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "YCbCr", "RGB16"])
def test_colour_modes_match_rgb(tmp_path, mode):
    im = _ref(tmp_path)
    ref = _tensor(im)
    if mode == "RGB16":  # 16-bit RGB(A) PNG, as scanners and HDR tools write them
        path = tmp_path / "rgb16.tif"
        arr = np.asarray(im, np.uint16) * 257
        Image.fromarray(arr[..., 0]).save(path)  # PIL writes 16-bit grey; compare its grey
        got, ref = _tensor(path), _tensor(im.getchannel(0).convert("RGB"))
    else:
        path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'tif' if mode == 'YCbCr' else 'png'}"
        im.convert(mode).save(path, **({"quality": 95} if mode == "CMYK" else {}))
        got = _tensor(path)
    tol = 0.06 if mode == "CMYK" else 0.03 if mode == "P" else 0.01
    assert float((got - ref).abs().mean()) < tol, mode


def test_grey_and_high_bit_depth_keep_their_brightness(tmp_path):
    grey = np.full((16, 16), 0.5, np.float32)
    Image.fromarray(grey, "F").save(tmp_path / "f.tif")  # float in [0, 1]
    Image.fromarray(np.full((16, 16), 32768, np.int32), "I").save(tmp_path / "i.tif")  # 16-bit data in a 32-bit mode
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "i16.png")
    Image.fromarray(np.full((16, 16), 128, np.uint8), "L").save(tmp_path / "l.png")
    for name in ("f.tif", "i.tif", "i16.png", "l.png"):
        assert abs(float(_tensor(tmp_path / name).mean())) < 0.01, name  # mid-grey stays mid-grey


def test_exif_orientation_is_applied(tmp_path):
    im = _ref(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    im.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "exif.jpg", exif=exif, quality=95)
    got = _tensor(tmp_path / "exif.jpg")
    assert float((got - _tensor(im)).abs().mean()) < 0.05  # JPEG error only
    assert float((got - _tensor(im.transpose(Image.Transpose.ROTATE_90))).abs().mean()) > 0.3  # vs. ignoring EXIF


def test_alpha_composites_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    assert torch.allclose(_tensor(tmp_path / "clear.png"), torch.ones(3, 32, 32))


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
