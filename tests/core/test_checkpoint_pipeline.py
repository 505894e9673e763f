import json

import numpy as np
import pytest
import torch
from PIL import Image

from suti.cascade import Stage
from suti.checkpoint import load_stage, save_stage
from suti.pipeline import SuTIPipeline, new_pipeline
from suti.presets import preset


def _pipe(enc, context=False, sr=True):
    torch.manual_seed(0)
    cfgs = [preset("tiny-base32", text_embed_dim=enc.dim, context=context, stage_name="base")]
    if sr:
        cfgs.append(preset("tiny-sr64", text_embed_dim=enc.dim, stage_name="sr64"))
    pipe = new_pipeline(enc, cfgs)
    for s in pipe.cascade.stages:  # as if trained
        torch.nn.init.normal_(s.unet.out[-1].weight, std=0.05)
    return pipe


def test_stage_save_load_bitwise(tmp_path):
    st = Stage(preset("tiny-sr64", text_embed_dim=8)).eval()
    save_stage(st, tmp_path / "s")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["config.json", "model.safetensors"]
    st2 = load_stage(tmp_path / "s")
    assert st2.config == st.config
    for (k, a), (_, b) in zip(st.unet.state_dict().items(), st2.unet.state_dict().items()):
        assert torch.equal(a, b), k


def test_pipeline_save_load_bitwise_outputs(tmp_path, tiny_text_encoder):
    pipe = _pipe(tiny_text_encoder)
    a = pipe("a red square", num_images=2, steps=2, seed=3, output_type="pt")
    pipe.save_pretrained(tmp_path / "ckpt")
    files = {p.relative_to(tmp_path / "ckpt").as_posix() for p in (tmp_path / "ckpt").rglob("*") if p.is_file()}
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
    assert "base/model.safetensors" in files and "sr64/config.json" in files and "cascade.json" in files
    pipe2 = SuTIPipeline.from_pretrained(tmp_path / "ckpt")
    b = pipe2("a red square", num_images=2, steps=2, seed=3, output_type="pt")
    assert a.shape == (2, 3, 64, 64)
    assert torch.equal(a, b)
    imgs = pipe2("a red square", num_images=2, steps=2, seed=3)
    assert len(imgs) == 2 and imgs[0].size == (64, 64) and imgs[0].mode == "RGB"


def test_start_at_stop_at(tiny_text_encoder):
    pipe = _pipe(tiny_text_encoder)
    low = pipe("a cat", steps=2, seed=1, stop_at="base", output_type="pt")
    assert low.shape[-1] == 32
    up = pipe("a cat", steps=2, seed=1, start_at="sr64", output_type="pt") if False else None  # needs start_images
    emb, mask = pipe.encode_text(["a cat"])
    hi = pipe.cascade.sample(emb, mask, start_at="sr64", start_images=low, steps=2,
                             generator=torch.Generator().manual_seed(0))
    assert hi.shape[-1] == 64 and up is None
    with pytest.raises(ValueError, match="start_images"):
        pipe.cascade.sample(emb, mask, start_at="sr64", steps=2)


def test_untrained_warning(tiny_text_encoder, tmp_path):
    pipe = new_pipeline(tiny_text_encoder, [preset("tiny-base32", text_embed_dim=tiny_text_encoder.dim)])
    with pytest.warns(UserWarning, match="never been trained"):
        pipe.warn_if_untrained()


