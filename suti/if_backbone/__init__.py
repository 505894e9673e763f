"""SuTI on a pretrained pixel cascade: DeepFloyd IF's diffusers U-Net as a cascade stage.

Needs the optional extra: ``pip install -e ".[if]"`` (diffusers). The core package never imports
this subpackage, so the core install stays free of diffusers.

    schedule  IF's discrete 1000-step DDPM schedule bridged to the project's samplers
    context   encoder reuse and zero-initialised context attention hooked into a UNet2DConditionModel
    stage     IFStage: a cascade stage (sample / training_loss) around a diffusers U-Net
    shapes    IF-I / IF-II shaped U-Net configs (real size for meta-device builds, tiny for tests)
    files     the SuTI-IF stage folder: config naming the base + fingerprint, new layers only
"""
from __future__ import annotations


def require_diffusers():
    """Import diffusers or explain how to get it."""
    try:
        import diffusers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the DeepFloyd IF backbone needs diffusers: pip install -e \".[if]\"") from e
    return diffusers
