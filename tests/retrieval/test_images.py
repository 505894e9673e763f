"""Image decoding: every mode becomes upright 8-bit RGB, the same way in every package; bad files raise
with their path."""

import io

import numpy as np
import pytest
from PIL import Image

import suti.images
from dataset_builder import decode as builder_decode
from dataset_builder.config import DecodeConfig
from retrieval import ImageReadError, open_image, to_rgb
from retrieval_testdata import jpeg_bytes, picture

SIZE = (64, 64)  # the builder's default minimum side


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _palette_with_transparency() -> bytes:
    im = Image.new("P", SIZE, 0)
    im.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    im.paste(1, (0, 0, 32, 64))  # left half opaque colour 1, right half the transparent index 0
    return _encoded(im, "PNG", transparency=0)


def _exif_rotated() -> bytes:
    upright = Image.new("RGB", (96, 64), (255, 255, 255))
    upright.paste((255, 0, 0), (0, 0, 16, 16))  # red mark top-left when displayed
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; displayed turned 90 degrees clockwise
    return jpeg_bytes_exif(upright.transpose(Image.Transpose.ROTATE_90), exif)


def jpeg_bytes_exif(image, exif) -> bytes:
    return _encoded(image, "JPEG", quality=95, exif=exif)


def _flat(mode, value, dtype=None) -> Image.Image:
    return Image.fromarray(np.full(SIZE, value, dtype), mode) if dtype is not None else Image.new(mode, SIZE, value)


# (file bytes, pixel (x, y), expected RGB there, tolerance); the expected values are the conventions to_rgb
# documents: alpha composited on white, high bit depth scaled by a fixed white level, EXIF applied.
MODES = {
    "RGBA transparent": (_encoded(Image.new("RGBA", SIZE, (10, 20, 30, 0)), "PNG"), (5, 5), (255, 255, 255), 0),
    "RGBA half": (_encoded(Image.new("RGBA", SIZE, (0, 0, 0, 128)), "PNG"), (5, 5), (127, 127, 127), 1),
    "P transparency": (_palette_with_transparency(), (50, 5), (255, 255, 255), 0),
    "P opaque": (_palette_with_transparency(), (5, 5), (200, 30, 10), 0),
    "L": (_encoded(_flat("L", 77), "PNG"), (5, 5), (77, 77, 77), 0),
    "LA": (_encoded(Image.new("LA", SIZE, (50, 255)), "PNG"), (5, 5), (50, 50, 50), 0),
    "I;16": (_encoded(Image.fromarray(np.full(SIZE, 32768, np.uint16)), "PNG"), (5, 5), (128, 128, 128), 0),
    "I (16-bit data)": (_encoded(_flat("I", 32768, np.int32), "TIFF"), (5, 5), (128, 128, 128), 0),
    "I (8-bit data)": (_encoded(_flat("I", 200, np.int32), "TIFF"), (5, 5), (200, 200, 200), 0),
    "F flat 0.5": (_encoded(_flat("F", 0.5, np.float32), "TIFF"), (5, 5), (128, 128, 128), 0),
    "F in [-1, 1]": (_encoded(Image.fromarray(np.tile(np.linspace(-1, 1, 64, dtype=np.float32), (64, 1)), "F"),
                              "TIFF"), (63, 5), (255, 255, 255), 0),
    "CMYK": (_encoded(Image.new("RGB", SIZE, (40, 160, 220)).convert("CMYK"), "JPEG", quality=95), (5, 5),
             (40, 160, 220), 12),
    "YCbCr": (_encoded(Image.new("RGB", SIZE, (40, 160, 220)).convert("YCbCr"), "TIFF"), (5, 5),
              (40, 160, 220), 3),
    "EXIF rotation": (_exif_rotated(), (5, 5), (255, 0, 0), 40),
}


def _via_suti(data: bytes) -> Image.Image:
    return suti.images.to_rgb(suti.images.open_image(data))


def _via_builder(data: bytes) -> Image.Image:
    return builder_decode.decode_image(data, DecodeConfig(min_side=16))[0]


@pytest.mark.parametrize("case", sorted(MODES))
def test_every_mode_becomes_the_same_rgb_in_every_package(case):
    data, xy, expected, tol = MODES[case]
    got = {"retrieval": open_image(data), "suti": _via_suti(data), "dataset_builder": _via_builder(data)}
    for package, image in got.items():
        assert image.mode == "RGB", (case, package)
        assert image.size == (96, 64) if case == "EXIF rotation" else image.size == SIZE, (case, package)
        assert np.abs(np.asarray(image.getpixel(xy), int) - expected).max() <= tol, (case, package,
                                                                                      image.getpixel(xy))
    arrays = [np.asarray(im, np.int16) for im in got.values()]
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:]), case  # one conversion, identical pixels


def test_one_implementation():
    assert suti.images.to_rgb is to_rgb and builder_decode.to_rgb is to_rgb


def test_in_memory_modes_without_a_file_format():
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("PA", (2, 2), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    nan = Image.fromarray(np.array([[np.nan, 0.25, 1.0]], np.float32), "F")
    assert np.asarray(to_rgb(nan))[0, :, 0].tolist() == [0, 64, 255]


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
