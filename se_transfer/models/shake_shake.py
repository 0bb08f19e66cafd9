"""Shake-Shake (Gastaldi 2017) for CIFAR, with and without SE: two residual branches combined stochastically
(26 2x96d with basic branches, Shake-Even 29 2x4x64d with bottleneck branches), as in the SENet paper's Table 4/5.

With ``se=True`` the SE block acts on the combined branches, just before the sum with the shortcut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx

from .cifar import CifarNet, blocks_per_stage, conv1x1, conv3x3, make_se, register_cifar
from .layers import check_choice

SHAKE_FORWARD = ("shake", "even")
SHAKE_BACKWARD = ("shake", "even", "keep")
SHAKE_LEVELS = ("image", "batch")
SHAKE_BLOCKS = ("basic", "bottleneck")

# ------------------------------------------------------------------------------------------- Shake-Shake


class ShakeShakeFunction(torch.autograd.Function):
    """alpha * x1 + (1 - alpha) * x2 forward; the gradient is split beta / (1 - beta) backward.

    ``alpha`` and ``beta`` broadcast against x1 (N x 1 x 1 x 1 per image, 1 x 1 x 1 x 1 per batch); they get no
    gradient.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, x1: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        """The forward combination with alpha."""
        ctx.save_for_backward(beta)
        return torch.lerp(x2, x1, alpha)  # x2 + alpha * (x1 - x2)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        """Gradients beta * g for x1 and (1 - beta) * g for x2."""
        (beta,) = ctx.saved_tensors
        return grad * beta, grad * (1 - beta), None, None


def shake_shake(
    x1: torch.Tensor,
    x2: torch.Tensor,
    training: bool,
    forward: str = "shake",
    backward: str = "shake",
    level: str = "image",
) -> torch.Tensor:
    """Combine two branch outputs as Shake-Shake does: random coefficients in training, 0.5 / 0.5 in evaluation.

    ``forward``: 'shake' (alpha ~ U(0, 1)) or 'even' (0.5); ``backward``: 'shake' (beta ~ U(0, 1), drawn independently
    of alpha), 'even' (0.5) or 'keep' (beta = alpha); ``level``: 'image' (one coefficient per image) or 'batch'.
    The coefficients come from the default torch RNG of the tensors' device.
    """
    if not training:
        return (x1 + x2) * 0.5
    shape = (x1.shape[0] if level == "image" else 1, 1, 1, 1)
    kw = {"device": x1.device, "dtype": x1.dtype}
    alpha = torch.rand(shape, **kw) if forward == "shake" else torch.full(shape, 0.5, **kw)
    if backward == "keep":
        beta = alpha
    else:
        beta = torch.rand(shape, **kw) if backward == "shake" else torch.full(shape, 0.5, **kw)
    return ShakeShakeFunction.apply(x1, x2, alpha, beta)


class ShakeShortcut(nn.Module):
    """Gastaldi's shortcut when the shape changes: ReLU, then two paths concatenated along channels, then BN.

    Path 1: 1x1 average pooling with stride s (subsampling) and a 1x1 conv to C_out/2 channels. Path 2: the same on the
    input shifted by one pixel right and down (zero row/column on top/left), so it sees the other pixels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"the Shake-Shake shortcut needs an even channel count, got {out_channels}")
        self.stride = stride
        self.conv1 = conv1x1(in_channels, out_channels // 2)
        self.conv2 = conv1x1(in_channels, out_channels // 2)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU, two subsampled 1x1 convolutions (one on the shifted input), concatenation, BN."""
        x = F.relu(x)
        s = self.stride
        shifted = F.pad(x[:, :, :-1, :-1], (1, 0, 1, 0))
        y1 = self.conv1(x[:, :, ::s, ::s])
        y2 = self.conv2(shifted[:, :, ::s, ::s])
        return self.bn(torch.cat([y1, y2], dim=1))


def _shake_branch(
    block: str, in_channels: int, out_channels: int, stride: int, inner: int, groups: int
) -> nn.Sequential:
    # The leading ReLU must not be in place: the other branch and the shortcut read the same input.
    if block == "basic":
        layers = [
            nn.ReLU(inplace=False),
            conv3x3(in_channels, out_channels, stride),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
        ]
    else:
        layers = [
            nn.ReLU(inplace=False),
            conv1x1(in_channels, inner),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            conv3x3(inner, inner, stride, groups=groups),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            conv1x1(inner, out_channels),
            nn.BatchNorm2d(out_channels),
        ]
    return nn.Sequential(*layers)


