import io

import numpy as np
import pytest
from PIL import Image

from dataset_builder.config import DecodeConfig, GroupConfig
from dataset_builder.counts import Counts
from dataset_builder.decode import Rejected, decode_batch, decode_image
from dataset_builder.records import RawRecord
from dataset_builder.testing import bad_inputs, jpeg_bytes, subject_image

CFG = DecodeConfig(max_pixels=20_000_000, min_side=64, max_aspect=3.0, max_side=1024)
EXPECTED_REASON = {"garbage": "not_an_image"}


@pytest.mark.parametrize("name", sorted(bad_inputs()))
def test_bad_inputs_are_refused_with_their_reason(name):
    data = bad_inputs()[name]
    with pytest.raises(Rejected) as e:
        decode_image(data, CFG)
    assert e.value.reason == EXPECTED_REASON.get(name, name)


def test_batch_counts_every_drop_and_never_raises(tmp_path):
    raws = [RawRecord(key=n, source="t", page_url="https://e.com/p", image_url=n, text="", image_bytes=d)
            for n, d in bad_inputs().items()]
    raws.append(RawRecord(key="nopage", source="t", page_url=None, image_url="x", text="", image_bytes=b"x"))
    raws.append(RawRecord(key="badpage", source="t", page_url="https://", image_url="x", text="", image_bytes=b"x"))
    raws.append(RawRecord(key="noimage", source="t", page_url="https://e.com/p", image_url="x", text=""))
    raws.append(RawRecord(key="missing", source="t", page_url="https://e.com/p", image_url="x", text="",
                          image_path=str(tmp_path / "nope.jpg")))
    ok_path = tmp_path / "ok.png"
    subject_image("quix", 0).save(ok_path)
    raws.append(RawRecord(key="ok", source="t", page_url="https://e.com/p", image_url="x", text=" a  b ",
                          image_path=str(ok_path)))
    counts = Counts()
    out = decode_batch(raws, CFG, GroupConfig(), counts)
    assert [r.key for r in out] == ["ok"] and out[0].text == "a b"
    dropped = {k.split(".")[-1]: v for k, v in counts.items() if k.startswith("decode.dropped.")}
    assert dropped == {"bad_aspect": 1, "corrupt": 1, "empty": 1, "not_an_image": 2, "too_many_pixels": 1,
                       "too_small": 1, "truncated": 1, "no_page_url": 1, "bad_page_url": 1, "no_image": 1,
                       "missing_file": 1}
    assert counts["decode.in"] == len(raws) and counts["decode.out"] == 1


def _decoded_rgb(data: bytes) -> np.ndarray:
    im, _ = decode_image(data, CFG)
    assert im.mode == "RGB"
    return np.asarray(im, dtype=np.int16)


def test_exif_rotated_jpeg_is_turned_and_not_passed_through():
    src = Image.new("RGB", (120, 80), (255, 255, 255))
    src.paste((255, 0, 0), (0, 0, 20, 20))  # red mark top-left
    stored = src.transpose(Image.ROTATE_90)  # stored 80x120, displayed upright via orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    im, unchanged = decode_image(jpeg_bytes(stored, quality=95, exif=exif), CFG)
    assert im.size == (120, 80) and not unchanged
    assert np.asarray(im)[5, 5, 0] > 200 and np.asarray(im)[5, 5, 1] < 60


def test_plain_rgb_jpeg_is_passed_through_and_big_ones_shrink():
    small = jpeg_bytes(subject_image("quix", 2, size=(200, 150)))
    _, unchanged = decode_image(small, CFG)
    assert unchanged
    big = jpeg_bytes(Image.new("RGB", (3000, 1500), (10, 200, 30)))
    im, unchanged = decode_image(big, CFG)
    assert not unchanged and max(im.size) == 1024 and im.size == (1024, 512)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (80, 80), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    got = _decoded_rgb(buf.getvalue())
    assert got[0, 0, 0] > 200 and got[0, 0, 1] < 50
