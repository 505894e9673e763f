import pytest
import torch

from if_helpers import TEXT_DIM, TEXT_LEN


@pytest.fixture
def tiny_one():
    from suti.if_backbone.shapes import build_unet, tiny_stage_one_config

    return build_unet(tiny_stage_one_config(text_dim=TEXT_DIM), seed=0).eval()


@pytest.fixture
def tiny_two():
    from suti.if_backbone.shapes import build_unet, tiny_stage_two_config

    return build_unet(tiny_stage_two_config(text_dim=TEXT_DIM), seed=1).eval()


@pytest.fixture
def null_text():
    return torch.randn(1, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(7))
