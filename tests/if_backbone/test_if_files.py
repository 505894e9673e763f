"""SuTI-IF stage folders (new layers only, base fingerprint) and mixing with the project's stages."""
import pytest
import torch

pytest.importorskip("diffusers")

from if_helpers import TEXT_DIM, TEXT_LEN, exemplars  # noqa: E402

from suti.cascade import Cascade, Stage  # noqa: E402
from suti.config import StageConfig, UNetConfig  # noqa: E402
from suti.if_backbone.files import (CONTEXT_WEIGHTS, from_if, is_if_stage_folder, load_if_stage,  # noqa: E402
                                    save_if_stage, weights_fingerprint)
from suti.sampling import Guidance  # noqa: E402


@pytest.fixture
def base_folder(tmp_path, tiny_one):
    """A local IF-style model folder (``unet/`` + ``scheduler/``) with random tiny weights."""
    from diffusers import DDPMScheduler

    folder = tmp_path / "IF-tiny"
    tiny_one.save_pretrained(folder / "unet")
    DDPMScheduler(variance_type="learned_range", beta_schedule="squaredcos_cap_v2", thresholding=True,
                  dynamic_thresholding_ratio=0.95, sample_max_value=1.5).save_pretrained(folder / "scheduler")
    return folder


def _train_a_little(stage):
    """Make the new layers non-zero so a round trip is a real test."""
    with torch.no_grad():
        for p in stage.unet.context_attn.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)


def _sample(stage, seed=0):
    text = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    return stage.sample(text, torch.ones(2, TEXT_LEN, dtype=torch.bool), exemplars=exemplars(),
                        guidance=Guidance(3.0, "interleaved"), steps=3, generator=torch.Generator().manual_seed(seed))


def test_round_trip_is_exact_and_ships_no_if_weights(tmp_path, base_folder, null_text):
    stage = from_if(base_folder, null_text_emb=null_text, context_head_dim=16)
    assert stage.config.scheduler["sample_max_value"] == 1.5 and stage.config.base_fingerprint.startswith("sha256:")
    _train_a_little(stage)
    out = save_if_stage(stage, tmp_path / "ckpt" / "base")
    assert is_if_stage_folder(out)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", CONTEXT_WEIGHTS]
    from safetensors.torch import load_file

    saved = load_file(str(out / CONTEXT_WEIGHTS))
    n_saved = sum(v.numel() for v in saved.values())
    assert n_saved == stage.unet.num_context_parameters() + stage.null_text_emb.numel()  # no U-Net weight in it

    loaded = load_if_stage(out)
    # Loaded tensors can sit at another memory alignment (another CPU matmul path): compare on clones.
    with torch.no_grad():
        for p in loaded.parameters():
            p.data = p.data.clone()
    a, b = stage.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.to_dict() == stage.config.to_dict()
    assert torch.equal(_sample(stage), _sample(loaded))


def test_load_refuses_a_base_with_other_weights(tmp_path, base_folder, null_text, tiny_one):
    stage = from_if(base_folder, null_text_emb=null_text, context_head_dim=16)
    out = save_if_stage(stage, tmp_path / "ckpt" / "base")
    with torch.no_grad():
        tiny_one.conv_in.weight.add_(0.01)  # a different (e.g. fine-tuned) base
    tiny_one.save_pretrained(base_folder / "unet")
    assert weights_fingerprint(tiny_one) != stage.config.base_fingerprint
    with pytest.raises(ValueError, match="fingerprint"):
        load_if_stage(out)


def test_whole_unet_training_saves_the_unet_too(tmp_path, base_folder, null_text):
    stage = from_if(base_folder, null_text_emb=null_text, context_head_dim=16).train_whole_unet()
    with torch.no_grad():
        stage.unet.unet.conv_out.bias.add_(0.5)
    out = save_if_stage(stage, tmp_path / "full")
    assert (out / "unet.safetensors").is_file()
    loaded = load_if_stage(out)
    assert torch.equal(loaded.unet.unet.conv_out.bias, stage.unet.unet.conv_out.bias)


def test_bad_folders_give_clear_errors(tmp_path, base_folder, null_text):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_if_stage(tmp_path / "nothing")
    stage = from_if(base_folder, null_text_emb=null_text, context_head_dim=16)
    out = save_if_stage(stage, tmp_path / "s")
    (out / CONTEXT_WEIGHTS).write_bytes(b"torn")
    with pytest.raises(ValueError, match="context.safetensors"):
        load_if_stage(out)
    with pytest.raises(OSError, match="cannot load the IF U-Net"):
        from_if(tmp_path / "no-such-model", null_text_emb=null_text, local_files_only=True)


