"""Shared fixtures: a tiny open_clip model built locally and saved as a local-dir: folder."""

from __future__ import annotations

import faiss
import pytest
import torch

from retrieval_testdata import TINY_CLIP_CFG


@pytest.fixture(scope="module", autouse=True)
def single_faiss_thread():
    # The test machines are shared 2-core boxes: OpenMP teams spin-wait badly when
    # oversubscribed (a PQ training took 19 s with 2 threads vs 3.6 s with 1).
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random tiny CLIP saved in the local-dir: layout."""
    from retrieval import Embedder

    torch.manual_seed(0)
    embedder = Embedder.from_config(TINY_CLIP_CFG, name="tiny-clip-test")
    folder = tmp_path_factory.mktemp("tiny_clip")
    embedder.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_embedder(tiny_clip_dir):
    from retrieval import Embedder

    return Embedder.from_pretrained(f"local-dir:{tiny_clip_dir}")
