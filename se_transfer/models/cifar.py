"""CIFAR networks of the SENet paper's Tables 4 and 5 (32x32 inputs), each with and without SE blocks.

* ``CifarResNet``: He et al. 2016 (sec. 4.2), post-activation basic blocks, option-A shortcuts (ResNet-20/110).
* ``PreActResNet``: He et al. 2016 "Identity Mappings", pre-activation bottlenecks (ResNet-164).
* ``WideResNet``: Zagoruyko & Komodakis 2016, pre-activation basic blocks (WRN-16-8).
* ``ShakeShake`` (``se_transfer.models.shake_shake``): Gastaldi 2017, two residual branches combined stochastically.

With ``se=True`` every residual unit carries an ``SEModule`` on its residual branch, just before the sum with the
identity; everything else is unchanged, so a baseline and its SE twin differ in one thing. All networks end in global
average pooling, so they also run on larger inputs. Module names: ``conv1`` (stem), ``layer1``..``layer3``, ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .info import ModelInfo
from .layers import check_choice, init_weights
from .registry import register_model
from .se import SEModule

SHORTCUT_TYPES = ("A", "B")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def blocks_per_stage(depth: int, layers_per_block: int, extra: int, family: str) -> int:
    n, rest = divmod(depth - extra, 3 * layers_per_block)
    if rest or n < 1:
        raise ValueError(f"{family} depth must be {3 * layers_per_block}n+{extra} with n >= 1, got {depth}")
    return n


# ----------------------------------------------------------------------------------------------- shared parts


class CifarNet(nn.Module):
    """Shared trunk-to-head plumbing: ``conv1`` -> stages -> ``final`` -> global average pool -> ``fc``."""

    num_features: int

    def _finish(self, num_classes: int, num_features: int) -> None:
        self.num_classes = num_classes
        self.num_features = num_features
        self.info = ModelInfo()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_weights(self)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The first convolution (and what follows it before the first stage)."""
        return self.conv1(x)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """What follows the last stage before pooling (identity unless a subclass overrides it)."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling (N x num_features x H/4 x W/4)."""
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.final(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool and classifier."""
        return self.fc(torch.flatten(self.global_pool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N x num_classes), or pooled features when ``num_classes`` is 0."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.fc, nn.Linear):
            nn.init.zeros_(self.fc.bias)


class ShortcutA(nn.Module):
    """He et al.'s option-A shortcut: identity subsampled with stride s, extra channels zero-padded; no parameters.

    As in fb.resnet.torch, the zero channels are appended after the identity channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot reduce channels ({in_channels} -> {out_channels})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and zero-pad the channels."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        """Channels and stride in the module's repr."""
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def make_se(se: bool, channels: int, reduction: int) -> SEModule | None:
    return SEModule(channels, reduction=reduction) if se else None


# ------------------------------------------------------------------------------------ ResNet-20/110 (He et al.)


class CifarBasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, [SE], + shortcut, ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int, shortcut: str, se: bool, reduction: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = make_se(se, channels, reduction)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            if shortcut == "A":
                self.downsample = ShortcutA(in_channels, channels, stride)
            else:
                self.downsample = nn.Sequential(conv1x1(in_channels, channels, stride), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(se(branch(x)) + shortcut(x))."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            return self.se(out, shortcut)
        return self.relu(out + shortcut)


class CifarResNet(CifarNet):
    """He et al.'s CIFAR ResNet (sec. 4.2): depth 6n+2, 3x3 conv 16, stages of n basic blocks of 16/32/64 channels.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs (0: no classifier).
        se: put an SE block on every residual branch (before the sum with the identity).
        reduction: SE reduction ratio r.
        shortcut: 'A' (paper's CIFAR choice: subsample + zero-pad, no parameters) or 'B' (1x1 conv + BN projection).
        in_chans: input channels.
    """

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        se: bool = False,
        reduction: int = 16,
        shortcut: str = "A",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        check_choice("shortcut", shortcut, SHORTCUT_TYPES)
        n = blocks_per_stage(depth, 2, 2, "CifarResNet")
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 16
        for i, channels in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(CifarBasicBlock(in_channels, channels, stride, shortcut, se, reduction))
                in_channels = channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self._finish(num_classes, in_channels)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv3x3-BN-ReLU."""
        return self.relu(self.bn1(self.conv1(x)))


# ------------------------------------------------------------------------------ pre-activation ResNet-164


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (4x), [SE], + shortcut.

    When the shape changes, the 1x1 projection shortcut takes the pre-activated input (He et al.'s 'both_preact').
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, se: bool, reduction: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = make_se(se, out_channels, reduction)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """se(branch(x)) + shortcut(x), no activation after the sum."""
        pre = F.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.se is not None:
            return self.se(out, shortcut, False)
        return out + shortcut


class PreActResNet(CifarNet):
    """He et al.'s pre-activation bottleneck ResNet for CIFAR: depth 9n+2 (164: n=18).

    3x3 conv 16, three stages of n bottlenecks of widths 16/32/64 (outputs 64/128/256), final BN-ReLU, pool, FC.
    The stride of a stage's first unit sits in its 3x3 convolution.

    Args:
        depth: 9n+2 (164, 1001, ...).
        num_classes: classifier outputs (0: no classifier).
        se: put an SE block on every residual branch (before the addition).
        reduction: SE reduction ratio r.
        in_chans: input channels.
    """

    def __init__(
        self, depth: int = 164, num_classes: int = 10, se: bool = False, reduction: int = 16, in_chans: int = 3
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth, 3, 2, "PreActResNet")
        self.conv1 = conv3x3(in_chans, 16)
        in_channels = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(PreActBottleneck(in_channels, planes, stride, se, reduction))
                in_channels = planes * PreActBottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn_final = nn.BatchNorm2d(in_channels)
        self._finish(num_classes, in_channels)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The last BN-ReLU."""
        return F.relu(self.bn_final(x), inplace=True)


# ------------------------------------------------------------------------------------------ Wide ResNet


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3 (stride), BN-ReLU-[dropout]-conv3x3, [SE], + shortcut.

    When the shape changes, the 1x1 projection shortcut takes the pre-activated input (as in the WRN code).
    """

    def __init__(
        self, in_channels: int, channels: int, stride: int, drop_rate: float, se: bool, reduction: int
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.relu = nn.ReLU(inplace=True)
        self.drop_rate = drop_rate
        self.se = make_se(se, channels, reduction)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = conv1x1(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """se(branch(x)) + shortcut(x), no activation after the sum."""
        pre = F.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        if self.se is not None:
            return self.se(out, shortcut, False)
        return out + shortcut


class WideResNet(CifarNet):
    """Zagoruyko & Komodakis' WRN-d-k: depth 6n+4, 3x3 conv 16, stages of n wide blocks of 16k/32k/64k channels.

    WRN-16-8: n=2, widths 16, 128, 256, 512. Final BN-ReLU, pool, FC.

    Args:
        depth: 6n+4 (16, 22, 28, 40, ...).
        widen_factor: k.
        num_classes: classifier outputs (0: no classifier).
        drop_rate: dropout between the two convolutions of a block (paper's WRN-16-8 result: 0).
        se: put an SE block on every residual branch (before the addition).
        reduction: SE reduction ratio r.
        in_chans: input channels.
    """

    def __init__(
        self,
        depth: int = 16,
        widen_factor: int = 8,
        num_classes: int = 10,
        drop_rate: float = 0.0,
        se: bool = False,
        reduction: int = 16,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth, 2, 4, "WideResNet")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        self.conv1 = conv3x3(in_chans, 16)
        in_channels = 16
        for i, base in enumerate((16, 32, 64)):
            channels = base * widen_factor
            blocks = []
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(WideBasicBlock(in_channels, channels, stride, drop_rate, se, reduction))
                in_channels = channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn_final = nn.BatchNorm2d(in_channels)
        self._finish(num_classes, in_channels)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The last BN-ReLU."""
        return F.relu(self.bn_final(x), inplace=True)


# ------------------------------------------------------------------------------------------- registration

_DEFS: dict[str, tuple[type[nn.Module], dict]] = {
    "resnet20": (CifarResNet, {"depth": 20}),
    "resnet110": (CifarResNet, {"depth": 110}),
    "preact_resnet164": (PreActResNet, {"depth": 164}),
    "wrn16_8": (WideResNet, {"depth": 16, "widen_factor": 8}),
}


def register_cifar(defs: dict[str, tuple[type[nn.Module], dict]]) -> None:
    """Register each CIFAR model and its SE twin (``se_`` + name, ``se=True``)."""
    for name, (builder, kwargs) in defs.items():
        register_model(name, builder, "cifar", **kwargs)
        register_model("se_" + name, builder, "cifar", **kwargs, se=True)


register_cifar(_DEFS)
