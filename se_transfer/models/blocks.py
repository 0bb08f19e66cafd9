"""The residual units of the ResNet family (basic and bottleneck), with the SE block in any of the paper's placements.

Where the SE sits (``se_variant``) is the only thing the placements change: 'standard' (on the residual branch,
before the sum: the paper's SE-ResNet module), 'pre' (before the unit), 'post' (after the sum and ReLU), 'identity'
(on the shortcut), '3x3' (right after the 3x3 conv). The forward passes are the textbook ones; the fast forms are
applied by ``se_transfer.models.fast_se.set_se_impl``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .layers import norm_layer
from .se import SEModule

SE_VARIANTS = ("standard", "pre", "post", "identity", "3x3")


class SEOptions(NamedTuple):
    variant: str
    reduction: int
    squeeze: str
    gate: str
    bias: bool
    no_squeeze: bool

    def make(self, channels: int, hidden: int | None) -> SEModule:
        return SEModule(
            channels,
            reduction=self.reduction,
            hidden_channels=hidden,
            squeeze=self.squeeze,
            gate=self.gate,
            bias=self.bias,
            no_squeeze=self.no_squeeze,
        )


class _ResidualBlock(nn.Module):
    """Shared forward of the residual units: where the SE sits is the only thing the variants change."""

    se_variant: str | None

    def _attach_se(self, se: SEOptions | None, channels: dict[str, int], hidden: int | None) -> None:
        self.se_variant = None if se is None else se.variant
        if se is not None:
            self.se = se.make(channels[se.variant], hidden)

    def residual(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variant = self.se_variant
        shortcut = self.shortcut(x)
        if variant == "pre":
            x = self.se(x)
        out = self.residual(x)
        if variant == "standard":
            return self.se(out, shortcut)
        if variant == "identity":
            shortcut = self.se(shortcut)
        out = self.relu(out + shortcut)
        if variant == "post":
            out = self.se(out)
        return out


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm: str,
        se: SEOptions | None,
        se_hidden: int | None,
        relu_before_se: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        # timm's legacy_seresnet18/34 apply a ReLU after bn2 (before the SE and the sum); their weights need it.
        self.relu_before_se = relu_before_se
        self._attach_se(
            se, {"standard": planes, "post": planes, "identity": planes, "pre": inplanes, "3x3": planes}, se_hidden
        )

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.se_variant == "3x3":
            out = self.se(out)
        out = self.bn2(self.conv2(out))
        if self.relu_before_se:
            out = self.relu(out)
        return out


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (grouped for ResNeXt/SENet) -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm: str,
        se: SEOptions | None,
        se_hidden: int | None,
        groups: int = 1,
        width_per_group: int = 64,
        reduce_first: int = 1,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        first_width = width // reduce_first
        out_channels = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, first_width, 1, stride=s1, bias=False)
        self.bn1 = norm_layer(norm, first_width)
        self.conv2 = nn.Conv2d(first_width, width, 3, stride=s3, padding=1, groups=groups, bias=False)
        self.bn2 = norm_layer(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._attach_se(
            se,
            {"standard": out_channels, "post": out_channels, "identity": out_channels, "pre": inplanes, "3x3": width},
            se_hidden,
        )

    def residual_head(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch up to the input of its last 1x1 conv."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.se_variant == "3x3":
            out = self.se(out)
        return out

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(self.residual_head(x)))
