"""Stage configs are checked field by field before a weight is allocated (issue 10, section 7)."""
import copy
import json
import math

import pytest
import torch

from suti.checkpoint import load_stage, save_stage
from suti.config import StageConfig
from suti.model_size import estimate_unet_parameters
from suti.presets import PRESET_NAMES, preset
from suti.unet import EfficientUNet

BASE = preset("tiny-base32", text_embed_dim=8).to_dict()

# (dotted key, bad value, words the error must contain): the odd config.json values that gave raw tracebacks,
# absurd sizes, and NaN.
BAD_VALUES = [
    ("unet.base_channels", -32, "base_channels must be >= 1"),
    ("unet.base_channels", 0, "base_channels must be >= 1"),
    ("unet.base_channels", "32", "base_channels must be int"),
    ("unet.base_channels", 32.0, "base_channels must be int"),
    ("unet.base_channels", None, "base_channels must not be null"),
    ("unet.base_channels", 33, "base_channels must be even"),
    ("unet.in_channels", 0, "in_channels must be >= 1"),
    ("unet.channel_mults", [], "channel_mults must have at least one level"),
    ("unet.channel_mults", [1, -2, 2], "channel_mults[1] must be an integer >= 1"),
    ("unet.channel_mults", "122", "channel_mults must be tuple"),
    ("unet.num_res_blocks", [1, 0, 2], "num_res_blocks[1] must be an integer >= 1"),
    ("unet.num_res_blocks", [1, 1, 1e7], "num_res_blocks[2] must be an integer"),
    ("unet.num_res_blocks", [1, 1, 10_000_000], "parameters"),
    ("unet.image_size", -32, "image_size must be >= 1"),
    ("unet.image_size", 31, "image_size=31 is not divisible by 4"),
    ("unet.image_size", 1 << 20, "image_size=1048576 is over the limit"),
    ("unet.base_channels", 51200, "parameters"),
    ("unet.num_groups", 0, "num_groups must be >= 1"),
    ("unet.num_groups", 5, "num_groups (5) must divide"),
    ("unet.head_dim", 0, "head_dim must be >= 1"),
    ("unet.head_dim", 20, "head_dim (20) splits"),
    ("unet.self_attention", [False, "yes", True], "self_attention[1] must be true or false"),
    ("unet.self_attention", [False, True], "self_attention has 2 entries, channel_mults has 3"),
    ("unet.dropout", 1.5, "dropout must be in [0, 1)"),
    ("diffusion.logsnr_min", float("nan"), "logsnr_min must be a finite number"),
    ("diffusion.logsnr_max", float("inf"), "logsnr_max must be a finite number"),
    ("diffusion.logsnr_min", 30.0, "logsnr_min (30.0) must be below logsnr_max"),
    ("diffusion.text_drop_prob", 1.5, "text_drop_prob must be in [0, 1]"),
    ("diffusion.context_drop_prob", -0.1, "context_drop_prob must be in [0, 1]"),
    ("diffusion.noise_aug_sample", 2.0, "noise_aug_sample must be in [0, 1]"),
    ("diffusion.prediction", 3, "prediction must be str"),
    ("lowres_size", 0, "lowres_size must be between 1"),
    ("name", "", "must be a non-empty folder name"),
    ("name", "../x", "must be a non-empty folder name"),
]


def _with(key, value):
    d = copy.deepcopy(BASE)
    node = d
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    return d


@pytest.mark.parametrize("key,value,words", BAD_VALUES, ids=[f"{k}={v!r}"[:40] for k, v, _ in BAD_VALUES])
def test_bad_field_is_refused_with_its_name(key, value, words):
    with pytest.raises(ValueError) as e:
        StageConfig.from_dict(_with(key, value))
    assert words in str(e.value)


@pytest.mark.parametrize("doc", ["[1, 2]", "null", "\"base\"", "{\"unet\": [1]}"])
def test_config_json_of_the_wrong_shape_names_the_file(tmp_path, doc):
    save_stage(__import__("suti.cascade", fromlist=["Stage"]).Stage(StageConfig.from_dict(BASE)), tmp_path / "s")
    (tmp_path / "s" / "config.json").write_text(doc)
    with pytest.raises(ValueError, match="config.json.*(mapping|not a valid stage config)"):
        load_stage(tmp_path / "s")


def test_bad_value_in_a_saved_config_names_file_and_field(tmp_path):
    from suti.cascade import Stage

    save_stage(Stage(StageConfig.from_dict(BASE)), tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["diffusion"]["logsnr_min"] = float("nan")  # json writes NaN, as Python's json accepts it
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"s/config.json is not a valid stage config.*logsnr_min.*finite"):
        load_stage(tmp_path / "s")