class ShakeBlock(nn.Module):
    """Two residual branches combined by ``shake_shake``, [SE on the combination], + shortcut; no ReLU after the sum."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        block: str,
        inner: int,
        groups: int,
        se: bool,
        reduction: int,
        shake_forward: str,
        shake_backward: str,
        shake_level: str,
    ) -> None:
        super().__init__()
        self.branch1 = _shake_branch(block, in_channels, out_channels, stride, inner, groups)
        self.branch2 = _shake_branch(block, in_channels, out_channels, stride, inner, groups)
        self.se = make_se(se, out_channels, reduction)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = ShakeShortcut(in_channels, out_channels, stride)
        self.shake_forward = shake_forward
        self.shake_backward = shake_backward
        self.shake_level = shake_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """se(shake(branch1(x), branch2(x))) + shortcut(x)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = shake_shake(
            self.branch1(x), self.branch2(x), self.training, self.shake_forward, self.shake_backward, self.shake_level
        )
        if self.se is not None:
            return self.se(out, shortcut, False)
        return out + shortcut


class ShakeShake(CifarNet):
    """Gastaldi's Shake-Shake ResNets for CIFAR: 3x3 conv + BN stem, three stages of two-branch blocks, ReLU, pool, FC.

    Our reading of the two nets of the SENet paper:

    * 'Shake-Shake 26 2x96d' (C10, ``block='basic'``): depth 6n+2 with n=4 blocks per stage, stem width 16, stage
      widths d, 2d, 4d = 96/192/384. Each branch is ReLU-conv3x3-BN-ReLU-conv3x3-BN (stride in the first conv),
      exactly the layout of Gastaldi's Torch code.
    * 'Shake-Even 29 2x4x64d' (C100, ``block='bottleneck'``): the ResNeXt-29 of Gastaldi's CIFAR-100 experiment with 2
      residual branches, each a ResNeXt bottleneck of cardinality 4 and width 64 per group: ReLU-conv1x1-BN-ReLU-
      grouped conv3x3 (4 groups, stride)-BN-ReLU-conv1x1-BN with inner widths 4*64*2^i = 256/512/1024 and output
      widths 4*d*2^i = 256/512/1024; depth 9n+2 with n=3 blocks per stage; stem width 64 (ResNeXt-29's).

    The shortcut is the identity, or ``ShakeShortcut`` where the shape changes (including 16 -> 96 in the first
    stage). The branches are combined by ``shake_shake`` (forward 'shake'/'even', backward 'shake'/'even'/'keep',
    level 'image'/'batch'; evaluation always uses 0.5/0.5). Shake-Shake-Image is forward 'shake', backward 'shake',
    level 'image'; Shake-Even is forward 'shake', backward 'even'. With SE, the SE block acts on the combination of
    the two branches, before the addition with the shortcut.

    Args:
        depth: 6n+2 for basic blocks, 9n+2 for bottlenecks.
        base_width: d, the width of the first stage (basic) or the width per group (bottleneck).
        num_classes: classifier outputs (0: no classifier).
        block: 'basic' or 'bottleneck'.
        cardinality: groups of the bottleneck's 3x3 convolution (basic blocks: must be 1).
        stem_width: channels of the stem convolution.
        se: put an SE block on the combined residual branches (before the addition).
        reduction: SE reduction ratio r.
        shake_forward, shake_backward, shake_level: see ``shake_shake``.
        in_chans: input channels.
    """

    def __init__(
        self,
        depth: int = 26,
        base_width: int = 96,
        num_classes: int = 10,
        block: str = "basic",
        cardinality: int = 1,
        stem_width: int = 16,
        se: bool = False,
        reduction: int = 16,
        shake_forward: str = "shake",
        shake_backward: str = "shake",
        shake_level: str = "image",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        check_choice("block", block, SHAKE_BLOCKS)
        check_choice("shake_forward", shake_forward, SHAKE_FORWARD)
        check_choice("shake_backward", shake_backward, SHAKE_BACKWARD)
        check_choice("shake_level", shake_level, SHAKE_LEVELS)
        if block == "basic" and cardinality != 1:
            raise ValueError("Shake-Shake basic blocks support only cardinality=1")
        n = blocks_per_stage(depth, 2 if block == "basic" else 3, 2, f"ShakeShake ({block})")
        self.conv1 = conv3x3(in_chans, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_channels = stem_width
        opts = {
            "se": se,
            "reduction": reduction,
            "shake_forward": shake_forward,
            "shake_backward": shake_backward,
            "shake_level": shake_level,
        }
        for i in range(3):
            scale = 2**i
            out_channels = base_width * scale if block == "basic" else 4 * base_width * scale
            inner = cardinality * base_width * scale
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(ShakeBlock(in_channels, out_channels, stride, block, inner, cardinality, **opts))
                in_channels = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self._finish(num_classes, in_channels)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv3x3-BN (the branches start with a ReLU)."""
        return self.bn1(self.conv1(x))

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The last ReLU."""
        return F.relu(x)


register_cifar(
    {
        "shake_shake26_2x96d": (ShakeShake, {"depth": 26, "base_width": 96, "block": "basic"}),
        "shake_even29_2x4x64d": (
            ShakeShake,
            {
                "depth": 29,
                "base_width": 64,
                "block": "bottleneck",
                "cardinality": 4,
                "stem_width": 64,
                "shake_forward": "shake",
                "shake_backward": "even",
            },
        ),
    }
)