def _write_images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    rgb = rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png"); paths.append(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png"); paths.append(tmp_path / "p.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "l.jpg"); paths.append(tmp_path / "l.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg"); paths.append(tmp_path / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (50, 30))).astype(np.uint16)).save(tmp_path / "i16.png")
    paths.append(tmp_path / "i16.png")
    im = Image.fromarray(rgb)
    exif = im.getexif(); exif[0x0112] = 6  # rotate 90 on display
    im.save(tmp_path / "exif.jpg", exif=exif); paths.append(tmp_path / "exif.jpg")
    return paths


def test_generate_with_subject_images_any_mode(tmp_path, tiny_text_encoder):
    pipe = _pipe(tiny_text_encoder, context=True, sr=False)
    paths = _write_images(tmp_path)
    for fit in ("center-crop", "pad"):
        out = pipe("a photo of it on the beach", subject_images=paths[:5], subject_texts="a photo of it",
                   num_images=2, steps=2, seed=0, fit=fit)
        assert len(out) == 2 and out[0].size == (32, 32)
    out = pipe("x", subject_images=[paths[5], Image.open(paths[0])], subject_texts=["a", "b"], steps=1, seed=0)
    assert len(out) == 1
    # no exemplars -> plain text-to-image, same as the equivalent call
    assert len(pipe("a dog", steps=1, seed=0)) == 1


def test_bad_exemplar_files_named(tmp_path, tiny_text_encoder):
    pipe = _pipe(tiny_text_encoder, context=True, sr=False)
    good = _write_images(tmp_path)[0]
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = open(good, "rb").read()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    for bad in ("corrupt.jpg", "empty.jpg", "trunc.png", "missing.jpg"):
        with pytest.raises(ValueError, match=bad):
            pipe("x", subject_images=[good, tmp_path / bad], steps=1)
    with pytest.raises(ValueError, match="1 to 5"):
        pipe("x", subject_images=[good] * 6, steps=1)
    with pytest.raises(ValueError, match="subject_texts"):
        pipe("x", subject_images=[good, good], subject_texts=["a"], steps=1)
    t2i = _pipe(tiny_text_encoder, context=False, sr=False)
    with pytest.raises(ValueError, match="context attention"):
        t2i("x", subject_images=[good], steps=1)


def test_from_text_to_image_conversion(tmp_path, tiny_text_encoder):
    t2i = _pipe(tiny_text_encoder, context=False, sr=False)
    t2i.save_pretrained(tmp_path / "t2i")
    suti, report = SuTIPipeline.from_text_to_image(tmp_path / "t2i")
    assert report["growth"] > 0
    a = t2i("a dog", steps=2, seed=0, output_type="pt")
    img = Image.new("RGB", (32, 32), (200, 10, 10))
    # Same guidance (text CFG) on both sides: zero-init context attention leaves the output bit-identical.
    b = suti("a dog", subject_images=[img, img], steps=2, seed=0, guidance_mode="text", output_type="pt")
    assert torch.equal(a, b)
    suti.save_pretrained(tmp_path / "suti")
    cfg = json.loads((tmp_path / "suti" / "base" / "config.json").read_text())
    assert cfg["unet"]["middle_context_attention"] is True


def test_config_typos_and_mismatched_weights_get_clear_errors(tmp_path):
    from suti.config import StageConfig

    d = preset("tiny-base32", text_embed_dim=8).to_dict()
    d["unet"]["dropuot"] = 0.1
    with pytest.raises(ValueError, match="unknown key.*unet.dropuot"):
        StageConfig.from_dict(d)
    save_stage(Stage(preset("tiny-base32", text_embed_dim=8)), tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["unet"]["base_channels"] = 16
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model.safetensors does not match .*config.json.*shape"):
        load_stage(tmp_path / "s")


def test_set_stage_refuses_a_stage_that_does_not_fit(tmp_path, tiny_text_encoder):
    from suti.cli import main

    _pipe(tiny_text_encoder).save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "base" / "model.safetensors").read_bytes()
    save_stage(Stage(preset("tiny-base32", text_embed_dim=tiny_text_encoder.dim + 8, stage_name="base")),
               tmp_path / "wide")
    save_stage(Stage(preset("tiny-base64", text_embed_dim=tiny_text_encoder.dim, stage_name="base")),
               tmp_path / "big")
    assert main(["set-stage", "--model", str(tmp_path / "ckpt"), str(tmp_path / "wide")]) == 2
    assert main(["set-stage", "--model", str(tmp_path / "ckpt"), str(tmp_path / "big")]) == 2  # sr64 wants 32 px
    assert (tmp_path / "ckpt" / "base" / "model.safetensors").read_bytes() == before
    fits = Stage(preset("tiny-base32", text_embed_dim=tiny_text_encoder.dim, stage_name="base"))
    save_stage(fits, tmp_path / "fits")
    assert main(["set-stage", "--model", str(tmp_path / "ckpt"), str(tmp_path / "fits")]) == 0
    assert (tmp_path / "ckpt" / "base" / "model.safetensors").read_bytes() != before
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_unseeded_call_leaves_global_rng_alone(tiny_text_encoder):
    pipe = _pipe(tiny_text_encoder, sr=False)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    pipe("a cat", steps=1)
    assert torch.equal(torch.rand(3), expected)


def test_aug_level_and_per_stage_guidance(tiny_text_encoder):
    pipe = _pipe(tiny_text_encoder)
    run = lambda **kw: pipe("a cat", steps=2, seed=4, output_type="pt", **kw)  # noqa: E731
    default = run()
    assert torch.equal(run(aug_level={"sr64": pipe.cascade.stage("sr64").config.diffusion.noise_aug_sample}), default)
    assert not torch.equal(run(aug_level=0.9), default)
    # guidance per stage: changing only the SR stage's scale leaves the base output alone
    both = run(guidance={"base": 5.0, "sr64": 1.0})
    assert not torch.equal(both, default)
    low_a = pipe("a cat", steps=2, seed=4, output_type="pt", stop_at="base", guidance={"base": 5.0, "sr64": 1.0})
    low_b = pipe("a cat", steps=2, seed=4, output_type="pt", stop_at="base")
    assert torch.equal(low_a, low_b)
    with pytest.raises(ValueError, match="aug_level"):
        run(aug_level=1.5)
