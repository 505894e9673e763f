"""A diverged run fails instead of finishing (issue 10, section 5); a damaged newest checkpoint falls back to
the previous complete one (section 6). Each test makes its own bad input."""
from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from training_helpers import train_config

from suti.cli import main
from suti.training import TrainConfig, Trainer
from suti.training import state as S
from suti.training.trainer import TrainingDiverged


# ----------------------------------------------------------------------------- section 5: divergence
@pytest.mark.parametrize("override,words", [
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("optim.lr=.nan", "optim.lr must be a finite number"),
    ("optim.lr=-1e-3", "optim.lr must be > 0"),
    ("optim.betas=[0.9, .nan]", "optim.betas must be two numbers in [0, 1)"),
    ("optim.eps=0", "optim.eps must be > 0"),
    ("ema.decay=.nan", "ema.decay must be a finite number"),
    ("clip_grad_norm=.inf", "clip_grad_norm must be a finite number"),
    ("sample.guidance=.nan", "sample.guidance must be a finite number"),
    ("max_skipped_share=0", "max_skipped_share must be in (0, 1]"),
    ("steps=1e7", "steps must be int"),
])
def test_non_finite_or_out_of_range_hyperparameters_are_refused(tmp_path, tiny_t5, colours, override, words):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(train_config(tmp_path, tiny_t5, colours)))
    with pytest.raises(ValueError) as e:
        TrainConfig.load(path, [override])
    assert words in str(e.value)


def test_cli_refuses_infinite_lr_with_one_line_and_exit_2(tmp_path, tiny_t5, colours, capsys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(train_config(tmp_path, tiny_t5, colours)))
    assert main(["train", "--config", str(path), "optim.lr=.inf"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("suti train:")]
    assert len(err) == 1 and "optim.lr must be a finite number, got inf" in err[0]
    assert not (tmp_path / "run").exists()


def test_huge_lr_stops_with_a_clear_error_and_exports_nothing(tmp_path, tiny_t5, colours, capsys):
    """lr=1e30: the first step sends the weights to ~1e30 (finite), every later loss is inf and skipped.
    Before: 11 of 12 steps skipped, rc 0, `finished: true`, a stage of 9e29 weights exported."""
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(train_config(tmp_path, tiny_t5, colours, steps=12, checkpoint_every=1000,
                                                skip_window=8)))
    assert main(["train", "--config", str(path), "optim.lr=1e30"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("suti train:")]
    assert len(err) == 1 and "5 of the last 6 steps were skipped" in err[0] and "skip_window=8" in err[0]
    assert "diverged" in err[0] and "optim.lr (now 1e+30)" in err[0]
    run = tmp_path / "run"
    assert not (run / "stage").exists()  # nothing exported
    assert S.list_checkpoints(run) == []  # and no checkpoint of the diverged weights
    # The same run with the guard switched off (max_skipped_share=1) finishes: the guard is what stopped it.
    assert main(["train", "--config", str(path), "optim.lr=1e30", "max_skipped_share=1",
                 "output_dir=" + str(tmp_path / "unguarded"), "steps=4"]) == 0
    nan_skips = json.loads(capsys.readouterr().out)["nan_skips"]
    assert nan_skips >= 2


def test_weights_that_become_non_finite_stop_the_run(tmp_path, tiny_t5, colours):
    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, colours, steps=4, checkpoint_every=1))
    tr = Trainer(cfg)
    tr.train(stop_at_step=1)
    step = tr.optimizer.step
    param = next(p for p in tr.stage.parameters() if p.requires_grad)

    def poisoned_step(*a, **kw):  # a finite loss and gradient, but an update that overflows one weight
        out = step(*a, **kw)
        with torch.no_grad():
            param.view(-1)[0] = float("inf")
        return out

    tr.optimizer.step = poisoned_step
    ema_before = {k: v.clone() for k, v in tr.ema.module.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="step 1: the weights are no longer finite.*step-00000001"):
        tr.train()
    assert [s for s, _ in S.list_checkpoints(tmp_path / "run")] == [1]  # the good checkpoint is untouched
    assert all(torch.equal(v, tr.ema.module.state_dict()[k]) for k, v in ema_before.items())  # EMA not fed inf
    tr.config.ema.export = "raw"  # the raw weights hold the inf: exporting them is refused
    with pytest.raises(ValueError, match="refusing to save stage 'base'.*NaN or inf"):
        tr.export()
    assert not (tmp_path / "run" / "stage").exists()


