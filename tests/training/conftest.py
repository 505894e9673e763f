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


@pytest.fixture(autouse=True)
def _restore_deterministic_flag():
    """A trainer with ``deterministic: true`` sets a process-wide torch flag; keep it from leaking between tests."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)
