"""The README's step-by-step commands, run in order as a user would, with tiny models.

The commands are read from README.md (the bash block under "Step by step"), so the README cannot drift
from what works. The only changes: the inputs a user brings are made here (a tiny T5 folder as t5-base/,
web shards, three subject photos, a builder config over the local shards with the deterministic stand-in
CLIP), and step counts are cut so the run takes minutes.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = {  # appended per command: the same commands, fewer steps
    "train": ["steps=40", "batch_size=4", "sample.every=1000", "sample.steps=3", "checkpoint_every=1000",
              "text.max_length=8"],
    "sample": ["--steps", "3", "--num-images", "1"],
    "generate": ["--steps", "3", "--num-images", "1"],
}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Step by step"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    block = block.replace("\\\n", " ")  # continuation lines
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip().startswith("suti ")]


def _inputs(work: Path) -> None:
    from dataset_builder.testing import make_planted_records, write_img2dataset_shards
    from suti.tiny import build_tiny_t5

    rows, _ = make_planted_records(n_subjects=4)
    write_img2dataset_shards(rows, work / "web_shards", n_shards=2)
    build_tiny_t5(work / "t5-base", corpus=[r["text"] for r in rows if r["text"]] + ["a red teapot",
                  "a photo of my teapot", "the teapot floating in an ocean of milk"])
    photos = [r for r in rows if r.get("image")][:3]
    for name, r in zip(("a.jpg", "b.jpg", "c.jpg"), photos):
        (work / name).write_bytes(r["image"])
    configs = work / "configs"
    configs.mkdir()
    for name in ("train_tiny_base.yaml", "train_in_context.yaml"):
        shutil.copy(ROOT / "configs" / name, configs / name)
    # configs/build_dataset.yaml names ViT-B-32 and a DreamBooth expert on a trained pipeline; here the
    # builder runs on the local shards with its deterministic stand-in CLIP and held-out-photo targets.
    (configs / "build_dataset.yaml").write_text(
        'inputs:\n  - {type: webdataset, paths: "../web_shards/*.tar"}\n'
        "output_dir: ../icl_dataset\nk: 3\nrecords_per_partition: 50\n"
        'embedder: {factory: "dataset_builder.testing:planted_embedder"}\n'
        "expert: {type: held_out, min_clip_t: 0.0, min_clip_i: 0.5}\nprompts: {per_cluster: 4}\n",
        encoding="utf-8")


@pytest.mark.slow
def test_readme_sequence_runs_in_order(tmp_path):
    commands = readme_commands()
    names = [c[1] for c in commands]
    assert names[:3] == ["init", "train", "set-stage"] and "convert" in names and names[-1] == "generate", names
    _inputs(tmp_path)
    for argv in commands:
        extra = FAST.get(argv[1], [])
        cmd = [sys.executable, "-m", "suti.cli", *argv[1:], *extra, "--threads", "1"]
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"{shlex.join(argv)} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    for out in ("ckpt/cascade.json", "ckpt-suti/cascade.json", "t2i.png", "grid.png", "runs/icl/stage/config.json"):
        assert (tmp_path / out).exists(), out
