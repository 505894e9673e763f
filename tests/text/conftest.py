import pytest

from suti.text import TextEncoder
from suti.tiny import build_tiny_bert, build_tiny_t5


@pytest.fixture(scope="session")
def t5_folder():
    return build_tiny_t5()


@pytest.fixture(scope="session")
def bert_folder():
    return build_tiny_bert()


@pytest.fixture(scope="session")
def t5_encoder(t5_folder):
    """Shared read-only encoder; tests that add tokens load their own."""
    return TextEncoder.from_pretrained(t5_folder, max_length=16)


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """Tiny models run far faster on one thread on a shared, busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
