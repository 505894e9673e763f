"""Trainer mechanics: checkpoints (no pickle), NaN guard, exact resume, samples, export, SR / in-context, cache."""
from __future__ import annotations

import json

import pytest
import torch
from training_helpers import MICRO_STAGE, train_config
from PIL import Image
from safetensors.torch import load_file
from training_helpers import COLOURS, icl_members, image_bytes, solid, write_tar

from suti.checkpoint import load_stage, save_stage
from suti.training import TrainConfig, Trainer
from suti.training import state as S


def _tensors(stage):
    return {k: v.detach().clone() for k, v in stage.state_dict().items()}


def _opt_tensors(opt):
    return {f"{pid}.{k}": v.clone() for pid, st in opt.state_dict()["state"].items() for k, v in st.items()
            if isinstance(v, torch.Tensor)}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_checkpoint_samples_metrics_and_export(tmp_path, tiny_t5, colours):
    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, colours, steps=3, checkpoint_every=2,
                                             keep_checkpoints=1,
                                             sample={"every": 2, "prompts": ["a red square", "a blue square"]}))
    result = Trainer(cfg).train()
    run = tmp_path / "run"
    assert result["finished"] and result["step"] == 3
    # keep_checkpoints=1: only the last one is left; every file in it is safetensors or JSON.
    ckpts = S.list_checkpoints(run)
    assert [s for s, _ in ckpts] == [3]
    S.assert_no_pickle(ckpts[0][1])
    for p in ckpts[0][1].rglob("*.safetensors"):
        load_file(str(p))  # readable without pickle
    st = json.loads((ckpts[0][1] / "trainer_state.json").read_text())
    assert st["step"] == 3 and st["nan_skips"] == 0 and st["config"]["steps"] == 3
    rank = json.loads((ckpts[0][1] / "rank-00000.json").read_text())
    assert rank["data"]["index"] > 0 and "python" in rank["rng"]
    assert not list((run / "checkpoints").glob(".*"))  # no partial folders left behind
    # Sample grids: step 2 (periodic) and step 3 (final), readable PNGs of the right size.
    pngs = sorted((run / "samples").glob("*.png"))
    assert [p.name for p in pngs] == ["step-00000002.png", "step-00000003.png"]
    with Image.open(pngs[-1]) as im:
        im.load()
        assert im.size == (2 * 16 + 3 * 2, 16 + 2 * 2)
    assert json.loads(pngs[-1].with_suffix(".json").read_text())["prompts"] == ["a red square", "a blue square"]
    # Metrics: one line per step plus events.
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == [1, 2, 3] and all(x["loss"] > 0 for x in lines if "loss" in x)
    # The export is a stage folder with the EMA weights.
    stage = load_stage(run / "stage")
    trainer_ema = load_stage(ckpts[0][1] / "ema")
    assert _equal(_tensors(stage), _tensors(trainer_ema))
    assert json.loads((run / "stage" / "training.json").read_text())["weights"] == "ema"


