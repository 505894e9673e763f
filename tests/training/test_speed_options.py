"""The trainer's speed options (channels_last, AdamW kernels, torch.compile) train the same model: after a few
steps from one seed, losses and weights agree with the default path within float tolerance."""
import pytest
import torch
from training_helpers import train_config

from suti.training import TrainConfig, Trainer


def _run(tmp_path, tiny_t5, colours, name, **options):
    cfg = train_config(tmp_path / name, tiny_t5, colours, steps=3, ema={"enabled": False}, **options)
    trainer = Trainer(TrainConfig.from_dict(cfg))
    result = trainer.train()
    weights = {k: v.detach().clone().contiguous() for k, v in trainer.stage.state_dict().items()}
    return trainer, result, weights


def _agree(a, b, rtol=1e-4, atol=1e-5):
    (_, _, wa), (_, _, wb) = a, b
    assert a[0].losses == pytest.approx(b[0].losses, rel=rtol, abs=atol)
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-4, worst


@pytest.fixture
def default_run(tmp_path, tiny_t5, colours):
    return _run(tmp_path, tiny_t5, colours, "default")


@pytest.mark.parametrize("implementation", ["for-loop", "foreach", "fused"])
def test_adamw_kernels_agree(default_run, tmp_path, tiny_t5, colours, implementation):
    run = _run(tmp_path, tiny_t5, colours, implementation, optim={"implementation": implementation})
    opt = run[0].optimizer.optimizer if hasattr(run[0].optimizer, "optimizer") else run[0].optimizer
    expected = {"for-loop": ("foreach", False), "foreach": ("foreach", True), "fused": ("fused", True)}
    key, value = expected[implementation]
    assert opt.defaults[key] is value
    _agree(default_run, run)


def test_channels_last_agrees_and_exports_a_normal_checkpoint(default_run, tmp_path, tiny_t5, colours):
    run = _run(tmp_path, tiny_t5, colours, "nhwc", channels_last=True)
    conv = next(p for p in run[0].stage.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    _agree(default_run, run)
    from suti.checkpoint import load_stage

    exported = load_stage(run[1]["export_dir"])  # loads as a plain (NCHW) stage
    assert all(p.is_contiguous() for p in exported.parameters())


def test_bad_implementation_is_named(tmp_path, tiny_t5, colours):
    with pytest.raises(ValueError, match="optim.implementation must be one of"):
        TrainConfig.from_dict(train_config(tmp_path, tiny_t5, colours, optim={"implementation": "turbo"}))


@pytest.mark.slow
def test_compile_agrees_and_reports_its_compile_time(default_run, tmp_path, tiny_t5, colours):
    run = _run(tmp_path, tiny_t5, colours, "compiled", compile=True)
    assert run[1]["compile_seconds"] > 0
    _agree(default_run, run, rtol=1e-3, atol=1e-4)