def _project_sr(lowres: int, size: int) -> Stage:
    cfg = StageConfig(name="sr", lowres_size=lowres,
                      unet=UNetConfig(image_size=size, base_channels=16, channel_mults=(1, 2), num_res_blocks=(1, 1),
                                      self_attention=(False, False), cross_attention=(False, True),
                                      text_embed_dim=TEXT_DIM, head_dim=16, lowres_cond=True))
    torch.manual_seed(0)
    return Stage(cfg)


def _project_base(size: int) -> Stage:
    cfg = StageConfig(name="base", unet=UNetConfig(image_size=size, base_channels=16, channel_mults=(1, 2),
                                                   num_res_blocks=(1, 1), self_attention=(False, True),
                                                   cross_attention=(False, True), text_embed_dim=TEXT_DIM, head_dim=16))
    torch.manual_seed(0)
    return Stage(cfg)


def test_mixed_cascades_in_both_orders(tiny_one, tiny_two, null_text):
    from suti.if_backbone.stage import new_if_stage

    text = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, TEXT_LEN, dtype=torch.bool)
    # IF-I base (16 px) -> the project's SR stage (16 -> 32)
    if_base = new_if_stage(tiny_one, null_text_emb=null_text, context_head_dim=16)
    cascade = Cascade([if_base, _project_sr(16, 32)])
    out = cascade.sample(text, mask, exemplars=exemplars(), guidance=Guidance(3.0, "interleaved"), steps=2,
                         generator=torch.Generator().manual_seed(0), return_all=True)
    assert out["base"].shape == (2, 3, 16, 16) and out["sr"].shape == (2, 3, 32, 32)
    # the project's base (16 px) -> an IF-II-shaped SR stage (16 -> 32)
    if_sr = new_if_stage(tiny_two, name="sr", null_text_emb=null_text, lowres_size=16, context_head_dim=16)
    cascade = Cascade([_project_base(16), if_sr])
    out = cascade.sample(text, mask, exemplars=exemplars(), guidance=Guidance(3.0, "joint"), steps=2,
                         generator=torch.Generator().manual_seed(0), return_all=True)
    assert out["sr"].shape == (2, 3, 32, 32) and torch.isfinite(out["sr"]).all()
    with pytest.raises(ValueError, match="expects 64px input"):
        Cascade([_project_base(16), new_if_stage(tiny_two, name="sr", null_text_emb=null_text)])


def test_cascade_folder_loads_through_the_pipeline(tmp_path, base_folder, tiny_t5_dir):
    """cascade.json + an IF stage folder: SuTIPipeline.from_pretrained loads it onto its base (fingerprint
    checked), generates PIL images with subject photos, and save_pretrained writes new layers only."""
    from PIL import Image

    from suti.cascade import Cascade
    from suti.checkpoint import save_cascade
    from suti.config import CascadeConfig
    from suti.if_backbone.files import from_if
    from suti.if_backbone.shapes import build_unet, tiny_stage_one_config
    from suti.pipeline import SuTIPipeline
    from suti.text import TextEncoder

    text = TextEncoder.from_pretrained(tiny_t5_dir, max_length=TEXT_LEN)
    build_unet(tiny_stage_one_config(text_dim=text.dim), seed=0).save_pretrained(base_folder / "unet")
    stage = from_if(base_folder, null_text_emb=text.encode([""])[0], context_head_dim=16)
    _train_a_little(stage)
    ckpt = save_cascade(Cascade([stage]), CascadeConfig(text_encoder=str(tiny_t5_dir), text_max_length=TEXT_LEN,
                                                        stages=("base",)), tmp_path / "ckpt")
    assert sorted(p.name for p in (ckpt / "base").iterdir()) == ["config.json", CONTEXT_WEIGHTS]
    pipe = SuTIPipeline.from_pretrained(ckpt)
    photos = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGBA", (20, 20), (0, 90, 200, 255))]
    images = pipe("a red teapot on the beach", subject_images=photos, subject_texts="a photo of my teapot",
                  num_images=2, steps=3, sampler="ddpm", seed=0)
    assert len(images) == 2 and images[0].size == (16, 16)
    again = pipe("a red teapot on the beach", subject_images=photos, subject_texts="a photo of my teapot",
                 num_images=2, steps=3, sampler="ddpm", seed=0)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]
    pipe.save_pretrained(tmp_path / "copy", save_text_encoder=False)
    assert sorted(p.name for p in (tmp_path / "copy" / "base").iterdir()) == ["config.json", CONTEXT_WEIGHTS]
