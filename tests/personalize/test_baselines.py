import numpy as np
import torch
from PIL import Image

from suti.personalize import (DreamBoothConfig, TextualInversionConfig, dreambooth, load_dreambooth,
                              load_token_embeddings, textual_inversion)
from suti.pipeline import SuTIPipeline, new_pipeline
from suti.presets import preset


def _pipe(enc):
    torch.manual_seed(0)
    pipe = new_pipeline(enc, [preset("tiny-base32", text_embed_dim=enc.dim, stage_name="base")])
    torch.nn.init.normal_(pipe.cascade.stages[0].unet.out[-1].weight, std=0.05)
    return pipe


def _subject():
    return [Image.new("RGB", (48, 40), (220, 30 + 10 * i, 20)) for i in range(3)]


def test_dreambooth_trains_saves_stage_only_and_reloads(tmp_path, tiny_text_encoder):
    pipe = _pipe(tiny_text_encoder)
    before = {k: v.clone() for k, v in pipe.cascade.stages[0].unet.state_dict().items()}
    res = dreambooth(pipe, _subject(), "dog", DreamBoothConfig(steps=30, lr=1e-3, batch_size=2, num_prior_images=2,
                                                                prior_sampling_steps=2), progress=False)
    assert res.instance_prompt == "a sks dog"
    assert all(torch.isfinite(torch.tensor(res.losses)))
    # the original pipeline is untouched; the result's base stage changed
    after = pipe.cascade.stages[0].unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(before[k], v) for k, v in res.pipe.cascade.stages[0].unet.state_dict().items())
    res.save_pretrained(tmp_path / "db")
    files = sorted(p.relative_to(tmp_path / "db").as_posix() for p in (tmp_path / "db").rglob("*") if p.is_file())
    assert files == ["dreambooth.json", "stage/config.json", "stage/model.safetensors"]
    loaded = load_dreambooth(pipe, tmp_path / "db")
    a = res.pipe("a sks dog", steps=2, seed=0, output_type="pt")
    b = loaded("a sks dog", steps=2, seed=0, output_type="pt")
    assert torch.equal(a, b)
    # and from the command line, on the untouched checkpoint folder
    pipe.save_pretrained(tmp_path / "pipe")
    assert np.array_equal(_cli_grid(tmp_path, "--dreambooth", str(tmp_path / "db"), prompt="a sks dog"),
                          _grid(res.pipe("a sks dog", num_images=2, steps=2, seed=0)))


def _grid(images):
    from suti.images import make_grid

    return np.asarray(make_grid(images, cols=len(images)))


def _cli_grid(tmp_path, *flags, prompt):
    from suti.cli import main

    out = tmp_path / "cli.png"
    assert main(["sample", "--model", str(tmp_path / "pipe"), "--prompt", prompt, "--num-images", "2", "--steps", "2",
                 "--seed", "0", "--out", str(out), *flags]) == 0
    return np.asarray(Image.open(out).convert("RGB"))


def test_textual_inversion_learns_token_model_frozen(tmp_path, tiny_t5_dir):
    from suti.text import TextEncoder

    enc = TextEncoder.from_pretrained(tiny_t5_dir, max_length=16)
    pipe = _pipe(enc)
    weights = {k: v.clone() for k, v in pipe.cascade.state_dict().items()}
    res = textual_inversion(pipe, _subject(), "dog", TextualInversionConfig(steps=20, lr=5e-2, batch_size=2, token="<s1>"),
                            progress=False)
    assert all(torch.equal(weights[k], v) for k, v in pipe.cascade.state_dict().items())  # model frozen
    init = enc.get_token_embedding("<s1>")
    assert not torch.allclose(res.embedding, init)  # the vector moved
    path = res.save(tmp_path / "ti.safetensors")
    assert set(load_token_embeddings(path)) == {"<s1>"}
    assert path.stat().st_size < 10_000
    a = pipe("a photo of <s1>", steps=2, seed=0, output_type="pt")
    # the embeddings file alone, loaded by the CLI into a checkpoint that never had the token
    clean = _pipe(TextEncoder.from_pretrained(tiny_t5_dir, max_length=16))
    clean.save_pretrained(tmp_path / "pipe")
    assert np.array_equal(_cli_grid(tmp_path, "--textual-inversion", str(path), prompt="a photo of <s1>"),
                          _grid(pipe("a photo of <s1>", num_images=2, steps=2, seed=0)))
    # load into a fresh pipeline from disk: same output
    pipe.save_pretrained(tmp_path / "pipe")
    fresh = SuTIPipeline.from_pretrained(tmp_path / "pipe")
    assert "<s1>" in fresh.token_embeddings
    b = fresh("a photo of <s1>", steps=2, seed=0, output_type="pt")
    assert torch.equal(a, b)
    c = pipe("a photo of dog", steps=2, seed=0, output_type="pt")
    assert not torch.equal(a, c)
