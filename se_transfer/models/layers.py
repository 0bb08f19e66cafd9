"""Parts shared by the model families: norm layers, frozen BatchNorm conversion, initialisation, argument checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORM_TYPES = ("BN", "FrozenBN")


class ShapeSpec(NamedTuple):
    """Channels and stride (w.r.t. the input image) of a feature map."""

    channels: int
    stride: int


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d ('BN') or FrozenBatchNorm2d ('FrozenBN') over ``channels``."""
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    return FrozenBatchNorm2d(channels)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every BatchNorm2d replaced by a FrozenBatchNorm2d holding the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions, BN weight 1 and bias 0, zero biases of convolutions and classifiers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """A ValueError naming the argument and its valid values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