def test_nan_guard_skips_step(tmp_path, tiny_t5, colours):
    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, colours, steps=4))
    tr = Trainer(cfg)
    tr.train(stop_at_step=1)
    before = (_tensors(tr.stage), _tensors(tr.ema.module), _opt_tensors(tr.optimizer))
    tr.loss_hooks.append(lambda step, loss: loss * float("nan") if step == 1 else loss)
    tr.train(stop_at_step=2)
    assert tr.nan_skips == 1 and tr.step == 2
    after = (_tensors(tr.stage), _tensors(tr.ema.module), _opt_tensors(tr.optimizer))
    assert all(_equal(a, b) for a, b in zip(before, after)), "a skipped step must not move weights, EMA or Adam"
    assert tr.ema.num_updates == 1

    # Finite loss but non-finite gradients (d sqrt(x)/dx at 0) are caught too.
    p0 = next(tr.stage.parameters())
    tr.loss_hooks[:] = [lambda step, loss: loss + (p0 * 0).abs().sqrt().sum() if step == 2 else loss]
    tr.train(stop_at_step=3)
    assert tr.nan_skips == 2 and _equal(_tensors(tr.stage), before[0])
    tr.loss_hooks.clear()
    tr.train()
    assert tr.nan_skips == 2 and not _equal(_tensors(tr.stage), before[0])  # normal steps move again
    st = json.loads((S.latest_checkpoint(tmp_path / "run") / "trainer_state.json").read_text())
    assert st["nan_skips"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert [x["nan_skips"] for x in lines if "loss" in x] == [0, 1, 2, 2]
    assert [x["loss"] is None for x in lines if "loss" in x] == [False, True, True, False]


def test_resume_is_bitwise_exact(tmp_path, tiny_t5, colours):
    """N steps in one go == N/2 steps, stop, resume from the checkpoint, N/2 more (weights, EMA, Adam)."""
    over = dict(steps=4, grad_accum=2, batch_size=3, checkpoint_every=1, keep_checkpoints=2,
                optim={"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine", "min_lr_ratio": 0.1},
                stage={"config": None, "preset": "tiny-base32", "overrides": {"unet": {"dropout": 0.1}}},
                data={"sources": [colours], "shuffle_buffer": 3},  # 4 images, batch 3: epochs end mid-batch
                deterministic=True)  # a no-op on the CPU; on CUDA, what makes resume exact
    # The uninterrupted run also draws a sample grid every step: sampling must not touch the run's RNG.
    full = Trainer(TrainConfig.from_dict(train_config(tmp_path / "a", tiny_t5, colours, **over,
                                                      sample={"every": 1, "steps": 2, "num_held": 2})))
    full.train()
    assert len(list((tmp_path / "a" / "run" / "samples").glob("*.png"))) == 4
    cfg_b = TrainConfig.from_dict(train_config(tmp_path / "b", tiny_t5, colours, **over))
    first = Trainer(cfg_b)
    first.train(stop_at_step=2)
    assert [s for s, _ in S.list_checkpoints(tmp_path / "b" / "run")] == [1, 2]  # keep_checkpoints=2
    del first
    second = Trainer(cfg_b)  # auto-resume from the latest checkpoint in the run folder
    assert second.step == 2
    second.train()
    assert second.step == 4
    assert _equal(_tensors(full.stage), _tensors(second.stage))
    assert _equal(_tensors(full.ema.module), _tensors(second.ema.module))
    assert _equal(_opt_tensors(full.optimizer), _opt_tensors(second.optimizer))
    assert full.losses[2:] == second.losses
    assert full.position == second.position
    # The checkpoints of both runs at the last step hold the same weights.
    a = load_file(str(S.latest_checkpoint(tmp_path / "a" / "run") / "model" / "model.safetensors"))
    b = load_file(str(S.latest_checkpoint(tmp_path / "b" / "run") / "model" / "model.safetensors"))
    assert _equal(a, b)


def test_super_resolution_stage_trains_and_samples(tmp_path, tiny_t5, colours):
    sr = {"name": "sr32", "lowres_size": 16,
          "unet": {**MICRO_STAGE["unet"], "image_size": 32, "lowres_cond": True}}
    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, colours, steps=2, stage={"config": sr},
                                             mixed_precision="bf16"))
    tr = Trainer(cfg)
    result = tr.train()
    assert result["finished"] and all(l == l for l in tr.losses)
    with Image.open(result["samples"]) as im:  # rows of [low-res, sample, target]
        assert im.size == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)
    assert load_stage(result["export_dir"]).config.lowres_size == 16


def test_in_context_training_from_text_to_image_stage(tmp_path, tiny_t5):
    # A text-to-image stage folder to start from.
    t2i = tmp_path / "t2i"
    from suti.cascade import Stage
    from suti.config import StageConfig

    torch.manual_seed(0)
    save_stage(Stage(StageConfig.from_dict(MICRO_STAGE)), t2i)
    members = []
    for n, (name, rgb) in enumerate(COLOURS.items()):
        img = image_bytes(solid(rgb))
        k = 1 + n % 3
        members += icl_members(f"c{n}_0000", img, f"a {name} toy on the beach",
                               [(img, f"a {name} toy {i}") for i in range(k)])
    shard = write_tar(tmp_path / "icl" / "icl-000000.tar", members)
    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, str(shard), steps=2, init_from=str(t2i),
                                             data={"sources": [str(shard)], "task": "in_context"},
                                             sample={"steps": 2, "num_held": 3}))
    tr = Trainer(cfg)
    assert tr.stage.uses_context
    result = tr.train()
    exported = load_stage(result["export_dir"])
    assert exported.uses_context and exported.config.unet.middle_context_attention
    with Image.open(result["samples"]) as im:  # rows of [ex0..ex2, target, sample]
        assert im.size == (5 * 16 + 6 * 2, 3 * 16 + 4 * 2)
    # The context layers were trained (their zero-initialised output projections moved).
    outs = [v for k, v in exported.unet.state_dict().items() if "context_attn.out.weight" in k]
    assert outs and any(v.abs().sum() > 0 for v in outs)