# ----------------------------------------------------------------------------- section 6: damaged checkpoints
def _two_checkpoints(tmp_path, tiny_t5, colours):
    d = train_config(tmp_path, tiny_t5, colours, steps=4, checkpoint_every=2)
    Trainer(TrainConfig.from_dict(d)).train()
    ckpts = S.list_checkpoints(tmp_path / "run")
    assert [s for s, _ in ckpts] == [2, 4]
    return d, ckpts[-1][1]


def test_truncated_newest_weights_fall_back_to_the_previous_checkpoint(tmp_path, tiny_t5, colours, caplog):
    d, newest = _two_checkpoints(tmp_path, tiny_t5, colours)
    weights = newest / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="suti.training"):
        tr = Trainer(TrainConfig.from_dict({**d, "steps": 5}))
    assert tr.step == 2  # resumed from step-00000002
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "step-00000004 is damaged" in warning and str(weights) in warning
    result = tr.train()
    assert result["finished"] and result["step"] == 5


def test_bad_trainer_state_names_the_file(tmp_path, tiny_t5, colours, caplog, capsys):
    d, newest = _two_checkpoints(tmp_path, tiny_t5, colours)
    state_file = newest / "trainer_state.json"
    st = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**st, "step": -5}))
    with pytest.raises(ValueError, match=f"{state_file}: step must be an integer >= 0, got -5"):
        S.read_trainer_state(newest)
    with caplog.at_level(logging.WARNING, logger="suti.training"):
        assert Trainer(TrainConfig.from_dict({**d, "steps": 5})).step == 2
    assert str(state_file) in caplog.text
    # Asked for by path, a damaged checkpoint is an error (one line, exit 2), not a silent fallback.
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**d, "steps": 5}))
    assert main(["train", "--config", str(path), "--resume", str(newest)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("suti train:")]
    assert len(err) == 1 and "damaged" in err[0] and str(state_file) in err[0]


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path, tiny_t5, colours):
    d, newest = _two_checkpoints(tmp_path, tiny_t5, colours)
    for _, ckpt in S.list_checkpoints(tmp_path / "run"):
        (ckpt / "optimizer.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="no usable checkpoint.*refusing to start over.*optimizer.safetensors"):
        Trainer(TrainConfig.from_dict(d))


def test_eight_bit_adam_is_an_option_with_a_clear_error_without_bitsandbytes(monkeypatch):
    import builtins

    import pytest as _pytest

    from suti.cascade import Stage
    from suti.presets import preset
    from suti.training import TrainConfig
    from suti.training.trainer import build_optimizer

    with _pytest.raises(ValueError, match="optim.name must be adamw or adamw8bit"):
        TrainConfig.from_dict({"output_dir": "x", "stage": {"preset": "tiny-base32"}, "text": {"encoder": "t5"},
                               "data": {"sources": ["a.tar"]}, "optim": {"name": "sgd"}})
    cfg = TrainConfig.from_dict({"output_dir": "x", "stage": {"preset": "tiny-base32"}, "text": {"encoder": "t5"},
                                 "data": {"sources": ["a.tar"]}, "optim": {"name": "adamw8bit"}})
    real_import = builtins.__import__

    def no_bnb(name, *a, **kw):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with _pytest.raises(ValueError, match="needs bitsandbytes"):
        build_optimizer(Stage(preset("tiny-base32", text_embed_dim=16)), cfg.optim)
