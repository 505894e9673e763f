import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models: one thread avoids oversubscription on small shared CI machines.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def tiny_t5_dir():
    from suti.tiny import build_tiny_t5

    return build_tiny_t5()


@pytest.fixture(scope="session")
def tiny_text_encoder(tiny_t5_dir):
    from suti.text import TextEncoder

    return TextEncoder.from_pretrained(tiny_t5_dir, max_length=16)
