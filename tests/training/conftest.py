import logging

import pytest
import torch
from training_helpers import colour_folder

from suti.tiny import build_tiny_t5


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A tiny T5 encoder + tokenizer folder, built locally (no network)."""
    return str(build_tiny_t5(tmp_path_factory.mktemp("t5") / "t5"))


@pytest.fixture(scope="session")
def colours(tmp_path_factory):
    return str(colour_folder(tmp_path_factory.mktemp("colours") / "data"))


@pytest.fixture(autouse=True)
def _one_thread_quiet_libraries():
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads that
    # wait for each other make conv2d tens of times slower. One thread keeps these tests fast everywhere.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    yield
    torch.set_num_threads(threads)


# A very small stage (16 px, 2 levels) for tests that check mechanics, not image quality.
MICRO_STAGE = {
    "name": "base",
    "unet": {"image_size": 16, "base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": [1, 1],
             "self_attention": [False, True], "cross_attention": [False, True], "head_dim": 16,
             "text_embed_dim": 64, "num_groups": 4},
    "lowres_size": None,
}


def train_config(tmp_path, t5, source, **over):
    """A TrainConfig dict for a short CPU run; ``over`` entries replace top-level keys or update sections."""
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "stage": {"config": MICRO_STAGE},
        "text": {"encoder": t5, "max_length": 8},
        "data": {"sources": [source]},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "ema": {"decay": 0.9},
        "sample": {"steps": 2, "guidance": 2.0, "num_held": 2},
        "batch_size": 2, "steps": 4, "checkpoint_every": 1000, "log_every": 1, "progress": False,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture(autouse=True)
def _restore_deterministic_flag():
    """A trainer with ``deterministic: true`` sets a process-wide torch flag; keep it from leaking between tests."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)