def test_size_cap_can_be_raised(monkeypatch):
    big = _with("unet.base_channels", 51200)
    with pytest.raises(ValueError, match="SUTI_MAX_PARAMS"):
        StageConfig.from_dict(big)
    monkeypatch.setenv("SUTI_MAX_PARAMS", "1e15")
    cfg = StageConfig.from_dict(big)  # accepted: nothing is allocated by a config
    assert estimate_unet_parameters(cfg.unet) > 8e9


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_parameter_estimate_is_exact(name):
    for context in (False, True):
        cfg = preset(name, text_embed_dim=64, context=context).unet
        with torch.device("meta"):  # shapes only, no memory
            n = sum(p.numel() for p in EfficientUNet(cfg).parameters())
        assert estimate_unet_parameters(cfg) == n


def test_integral_floats_from_files_are_not_cast_but_ints_widen_to_float():
    cfg = StageConfig.from_dict(_with("diffusion.logsnr_min", -20))
    assert isinstance(cfg.diffusion.logsnr_min, float) and cfg.diffusion.logsnr_min == -20.0
    assert not math.isnan(cfg.diffusion.logsnr_max)


def test_weights_holding_nan_are_neither_saved_nor_loaded(tmp_path):
    from safetensors.torch import load_file, save_file

    from suti.cascade import Stage

    stage = Stage(StageConfig.from_dict(BASE))
    save_stage(stage, tmp_path / "s")
    weights = load_file(str(tmp_path / "s" / "model.safetensors"))
    name = next(iter(weights))
    weights[name][...] = float("nan")
    save_file(weights, str(tmp_path / "s" / "model.safetensors"))  # as a diverged run once exported it
    with pytest.raises(ValueError, match=f"s/model.safetensors: 1 weight tensors hold NaN or inf.*{name}"):
        load_stage(tmp_path / "s")
    with torch.no_grad():
        next(stage.unet.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="refusing to save stage 'tiny-base32'.*NaN or inf"):
        save_stage(stage, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_every_config_that_passes_validation_builds_and_runs():
    """Random small configs: validation either refuses one with a ValueError, or the U-Net builds and runs."""
    import random

    from suti.config import UNetConfig

    rng = random.Random(0)
    built = refused = 0
    for _ in range(60):
        n = rng.randint(1, 3)
        kw = dict(image_size=rng.choice([4, 8, 12, 16]), base_channels=rng.choice([2, 4, 6, 8, 12]),
                  channel_mults=tuple(rng.randint(1, 3) for _ in range(n)),
                  num_res_blocks=tuple(rng.randint(1, 2) for _ in range(n)),
                  self_attention=tuple(rng.random() < 0.5 for _ in range(n)),
                  cross_attention=tuple(rng.random() < 0.5 for _ in range(n)),
                  context_attention=tuple(rng.random() < 0.3 for _ in range(n)),
                  middle_self_attention=rng.random() < 0.5, text_embed_dim=rng.choice([3, 8]),
                  head_dim=rng.choice([1, 3, 4, 5, 8]), num_groups=rng.choice([1, 2, 3, 4, 8]),
                  time_embed_mult=rng.choice([1, 2]), attention_pool_heads=rng.choice([1, 2, 3]),
                  downsample_first=rng.random() < 0.3, lowres_cond=rng.random() < 0.3)
        try:
            cfg = UNetConfig(**kw)
        except ValueError:
            refused += 1
            continue
        unet = EfficientUNet(cfg)
        s = cfg.image_size
        out = unet(torch.randn(2, 3, s, s), torch.rand(2), torch.randn(2, 4, cfg.text_embed_dim),
                   torch.ones(2, 4, dtype=torch.bool), lowres=torch.randn(2, 3, s, s) if cfg.lowres_cond else None,
                   aug_level=torch.rand(2) if cfg.lowres_cond else None)
        assert out.shape == (2, 3, s, s)
        built += 1
    assert built >= 10 and refused >= 10  # both sides of the rule were exercised


def test_path_objects_are_accepted_where_a_path_string_is():
    from pathlib import Path

    from suti.training import TrainConfig

    cfg = TrainConfig.from_dict({"output_dir": Path("runs/x"), "stage": {"preset": "tiny-base32"},
                                 "text": {"encoder": Path("t5")}, "data": {"sources": ["a.tar"]}})
    assert cfg.text.encoder == "t5" and isinstance(cfg.output_dir, str)
