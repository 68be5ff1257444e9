"""Architectures xrstudy adds to timm's registry: `resnetv2_tiny_bit`, a BiT ResNet-v2 in miniature for CPU
demos and tests. Importing this module registers it (xrstudy.training.models and xrstudy.training.paper_weights do)."""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.layers import GroupNormAct, StdConv2d
from timm.models import register_model
from timm.models.resnetv2 import ResNetV2

from xrstudy.training.checkpoints import CheckpointError


@register_model
def resnetv2_tiny_bit(pretrained: bool = False, **kwargs: Any) -> ResNetV2:
    """BiT ResNet-v2 in miniature: one pre-activation bottleneck per stage, GroupNorm + StdConv2d.

    ~0.3M parameters; `timm.create_model("resnetv2_tiny_bit")` works once xrstudy.training.archs (or
    xrstudy.training.models) is imported.
    """
    if pretrained:
        raise CheckpointError("resnetv2_tiny_bit has no published weights; use init=scratch or a local file")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    return ResNetV2(
        layers=[1, 1, 1, 1],
        channels=(32, 64, 128, 256),  # bottleneck widths 8, 16, 32, 64
        stem_chs=16,
        stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=8),  # 8 divides every width above
        **kwargs,
    )


__all__ = ["resnetv2_tiny_bit"]
