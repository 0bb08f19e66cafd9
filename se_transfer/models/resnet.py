"""ResNet / ResNeXt / SENet family for 224x224 inputs, with and without SE blocks.

One implementation covers the baselines and their SE versions, so a comparison changes one thing.
The default SE models are the official (Caffe) architectures of hujie-frank/SENet layer for layer; the options
reproduce the other public flavours (stride in the 3x3, PyTorch stem pooling) and the paper's ablations.

Module names follow torchvision where they can (``layer1``..``layer4``, ``fc``, ``downsample.0/1``); the stem is
``stem.conv1/bn1[/conv2/bn2/conv3/bn3]`` and the SE branch ``se.fc1/fc2``. The stage outputs are called
``res2``..``res5`` (detectron2's names), with strides 4, 8, 16, 32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .se import SEModule

STAGE_NAMES = ("res2", "res3", "res4", "res5")
# Bottleneck "planes" of res2..res5 (outputs are 4x these for bottleneck blocks).
RESNET_STAGE_PLANES = (64, 128, 256, 512)
FEATURE_NAMES = ("stem",) + STAGE_NAMES
SE_VARIANTS = ("standard", "pre", "post", "identity", "3x3")
STEM_TYPES = ("7x7", "deep")
STEM_POOLS = ("caffe", "pytorch")
BLOCK_TYPES = ("basic", "bottleneck")
NORM_TYPES = ("BN", "FrozenBN")


class ShapeSpec(NamedTuple):
    """Channels and stride (w.r.t. the input image) of a feature map."""

    channels: int
    stride: int


def _norm(kind: str, channels: int) -> nn.Module:
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


class _SEOptions(NamedTuple):
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

    def _attach_se(self, se: _SEOptions | None, channels: dict[str, int], hidden: int | None) -> None:
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
            return self.se.residual_sum(out, shortcut, relu=True)
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
        se: _SEOptions | None,
        se_hidden: int | None,
        relu_before_se: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(norm, planes)
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
        se: _SEOptions | None,
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
        self.bn1 = _norm(norm, first_width)
        self.conv2 = nn.Conv2d(first_width, width, 3, stride=s3, padding=1, groups=groups, bias=False)
        self.bn2 = _norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = _norm(norm, out_channels)
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


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """A ValueError naming the argument and its valid values when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


