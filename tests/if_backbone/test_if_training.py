"""`suti train` (the project's Trainer) on a SuTI-IF stage folder and in-context shards: the new layers
alone train by default, the run exports a stage folder holding only them, and it resumes."""
import io
import tarfile

import pytest
import torch

pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def _jpeg(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), rgb).save(buf, format="JPEG")
    return buf.getvalue()


def _icl_shard(path):
    """The dataset builder's in-context layout: key.target.jpg/.txt, key.ex{i}.jpg/.txt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for n, (name, rgb) in enumerate(COLOURS.items()):
            members = {"target.jpg": _jpeg(rgb), "target.txt": f"a {name} toy on the beach".encode()}
            for i in range(1 + n % 3):
                members[f"ex{i}.jpg"] = _jpeg(rgb)
                members[f"ex{i}.txt"] = f"a {name} toy {i}".encode()
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"c{n}_0000.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_trainer_trains_the_new_layers_of_an_if_stage(tmp_path, tiny_t5_dir):
    from diffusers import DDPMScheduler

    from suti.checkpoint import load_stage
    from suti.if_backbone.files import from_if, save_if_stage
    from suti.if_backbone.shapes import build_unet, tiny_stage_one_config
    from suti.text import TextEncoder
    from suti.training import TrainConfig, Trainer

    text = TextEncoder.from_pretrained(tiny_t5_dir, max_length=8)
    base = tmp_path / "IF-tiny"
    build_unet(tiny_stage_one_config(text_dim=text.dim), seed=0).save_pretrained(base / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(base / "scheduler")
    stage = from_if(base, null_text_emb=text.encode([""])[0], context_head_dim=16)
    save_if_stage(stage, tmp_path / "init")
    shard = _icl_shard(tmp_path / "icl" / "icl-000000.tar")

    def config(steps):
        return TrainConfig.from_dict({
            "output_dir": str(tmp_path / "run"), "init_from": str(tmp_path / "init"),
            "text": {"encoder": str(tiny_t5_dir), "max_length": 8},
            "data": {"sources": [str(shard)], "task": "in_context", "max_exemplars": 3},
            "batch_size": 2, "steps": steps, "optim": {"lr": 1e-3, "warmup_steps": 1}, "ema": {"enabled": False},
            "checkpoint_every": 2, "log_every": 1, "cpu": True, "sample": {"every": 0, "num_held": 2, "steps": 2}})

    tr = Trainer(config(2))
    assert {n for n, p in tr.stage.named_parameters() if p.requires_grad} == \
        {f"unet.context_attn.{n}" for n, _ in tr.stage.unet.context_attn.named_parameters()}
    first = tr.train()
    tr = Trainer(config(4))  # resumes from step 2
    assert tr.step == 2
    result = tr.train()
    assert result["finished"] and all(loss == loss for loss in tr.losses)
    exported = load_stage(result["export_dir"])
    files = {p.name for p in result_dir(result).iterdir()}
    assert {"config.json", "context.safetensors"} <= files  # (+ the trainer's training.json)
    assert [f for f in files if f.endswith(".safetensors")] == ["context.safetensors"]  # no IF weights
    outs = [p for n, p in exported.unet.context_attn.named_parameters() if n.endswith("out.weight")]
    assert outs and all(p.abs().sum() > 0 for p in outs)  # the zero-initialised projections moved
    assert torch.equal(exported.unet.unet.conv_in.weight, stage.unet.unet.conv_in.weight)  # IF untouched
    assert first["export_dir"] == result["export_dir"]


def result_dir(result):
    from pathlib import Path

    return Path(result["export_dir"])
