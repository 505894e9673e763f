"""IF-shaped ``UNet2DConditionModel`` configs: real size (for meta-device builds and memory estimates)
and tiny (same block types and options, small channels) for offline tests.

The block layout and options are IF's as diffusers converts them (``SimpleCrossAttn*`` and
``Resnet*sample*Block2D`` blocks, GELU, GroupNorm, scale-shift time conditioning, a text embedding
added to the time embedding, T5-XXL width 4096, 6 output channels; IF-II adds the noise-level class
embedding and 6 input channels). The real models' channel widths could not be read offline here:
they are set so the parameter counts land near the published 4.3B (IF-I-XL) and 1.2B (IF-II-L).
For exact figures build from the model's own ``unet/config.json`` (``build_unet(config, meta=True)``).
"""
from __future__ import annotations

import torch

_IF_COMMON = dict(
    act_fn="gelu", addition_embed_type="text", cross_attention_norm="group_norm",
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", resnet_time_scale_shift="scale_shift",
    only_cross_attention=False, upcast_attention=False, out_channels=6, norm_num_groups=32,
)


# Options diffusers' IF conversion sets on the super-resolution U-Nets only (scripts/convert_if.py): attention
# blocks without self-attention, GELU time embedding, the time activation on the resnet skip, 1/sqrt(1/2)
# output scaling of resnets and the middle block.
_IF_TWO_OPTIONS = dict(
    only_cross_attention=True, time_embedding_act_fn="gelu", resnet_skip_time_act=True,
    resnet_out_scale_factor=1 / 0.7071, mid_block_scale_factor=1 / 0.7071,
)


def if_stage_one_config(width: int = 704, text_dim: int = 4096, sample_size: int = 64, layers: int = 3,
                        head_dim: int = 64, pool_heads: int = 64) -> dict:
    """IF-I: 64 px base, 4 levels, attention at 32/16/8 px."""
    return dict(
        _IF_COMMON, sample_size=sample_size, in_channels=3, layers_per_block=layers,
        block_out_channels=(width, 2 * width, 3 * width, 4 * width),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                          "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                        "ResnetUpsampleBlock2D"),
        encoder_hid_dim=text_dim, cross_attention_dim=4 * width, attention_head_dim=head_dim,
        addition_embed_type_num_heads=pool_heads,
    )


def if_stage_two_config(width: int = 384, text_dim: int = 4096, sample_size: int = 256, layers: int = 2,
                        head_dim: int = 64, pool_heads: int = 64) -> dict:
    """IF-II: 64 -> 256 px super-resolution, 5 levels, attention at the two lowest resolutions;
    6 input channels (noisy image + upsampled low-res) and the noise level as a timestep class embedding."""
    return dict(
        _IF_COMMON, **_IF_TWO_OPTIONS, time_embedding_dim=4 * width,
        sample_size=sample_size, in_channels=6, layers_per_block=layers, class_embed_type="timestep",
        block_out_channels=(width // 2, width, 2 * width, 4 * width, 4 * width),
        down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("SimpleCrossAttnDownBlock2D",) * 2,
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 2 + ("ResnetUpsampleBlock2D",) * 3,
        encoder_hid_dim=text_dim, cross_attention_dim=4 * width, attention_head_dim=head_dim,
        addition_embed_type_num_heads=pool_heads,
    )


def tiny_stage_one_config(text_dim: int = 32, sample_size: int = 16) -> dict:
    """IF-I's blocks and options at test size: 3 levels of 32/64/64 channels."""
    return dict(
        _IF_COMMON, sample_size=sample_size, in_channels=3, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        encoder_hid_dim=text_dim, cross_attention_dim=64, attention_head_dim=16, addition_embed_type_num_heads=2,
    )


def tiny_stage_two_config(text_dim: int = 32, sample_size: int = 32) -> dict:
    """IF-II's blocks and options at test size (6 input channels, timestep class embedding)."""
    return dict(
        _IF_COMMON, **_IF_TWO_OPTIONS, time_embedding_dim=64,
        sample_size=sample_size, in_channels=6, layers_per_block=1, class_embed_type="timestep",
        block_out_channels=(32, 32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        encoder_hid_dim=text_dim, cross_attention_dim=64, attention_head_dim=16, addition_embed_type_num_heads=2,
    )


def build_unet(config: dict, meta: bool = False, seed: int | None = None):
    """A ``UNet2DConditionModel`` with random weights from a config dict (on the meta device: no memory)."""
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    if meta:
        with torch.device("meta"):
            return UNet2DConditionModel(**cfg)
    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DConditionModel(**cfg)