class ResNet(nn.Module):
    """ResNet / ResNeXt / SENet backbone with an optional classifier head.

    Args:
        block: 'basic' (ResNet-18/34) or 'bottleneck'.
        layers: number of blocks in res2..res5.
        num_classes: classifier outputs; 0 keeps no classifier (``forward`` returns pooled features).
        groups, width_per_group: ResNeXt cardinality and bottleneck width d (ResNet: 1, 64).
        reduce_first: the first 1x1 of a bottleneck has width/reduce_first channels (SENet-154: 2).
        stride_in_1x1: put a downsampling block's stride in its first 1x1 (Caffe/MSRA ResNet, official SE-ResNet)
            instead of the 3x3 (torchvision, timm, ResNeXt, SENet-154).
        stem_type: '7x7' (one 7x7/2 conv) or 'deep' (three 3x3 convs: 64/2, 64, stem_width; SENet-154).
        stem_width: channels out of the stem.
        stem_pool: 'caffe' (3x3/2 max-pool, no padding, ceil mode; official models) or 'pytorch' (padding 1).
        downsample_kernel: kernel of the projection shortcuts of res3..res5 (SENet-154: 3, padding 1); res2's is 1x1.
        se_stages: stages (2..5) whose blocks carry SE; () gives the baseline network.
        reduction: SE reduction ratio r.
        se_variant: where the SE sits: 'standard' (residual branch before the sum), 'pre' (before the unit),
            'post' (after the sum and ReLU), 'identity' (on the shortcut), '3x3' (right after the 3x3 conv).
        se_squeeze, se_gate, se_bias, se_no_squeeze: SE ablation options (see ``SEModule``).
        se_channels: explicit SE bottleneck widths for res2..res5 (None: channels // reduction).
        basic_relu_before_se: extra ReLU after bn2 in basic blocks (timm legacy_seresnet18/34 weights need it).
        drop_rate: dropout before the classifier (SENet-154: 0.2).
        norm: 'BN' or 'FrozenBN' for every normalisation layer.
        zero_init_last: initialise the last BN of each residual branch to zero.
        features_only: build a backbone for detection: no head, ``forward`` returns a dict of ``out_features``.
        out_features: names among 'stem', 'res2'..'res5' returned in features mode (default res2..res5).
        freeze_at: freeze the stem (1), the stem and res2 (2), ... up to res5 (5); 0 freezes nothing. Frozen parts
            get ``requires_grad=False`` and FrozenBatchNorm.
        in_chans: input channels.
    """

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        reduce_first: int = 1,
        stride_in_1x1: bool = False,
        stem_type: str = "7x7",
        stem_width: int = 64,
        stem_pool: str = "caffe",
        downsample_kernel: int = 1,
        se_stages: Sequence[int] = (),
        reduction: int = 16,
        se_variant: str = "standard",
        se_squeeze: str = "avg",
        se_gate: str = "sigmoid",
        se_bias: bool = True,
        se_no_squeeze: bool = False,
        se_channels: Sequence[int | None] | None = None,
        basic_relu_before_se: bool = False,
        drop_rate: float = 0.0,
        norm: str = "BN",
        zero_init_last: bool = False,
        features_only: bool = False,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        check_choice("block", block, BLOCK_TYPES)
        check_choice("stem_type", stem_type, STEM_TYPES)
        check_choice("stem_pool", stem_pool, STEM_POOLS)
        check_choice("se_variant", se_variant, SE_VARIANTS)
        check_choice("norm", norm, NORM_TYPES)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must give 4 positive block counts (res2..res5), got {tuple(layers)}")
        bad = [s for s in se_stages if s not in (2, 3, 4, 5)]
        if bad:
            raise ValueError(f"se_stages must be a subset of (2, 3, 4, 5), got {tuple(se_stages)}")
        if se_channels is not None and len(se_channels) != 4:
            raise ValueError(f"se_channels must give 4 widths (res2..res5), got {tuple(se_channels)}")
        if block == "basic" and (groups != 1 or width_per_group != 64):
            raise ValueError("basic blocks support only groups=1 and width_per_group=64")
        if downsample_kernel not in (1, 3):
            raise ValueError(f"downsample_kernel must be 1 or 3, got {downsample_kernel}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5 (0 none, 1 stem, 2 stem+res2, ...), got {freeze_at}")

        self.num_classes = num_classes
        self.features_only = features_only
        self.input_norm: dict | None = None  # set by the weight loader: mean, std, channel order, pixel range
        block_cls = BasicBlock if block == "basic" else Bottleneck

        self.stem = self._make_stem(stem_type, stem_width, stem_pool, norm, in_chans)
        shapes = {"stem": ShapeSpec(stem_width, 4)}
        if features_only:
            out_features = tuple(out_features) if out_features is not None else STAGE_NAMES
            unknown = [f for f in out_features if f not in FEATURE_NAMES]
            if unknown or not out_features:
                raise ValueError(f"out_features must be a non-empty subset of {FEATURE_NAMES}, got {out_features}")
            num_stages = max(FEATURE_NAMES.index(f) for f in out_features)
        else:
            if out_features is not None:
                raise ValueError("out_features is only used with features_only=True")
            num_stages = 4
        se_opts = _SEOptions(se_variant, reduction, se_squeeze, se_gate, se_bias, se_no_squeeze)

        inplanes = stem_width
        for i in range(num_stages):
            planes = RESNET_STAGE_PLANES[i]
            stride = 1 if i == 0 else 2
            out_channels = planes * block_cls.expansion
            stage_se = se_opts if (i + 2) in se_stages else None
            hidden = se_channels[i] if se_channels is not None else None
            blocks = []
            for b in range(layers[i]):
                s = stride if b == 0 else 1
                downsample = None
                if b == 0 and (s != 1 or inplanes != out_channels):
                    k = downsample_kernel if i > 0 else 1
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, out_channels, k, stride=s, padding=k // 2, bias=False),
                        _norm(norm, out_channels),
                    )
                if block == "basic":
                    blk = BasicBlock(inplanes, planes, s, downsample, norm, stage_se, hidden, basic_relu_before_se)
                else:
                    blk = Bottleneck(
                        inplanes, planes, s, downsample, norm, stage_se, hidden,
                        groups=groups, width_per_group=width_per_group,
                        reduce_first=reduce_first, stride_in_1x1=stride_in_1x1,
                    )  # fmt: skip
                blocks.append(blk)
                inplanes = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            shapes[STAGE_NAMES[i]] = ShapeSpec(out_channels, 4 * 2**i)
        self._stage_shapes = shapes
        self.num_features = inplanes

        if features_only:
            self.out_features = tuple(out_features)
        else:
            self.out_features = ()
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.drop_rate = drop_rate
            self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)
        self.freeze_at = 0
        self.freeze(freeze_at)

    @staticmethod
    def _make_stem(stem_type: str, width: int, pool: str, norm: str, in_chans: int) -> nn.Sequential:
        if stem_type == "7x7":
            mods = [
                ("conv1", nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)),
                ("bn1", _norm(norm, width)),
                ("relu1", nn.ReLU(inplace=True)),
            ]
        else:
            mid = width // 2
            mods = [
                ("conv1", nn.Conv2d(in_chans, mid, 3, stride=2, padding=1, bias=False)),
                ("bn1", _norm(norm, mid)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(mid, mid, 3, stride=1, padding=1, bias=False)),
                ("bn2", _norm(norm, mid)),
                ("relu2", nn.ReLU(inplace=True)),
                ("conv3", nn.Conv2d(mid, width, 3, stride=1, padding=1, bias=False)),
                ("bn3", _norm(norm, width)),
                ("relu3", nn.ReLU(inplace=True)),
            ]
        if pool == "caffe":
            mods.append(("pool", nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)))
        else:
            mods.append(("pool", nn.MaxPool2d(3, stride=2, padding=1)))
        return nn.Sequential(OrderedDict(mods))

    def _init_weights(self, zero_init_last: bool) -> None:
        init_weights(self)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                    if isinstance(last, nn.BatchNorm2d):
                        nn.init.zeros_(last.weight)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The built parts in order: ('stem', module), ('res2', layer1), ..."""
        parts = [("stem", self.stem)]
        for i, name in enumerate(STAGE_NAMES):
            if hasattr(self, f"layer{i + 1}"):
                parts.append((name, getattr(self, f"layer{i + 1}")))
        return parts

    def freeze(self, freeze_at: int) -> ResNet:
        """Freeze the first ``freeze_at`` parts (1: stem, 2: stem + res2, ...): no gradients, frozen BatchNorm."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        for idx, (_, part) in enumerate(self.stages(), start=1):
            if idx > freeze_at:
                break
            for p in part.parameters():
                p.requires_grad_(False)
            convert_frozen_batchnorm(part)
        self.freeze_at = max(self.freeze_at, freeze_at)
        return self

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output feature (features mode) or of every stage (classification mode)."""
        names = self.out_features or tuple(n for n, _ in self.stages())
        return {n: self._stage_shapes[n] for n in names}

    def forward_stages(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the trunk and return the named stage outputs ('stem', 'res2'..'res5')."""
        outputs = {}
        wanted = set(names)
        for name, part in self.stages():
            x = part(x)
            if name in wanted:
                outputs[name] = x
                if len(outputs) == len(wanted):
                    break
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (before pooling)."""
        for _, part in self.stages():
            x = part(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool, dropout, classifier."""
        x = torch.flatten(self.global_pool(x), 1)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.features_only:
            return self.forward_stages(x, self.out_features)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs (0: none)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
