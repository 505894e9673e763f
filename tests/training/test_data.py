"""Data loading: img2dataset shards, caption folders, ICL shards, skips, determinism, resume, rank split."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from training_helpers import (COLOURS, colour_folder, corrupt_jpeg, icl_members, image_bytes, mean_rgb,
                              odd_mode_images, solid, t2i_members, write_tar)

from suti.training.data import BatchStream, DataError, DataPosition, expand_sources, make_loader


def _all(stream, n_batches):
    out = []
    for i, b in enumerate(stream):
        out.append(b)
        if i + 1 == n_batches:
            break
    return out


@pytest.fixture(scope="module")
def t2i_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    odd = odd_mode_images()
    shard0 = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        shard0 += t2i_members(f"{i:09d}", image_bytes(solid(rgb)), f"a {name} square")
    shard0 += t2i_members("000000010", corrupt_jpeg(), "a broken picture")
    shard0 += t2i_members("000000011", odd["rgba"], "half transparent red", ext="png")
    shard1 = []
    shard1 += t2i_members("000000012", odd["p"], "a palette blue", ext="png")
    shard1 += t2i_members("000000013", odd["i16"], "a grey 16 bit image", ext="png")
    shard1 += t2i_members("000000014", odd["cmyk"], "a cmyk red")
    shard1 += t2i_members("000000015", image_bytes(solid((0, 0, 0))), None,
                          meta={"url": "u", "caption": "caption only in json", "page_url": "p"})
    shard1 += t2i_members("000000016", image_bytes(solid((0, 0, 0))), None, meta={"url": "u"})  # no caption
    shard1 += t2i_members("000000017", None, "caption without an image")
    shard1 += t2i_members("000000018", image_bytes(solid((5, 5, 5))), "   ")  # empty caption
    write_tar(root / "00000.tar", shard0)
    write_tar(root / "00001.tar", shard1)
    return root


def test_img2dataset_shards_decode_and_count_skips(t2i_shards, caplog):
    stream = BatchStream([str(t2i_shards / "{00000..00001}.tar")], "text_to_image", 16, batch_size=13,
                         shuffle=False)
    (batch,) = _all(stream, 1)  # the 13 raw records of one epoch
    keys = batch["keys"]
    assert len(keys) == 9 and len(batch["skipped"]) == 4
    assert batch["images"].shape == (9, 3, 16, 16)
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    caps = dict(zip(keys, batch["captions"]))
    assert caps["000000015"] == "caption only in json"
    skipped = {k.split(":")[-1]: r for k, r in batch["skipped"]}
    assert set(skipped) >= {"000000010", "000000016", "000000017", "000000018"}
    assert "cannot decode image" in skipped["000000010"] and "000000010.jpg" in skipped["000000010"]
    assert "0x" not in skipped["000000010"]  # a reason, not an object repr
    assert "no caption" in skipped["000000016"]
    assert "no image member" in skipped["000000017"]
    assert "empty" in skipped["000000018"]
    assert "000000010" not in keys
    # Odd modes decode to the right colours.
    img = {k: batch["images"][i] for i, k in enumerate(keys)}
    rgba = mean_rgb(img["000000011"])  # half white, half red
    assert rgba[0] > 240 and 100 < rgba[1] < 150
    assert np.allclose(mean_rgb(img["000000012"]), (0, 0, 255), atol=3)
    assert np.allclose(mean_rgb(img["000000013"]), (128, 128, 128), atol=2)
    cmyk = mean_rgb(img["000000014"])
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60
    assert np.allclose(mean_rgb(img["000000000"]), COLOURS["red"], atol=4)
    # The trainer-side counter records key + reason and logs them.
    from suti.training.data import SkipStats

    stats = SkipStats()
    with caplog.at_level("WARNING", logger="suti.training"):
        for k, r in batch["skipped"]:
            stats.add(k, r)
    assert stats.total == 4 and stats.by_reason["no caption"] == 1
    assert any("000000010" in r.getMessage() for r in caplog.records)
    assert json.loads(json.dumps(stats.to_dict()))["total"] == stats.total


def test_folder_with_txt_and_jsonl(tmp_path):
    folder = colour_folder(tmp_path / "f")
    (folder / "orphan.png").write_bytes(image_bytes(solid((1, 2, 3)), "PNG"))  # no caption file
    (folder / "broken.jpg").write_bytes(corrupt_jpeg())
    (folder / "broken.txt").write_text("a broken one")
    (folder / "sub").mkdir()
    (folder / "sub" / "cmyk.jpg").write_bytes(odd_mode_images()["cmyk"])
    (folder / "sub" / "cmyk.txt").write_text("a cmyk red\n")
    stream = BatchStream([str(folder)], "text_to_image", 8, batch_size=6, shuffle=False)
    assert [k for k, _ in stream.index_skips] == [str(folder / "orphan.png")]
    (batch,) = _all(stream, 1)
    assert sorted(batch["keys"]) == sorted(["blue", "green", "red", "sub/cmyk", "yellow"])
    assert batch["captions"][batch["keys"].index("sub/cmyk")] == "a cmyk red"
    assert len(batch["skipped"]) == 1 and "broken" in batch["skipped"][0][0]

    jf = tmp_path / "j"
    jf.mkdir()
    solid((0, 255, 0)).save(jf / "g.png")
    rows = [{"file": "g.png", "caption": "green"}, {"file": "missing.png", "caption": "x"}, "not json"]
    (jf / "captions.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    s2 = BatchStream([str(jf)], "text_to_image", 8, batch_size=1, shuffle=False)
    assert len(s2.index_skips) == 2
    (b2,) = _all(s2, 1)
    assert b2["captions"] == ["green"]


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        expand_sources([str(tmp_path / "nope.tar")])
    with pytest.raises(DataError, match="matches no files"):
        expand_sources([str(tmp_path / "*.tar")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable"):
        expand_sources([str(tmp_path / "empty")])


@pytest.fixture(scope="module")
def icl_shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("icl")
    red, blue = image_bytes(solid(COLOURS["red"])), image_bytes(solid(COLOURS["blue"]))
    members = []
    members += icl_members("c1_0000", red, "a red dog on the beach", [(red, "a red dog")])
    members += icl_members("c2_0000", blue, "a blue cup in snow", [(blue, f"a blue cup {i}") for i in range(3)])
    members += icl_members("c3_0000", red, "a red toy in space", [(red, f"toy {i}") for i in range(5)])
    members += icl_members("c4_0000", red, "bad exemplar", [(corrupt_jpeg(), "broken"), (blue, "ok")])
    members += icl_members("c5_0000", None, "no target", [(red, "x")])
    write_tar(root / "icl-000000.tar", members)
    return root


def test_icl_shard_variable_k(icl_shard):
    stream = BatchStream([str(icl_shard / "icl-*.tar")], "in_context", 16, batch_size=5, shuffle=False)
    (b,) = _all(stream, 1)
    assert b["keys"] == ["c1_0000", "c2_0000", "c3_0000", "c4_0000"]
    assert b["exemplar_images"].shape == (4, 5, 3, 16, 16)
    assert b["exemplar_mask"].sum(1).tolist() == [1, 3, 5, 1]
    assert b["exemplar_captions"][0] == ["a red dog", "", "", "", ""]
    assert b["exemplar_captions"][3][0] == "ok"  # the corrupt ex0 was dropped, ex1 kept
    assert b["captions"][1] == "a blue cup in snow"
    assert np.allclose(mean_rgb(b["exemplar_images"][1, 2]), COLOURS["blue"], atol=4)
    assert (b["exemplar_images"][0, 1:] == 0).all()
    reasons = dict(b["skipped"])
    assert any(k.endswith("c4_0000.ex0") and "exemplar dropped" in r for k, r in reasons.items())
    assert any(k.endswith("c5_0000") and "no image member" in r for k, r in reasons.items())
    s3 = BatchStream([str(icl_shard)], "in_context", 16, batch_size=5, shuffle=False, max_exemplars=3)
    assert _all(s3, 1)[0]["exemplar_images"].shape[1] == 3


def _keys(stream, n):
    return [k for b in _all(stream, n) for k in b["keys"]]


def test_order_is_seeded_per_epoch_and_resumes_exactly(tmp_path):
    shards = []
    for s in range(3):
        members = []
        for i in range(7):
            members += t2i_members(f"s{s}_{i:03d}", image_bytes(solid((i * 30, s * 80, 0)), "PNG"), f"c {s} {i}",
                                   ext="png")
        shards.append(str(write_tar(tmp_path / f"{s:05d}.tar", members)))
    kw = dict(task="text_to_image", image_size=8, batch_size=4, shuffle_buffer=5, seed=3)
    a = _keys(BatchStream(shards, **kw), 12)  # 48 records = 2 epochs + 6
    assert a == _keys(BatchStream(shards, **kw), 12)
    assert sorted(a[:21]) == sorted(a[21:42])  # each epoch holds every record once
    assert a[:21] != a[21:42]  # ...in a different order
    assert a != _keys(BatchStream(shards, **{**kw, "seed": 4}), 12)
    # Resume from the position of batch 6 (mid-epoch 1) continues identically.
    batches = _all(BatchStream(shards, **kw), 12)
    pos = batches[5]["position"]
    resumed = _all(BatchStream(shards, **kw, start=DataPosition(pos["epoch"], pos["index"])), 6)
    assert [b["keys"] for b in resumed] == [b["keys"] for b in batches[6:]]
    # DataLoader workers do not change the sequence.
    loader = make_loader(BatchStream(shards, **kw), num_workers=2)
    got = []
    for b in loader:
        got.append(b["keys"])
        if len(got) == 12:
            break
    assert got == [b["keys"] for b in batches]


def test_ranks_split_deterministically(tmp_path):
    shards = []
    for s in range(4):
        members = []
        for i in range(3):
            members += t2i_members(f"s{s}_{i}", image_bytes(solid((i, s, 0)), "PNG"), "x", ext="png")
        shards.append(str(write_tar(tmp_path / f"{s}.tar", members)))
    kw = dict(task="text_to_image", image_size=8, batch_size=6, shuffle_buffer=4, seed=0, world=2)
    r0 = _keys(BatchStream(shards, rank=0, **kw), 1)
    r1 = _keys(BatchStream(shards, rank=1, **kw), 1)
    assert not set(r0) & set(r1) and len(set(r0) | set(r1)) == 12
    assert {k.split("_")[0] for k in r0}.isdisjoint({k.split("_")[0] for k in r1})  # whole shards per rank
    # One shard, two ranks: records are dealt round-robin instead.
    one = [shards[0]]
    a = _keys(BatchStream(one, rank=0, **{**kw, "batch_size": 1}), 2)
    b = _keys(BatchStream(one, rank=1, **{**kw, "batch_size": 1}), 1)
    assert set(a) | set(b) == {"s0_0", "s0_1", "s0_2"} and not set(a) & set(b)
    # A folder is dealt by index after a shared permutation.
    folder = colour_folder(tmp_path / "f")
    f0 = _keys(BatchStream([str(folder)], rank=0, **{**kw, "batch_size": 2}), 1)
    f1 = _keys(BatchStream([str(folder)], rank=1, **{**kw, "batch_size": 2}), 1)
    assert sorted(f0 + f1) == sorted(COLOURS)


def test_truncated_shard_is_reported(tmp_path):
    members = []
    for i in range(4):
        members += t2i_members(f"{i:03d}", image_bytes(solid((i * 50, 0, 0)), "PNG"), f"c{i}", ext="png")
    path = write_tar(tmp_path / "t.tar", members)
    data = path.read_bytes()
    path.write_bytes(data[:6800])  # 512-byte header + 512-byte data per member: cut inside record 002
    # 8 raw records: the readable head of the shard (000, 001, and 002 whose png was read whole before the
    # tear, without its caption), then again from the next epoch.
    (b,) = _all(BatchStream([str(path)], "text_to_image", 8, batch_size=8, shuffle=False), 1)
    assert b["keys"] == ["000", "001", "000", "001", "000", "001"]
    assert sum(k.startswith(str(path)) and r.startswith("truncated (") and "after 3 samples" in r
               for k, r in b["skipped"]) == 2, b["skipped"]
    assert sum(k.endswith(":002") and "no caption" in r for k, r in b["skipped"]) == 2, b["skipped"]
    # (2 tears, not 3: the 3rd epoch's error surfaces only when a 9th record is pulled, for the next batch)
    assert torch.isfinite(b["images"]).all()
