"""Image decoding: every mode becomes upright 8-bit RGB; bad files raise with their path."""

import io

import numpy as np
import pytest
from PIL import Image

from retrieval import ImageReadError, open_image, to_rgb
from retrieval_testdata import jpeg_bytes, picture


def test_rgba_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    out = to_rgb(image)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)
    half = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    assert half.getpixel((0, 0))[0] == pytest.approx(127, abs=1)


def test_palette_with_transparency_and_la():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.info["transparency"] = 0
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (3, 3), (50, 255))
    assert to_rgb(la).getpixel((1, 1)) == (50, 50, 50)


def test_cmyk_grey_and_bilevel():
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)  # 16-bit PNG; PIL reopens it as I;16 or I
    out = np.asarray(open_image(path))[0, :, 0]
    assert out.tolist() == [0, 128, 255]
    f = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = picture(1, size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert open_image(path).size == (20, 40)


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    (b"", "empty file"),
    (b"this is not an image", "UnidentifiedImageError"),
])
def test_unreadable_files_name_the_path(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        open_image(path)
    assert info.value.path == str(path) and reason in info.value.reason


def test_truncated_jpeg_is_an_error_not_a_grey_image():
    data = jpeg_bytes(picture(2, size=(256, 256)))
    with pytest.raises(ImageReadError, match="my-key"):
        open_image(data[: len(data) // 2], name="my-key")


def test_bytes_and_path_decode_identically(tmp_path):
    data = jpeg_bytes(picture(3))
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert np.array_equal(np.asarray(open_image(data)), np.asarray(open_image(path)))
    assert np.array_equal(np.asarray(open_image(io.BytesIO(data).getvalue())), np.asarray(open_image(path)))
