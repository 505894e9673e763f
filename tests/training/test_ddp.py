"""Two CPU processes (gloo) through accelerate: both ranks end equal, and equal one process on the combined batch."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch
from training_helpers import train_config
from safetensors.torch import load_file

from suti.training import TrainConfig, Trainer, lr_at, step_generator
from suti.training.data import BatchStream

HERE = Path(__file__).parent


def test_two_process_ddp_matches_single_process_on_combined_batch(tmp_path, tiny_t5, colours):
    steps = 2
    d = train_config(tmp_path, tiny_t5, colours, steps=steps, batch_size=2, cpu=True, checkpoint_every=1,
                     ema={"enabled": False}, optim={"lr": 1e-3, "warmup_steps": 0}, clip_grad_norm=1.0,
                     data={"sources": [colours], "shuffle": False})
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(d))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(HERE / "ddp_worker.py"), str(cfg_path), str(out)]
    # A new session, so a timeout can end the launcher and both workers together.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    w0, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "DDP ranks diverged"

    # Single process, same initialisation, each step on the union of the two ranks' batches with the
    # same per-rank noise: loss = mean of the two halves (what DDP's gradient averaging computes).
    ref = Trainer(TrainConfig.from_dict({**d, "output_dir": str(tmp_path / "ref")}))
    init = {k: v.clone() for k, v in ref.stage.unet.state_dict().items()}
    streams = [iter(BatchStream(d["data"]["sources"], "text_to_image", 16, 2, shuffle=False, rank=r, world=2))
               for r in range(2)]
    for step in range(steps):
        halves = [ref._inputs(b, list(range(len(b["keys"]))))["inputs"] for b in (next(s) for s in streams)]
        losses = [ref.stage.training_loss(h["images"], h["text_emb"], h["text_mask"],
                                          generator=step_generator(ref.config.seed, step, 0, r, "cpu"))
                  for r, h in enumerate(halves)]
        ref.optimizer.zero_grad()
        (sum(losses) / 2).backward()
        torch.nn.utils.clip_grad_norm_(ref.stage.parameters(), 1.0)
        for g in ref.optimizer.param_groups:
            g["lr"] = lr_at(step, ref.config.optim, steps)
        ref.optimizer.step()
        assert abs(sum(losses).item() / 2 - _mean_rank_loss(out, step)) < 1e-5
    moved = False
    for k, v in ref.stage.unet.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-6, msg=f"parameter {k} differs")
        moved |= not torch.equal(v, init[k])
    assert moved
    # Both ranks wrote their state into the shared checkpoint.
    ckpt = tmp_path / "run" / "checkpoints" / f"step-{steps:08d}"
    assert (ckpt / "rank-00000.json").is_file() and (ckpt / "rank-00001.json").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2


def _mean_rank_loss(out: Path, step: int) -> float:
    return sum(json.loads((out / f"rank{r}.json").read_text())["losses"][step] for r in range(2)) / 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