def test_context_levels_choose_where_the_converted_stage_attends(tmp_path, tiny_t5):
    from suti.cascade import Stage
    from suti.config import StageConfig

    t2i = tmp_path / "t2i"
    save_stage(Stage(StageConfig.from_dict(MICRO_STAGE)), t2i)
    img = image_bytes(solid(COLOURS["red"]))
    shard = write_tar(tmp_path / "icl" / "icl-000000.tar",
                      icl_members("c0_0000", img, "a red toy", [(img, "a red toy")]))
    levels = len(MICRO_STAGE["unet"]["channel_mults"])

    def trainer(context_levels, init_from=str(t2i)):
        stage = {"preset": None, "config": None if init_from else MICRO_STAGE, "context_levels": context_levels}
        return Trainer(TrainConfig.from_dict(train_config(
            tmp_path / str(context_levels), tiny_t5, str(shard), steps=1, init_from=init_from, stage=stage,
            data={"sources": [str(shard)], "task": "in_context"})))

    default = trainer(None).stage.config.unet.context_attention  # the lowest level only
    assert default == tuple(i == levels - 1 for i in range(levels))
    assert trainer([0]).stage.config.unet.context_attention == tuple(i == 0 for i in range(levels))
    fresh = trainer([0], init_from=None).stage.config.unet  # a new stage from a config, not a conversion
    assert tuple(fresh.context_attention) == tuple(i == 0 for i in range(levels)) and fresh.middle_context_attention
    with pytest.raises(ValueError, match=r"stage\.context_levels.*got \[7\]"):
        trainer([7])
    assert "context_attention" not in MICRO_STAGE["unet"]  # the caller's config is not changed


def test_text_cache_replaces_the_encoder(tmp_path, tiny_t5, colours):
    from suti.text import TextEncoder
    from suti.text_cache import build_text_cache

    enc = TextEncoder.from_pretrained(tiny_t5, max_length=8)
    captions = [f"a {c} square" for c in COLOURS if c != "yellow"]  # yellow is missing from the cache
    cache = build_text_cache(enc, captions, tmp_path / "cache", dtype="float32", progress=False)
    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, colours, steps=3, batch_size=4,
                                             text={"encoder": None, "cache": str(cache)},
                                             sample={"prompts": ["a red square"], "steps": 2}))
    tr = Trainer(cfg)
    assert tr.text.encoder is None  # training never runs the encoder
    result = tr.train()
    assert result["finished"] and all(l == l for l in tr.losses)
    assert tr.skips.by_reason["caption not in the text cache"] == 3  # 'a yellow square' once per step
    assert tr.position.samples == 9


def test_config_file_overrides_and_errors(tmp_path, tiny_t5, colours):
    import yaml

    d = train_config(tmp_path, tiny_t5, colours)
    d["optim"]["lr"] = "1e-4"  # YAML 1.1 reads this as a string
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(d))
    cfg = TrainConfig.load(path, ["steps=7", "optim.schedule=cosine", "ema.decay=0.5", "data.sources=[a, b]",
                                  "mixed_precision=no"])
    assert cfg.optim.lr == 1e-4 and cfg.steps == 7 and cfg.optim.schedule == "cosine" and cfg.ema.decay == 0.5
    assert cfg.data.sources == ["a", "b"] and cfg.mixed_precision == "no"
    assert TrainConfig.load(path, ["data.sources=s/{000..009}.tar"]).data.sources == ["s/{000..009}.tar"]
    with pytest.raises(ValueError, match="quote"):
        TrainConfig.load(path, ["data.sources=[s/{000..009}.tar]"])
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({**d, "optim": {"lr": 1, "lr_typo": 2}})
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig.from_dict({**d, "mixed_precision": "fp8"})
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig.load(path, ["steps"])


def test_cli_train_and_resume(tmp_path, tiny_t5, colours):
    import argparse

    import yaml

    from suti.training.cli import add_train_subparser

    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(train_config(tmp_path, tiny_t5, colours, steps=2)))
    parser = argparse.ArgumentParser(prog="suti")
    add_train_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", str(path), "steps=1"])
    assert args.func(args) == 0
    assert S.latest_checkpoint(tmp_path / "run").name == "step-00000001"
    args = parser.parse_args(["train", "--config", str(path), "--resume"])
    assert args.func(args) == 0
    assert S.latest_checkpoint(tmp_path / "run").name == "step-00000002"
    with pytest.raises(FileExistsError):
        args = parser.parse_args(["train", "--config", str(path), "resume=never"])
        args.func(args)
    # --resume PATH: an older checkpoint while a newer one exists is refused (it would be ambiguous).
    args = parser.parse_args(["train", "--config", str(path), "--resume",
                              str(tmp_path / "run" / "checkpoints" / "step-00000001"), "steps=3"])
    with pytest.raises(ValueError, match="newer checkpoints"):
        args.func(args)


def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path, tiny_t5, colours):
    import os
    import signal

    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, colours, steps=5))
    before = signal.getsignal(signal.SIGTERM)
    tr = Trainer(cfg)
    tr.loss_hooks.append(lambda step, loss: (os.kill(os.getpid(), signal.SIGTERM), loss)[1] if step == 1 else loss)
    result = tr.train()
    assert not result["finished"] and result["step"] == 2 and "export_dir" not in result
    assert S.latest_checkpoint(tmp_path / "run").name == "step-00000002"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert Trainer(cfg).train()["finished"]  # a rerun resumes and finishes
