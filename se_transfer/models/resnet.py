"""The ResNet / ResNeXt / SENet family for 224x224 inputs, with and without SE blocks: the network, its options
(``ResNetConfig``), how its structure is read back from a state dict, the public weight layouts' flavours and input
normalisation, and the registered models.

One implementation covers the baselines and their SE versions, so a comparison changes one thing.
The default SE models are the official (Caffe) architectures of hujie-frank/SENet layer for layer; the options
reproduce the other public flavours (stride in the 3x3, PyTorch stem pooling) and the paper's ablations.

Module names follow torchvision where they can (``layer1``..``layer4``, ``fc``, ``downsample.0/1``); the stem is
``stem.conv1/bn1[/conv2/bn2/conv3/bn3]`` and the SE branch ``se.fc1/fc2``. The stage outputs are called
``res2``..``res5`` (detectron2's names), with strides 4, 8, 16, 32.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .blocks import SE_VARIANTS, BasicBlock, Bottleneck, SEOptions
from .info import DETECTRON2_MSRA_BGR, IMAGENET_RGB, ModelInfo
from .layers import NORM_TYPES, ShapeSpec, check_choice, convert_frozen_batchnorm, init_weights, norm_layer
from .layouts import WeightsError
from .registry import register_model

STAGE_NAMES = ("res2", "res3", "res4", "res5")
# Bottleneck "planes" of res2..res5 (outputs are 4x these for bottleneck blocks).
RESNET_STAGE_PLANES = (64, 128, 256, 512)
FEATURE_NAMES = ("stem",) + STAGE_NAMES
STEM_TYPES = ("7x7", "deep")
STEM_POOLS = ("caffe", "pytorch")
BLOCK_TYPES = ("basic", "bottleneck")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Every option of a :class:`ResNet`, checked when made.

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

    block: str = "bottleneck"
    layers: Sequence[int] = (3, 4, 6, 3)
    num_classes: int = 1000
    groups: int = 1
    width_per_group: int = 64
    reduce_first: int = 1
    stride_in_1x1: bool = False
    stem_type: str = "7x7"
    stem_width: int = 64
    stem_pool: str = "caffe"
    downsample_kernel: int = 1
    se_stages: Sequence[int] = ()
    reduction: int = 16
    se_variant: str = "standard"
    se_squeeze: str = "avg"
    se_gate: str = "sigmoid"
    se_bias: bool = True
    se_no_squeeze: bool = False
    se_channels: Sequence[int | None] | None = None
    basic_relu_before_se: bool = False
    drop_rate: float = 0.0
    norm: str = "BN"
    zero_init_last: bool = False
    features_only: bool = False
    out_features: Sequence[str] | None = None
    freeze_at: int = 0
    in_chans: int = 3

    def __post_init__(self) -> None:
        check_choice("block", self.block, BLOCK_TYPES)
        check_choice("stem_type", self.stem_type, STEM_TYPES)
        check_choice("stem_pool", self.stem_pool, STEM_POOLS)
        check_choice("se_variant", self.se_variant, SE_VARIANTS)
        check_choice("norm", self.norm, NORM_TYPES)
        if len(self.layers) != 4 or any(int(n) < 1 for n in self.layers):
            raise ValueError(f"layers must give 4 positive block counts (res2..res5), got {tuple(self.layers)}")
        if any(s not in (2, 3, 4, 5) for s in self.se_stages):
            raise ValueError(f"se_stages must be a subset of (2, 3, 4, 5), got {tuple(self.se_stages)}")
        if self.se_channels is not None and len(self.se_channels) != 4:
            raise ValueError(f"se_channels must give 4 widths (res2..res5), got {tuple(self.se_channels)}")
        if self.block == "basic" and (self.groups != 1 or self.width_per_group != 64):
            raise ValueError("basic blocks support only groups=1 and width_per_group=64")
        if self.downsample_kernel not in (1, 3):
            raise ValueError(f"downsample_kernel must be 1 or 3, got {self.downsample_kernel}")
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5 (0 none, 1 stem, 2 stem+res2, ...), got {self.freeze_at}")
        if self.features_only:
            out = tuple(self.out_features) if self.out_features is not None else STAGE_NAMES
            unknown = [f for f in out if f not in FEATURE_NAMES]
            if unknown or not out:
                raise ValueError(f"out_features must be a non-empty subset of {FEATURE_NAMES}, got {out}")
        elif self.out_features is not None:
            raise ValueError("out_features is only used with features_only=True")

    @property
    def num_stages(self) -> int:
        """How many of res2..res5 are built (a backbone stops at its last output)."""
        if not self.features_only:
            return 4
        return max(FEATURE_NAMES.index(f) for f in self.outputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The feature maps a backbone returns (features mode)."""
        if not self.features_only:
            return ()
        return tuple(self.out_features) if self.out_features is not None else STAGE_NAMES

    def stage(self, i: int) -> tuple[int, int, int]:
        """(blocks, planes, stride) of stage ``i`` (0: res2 ... 3: res5)."""
        return int(self.layers[i]), RESNET_STAGE_PLANES[i], 1 if i == 0 else 2


DEFAULTS = {f.name: f.default for f in dataclasses.fields(ResNetConfig)}


class ResNet(nn.Module):
    """ResNet / ResNeXt / SENet backbone with an optional classifier head.

    ``ResNet(config)`` with a :class:`ResNetConfig`, or ``ResNet(**options)`` with its fields (see there).
    ``model.info`` (``se_transfer.models.info.ModelInfo``) says what the model is and where its weights came from.
    """

    Config = ResNetConfig

    def __init__(self, config: ResNetConfig | None = None, **options: Any) -> None:
        super().__init__()
        if config is not None and options:
            raise TypeError("ResNet takes a ResNetConfig or keyword options, not both")
        cfg = config if config is not None else ResNetConfig(**options)
        self.config = cfg
        self.info = ModelInfo()
        self.num_classes = cfg.num_classes
        self.features_only = cfg.features_only
        block_cls = BasicBlock if cfg.block == "basic" else Bottleneck
        self.stem = self._make_stem(cfg.stem_type, cfg.stem_width, cfg.stem_pool, cfg.norm, cfg.in_chans)
        shapes = {"stem": ShapeSpec(cfg.stem_width, 4)}
        se_opts = SEOptions(cfg.se_variant, cfg.reduction, cfg.se_squeeze, cfg.se_gate, cfg.se_bias, cfg.se_no_squeeze)
        inplanes = cfg.stem_width
        for i in range(cfg.num_stages):
            num_blocks, planes, stride = cfg.stage(i)
            out_channels = planes * block_cls.expansion
            stage_se = se_opts if (i + 2) in cfg.se_stages else None
            hidden = cfg.se_channels[i] if cfg.se_channels is not None else None
            blocks = []
            for b in range(num_blocks):
                s = stride if b == 0 else 1
                downsample = None
                if b == 0 and (s != 1 or inplanes != out_channels):
                    k = cfg.downsample_kernel if i > 0 else 1
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, out_channels, k, stride=s, padding=k // 2, bias=False),
                        norm_layer(cfg.norm, out_channels),
                    )
                if cfg.block == "basic":
                    blk = BasicBlock(
                        inplanes, planes, s, downsample, cfg.norm, stage_se, hidden, cfg.basic_relu_before_se
                    )
                else:
                    blk = Bottleneck(
                        inplanes, planes, s, downsample, cfg.norm, stage_se, hidden,
                        groups=cfg.groups, width_per_group=cfg.width_per_group,
                        reduce_first=cfg.reduce_first, stride_in_1x1=cfg.stride_in_1x1,
                    )  # fmt: skip
                blocks.append(blk)
                inplanes = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            shapes[STAGE_NAMES[i]] = ShapeSpec(out_channels, 4 * 2**i)
        self._stage_shapes = shapes
        self.num_features = inplanes
        self.out_features = cfg.outputs
        if not cfg.features_only:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.drop_rate = cfg.drop_rate
            self.fc = nn.Linear(inplanes, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights(cfg.zero_init_last)
        self.freeze_at = 0
        self.freeze(cfg.freeze_at)

    @staticmethod
    def _make_stem(stem_type: str, width: int, pool: str, norm: str, in_chans: int) -> nn.Sequential:
        if stem_type == "7x7":
            mods = [
                ("conv1", nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)),
                ("bn1", norm_layer(norm, width)),
                ("relu1", nn.ReLU(inplace=True)),
            ]
        else:
            mid = width // 2
            mods = [
                ("conv1", nn.Conv2d(in_chans, mid, 3, stride=2, padding=1, bias=False)),
                ("bn1", norm_layer(norm, mid)),
                ("relu1", nn.ReLU(inplace=True)),
                ("conv2", nn.Conv2d(mid, mid, 3, stride=1, padding=1, bias=False)),
                ("bn2", norm_layer(norm, mid)),
                ("relu2", nn.ReLU(inplace=True)),
                ("conv3", nn.Conv2d(mid, width, 3, stride=1, padding=1, bias=False)),
                ("bn3", norm_layer(norm, width)),
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


# ------------------------------------------------------------------------------ structure, read back from weights

# Arguments that fix the network's shape: a checkpoint and the requested model must agree on them.
STRUCTURE_KEYS = (
    "block",
    "layers",
    "groups",
    "width_per_group",
    "reduce_first",
    "stem_type",
    "stem_width",
    "downsample_kernel",
    "se_stages",
)


def architecture_from_state(state: Mapping[str, torch.Tensor], path: str | os.PathLike = "") -> dict[str, Any]:
    """Read the structure (block type, depths, groups, widths, stem, SE stages and widths) off a mapped state dict."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise WeightsError(f"{path}: tensor {key!r} is missing; cannot tell the architecture")
        return state[key].shape

    arch: dict[str, Any] = {}
    arch["block"] = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    layers = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not idx:
            raise WeightsError(f"{path}: no tensors for stage layer{stage} (res{stage + 1})")
        layers.append(max(idx) + 1)
    arch["layers"] = layers
    arch["stem_type"] = "deep" if "stem.conv2.weight" in state else "7x7"
    arch["stem_width"] = shape("stem.conv3.weight" if arch["stem_type"] == "deep" else "stem.conv1.weight")[0]
    if arch["block"] == "bottleneck":
        first_width, per_group = shape("layer1.0.conv1.weight")[0], shape("layer1.0.conv2.weight")[1]
        width = shape("layer1.0.conv2.weight")[0]
        groups = first_width // per_group
        arch.update(groups=groups, width_per_group=width // groups, reduce_first=width // first_width)
    else:
        arch.update(groups=1, width_per_group=64, reduce_first=1)
    ds = "layer2.0.downsample.0.weight"
    arch["downsample_kernel"] = state[ds].shape[-1] if ds in state else 1
    se_stages, se_channels = [], []
    for stage in range(1, 5):
        widths = {v.shape[0] for k, v in state.items() if re.fullmatch(rf"layer{stage}\.\d+\.se\.fc1\.weight", k)}
        if widths:
            se_stages.append(stage + 1)
        # Blocks that disagree leave the default width, so that the odd tensor is named when loading.
        se_channels.append(widths.pop() if len(widths) == 1 else None)
    arch["se_stages"] = se_stages
    arch["se_channels"] = se_channels
    arch["se_bias"] = any(k.endswith(".se.fc1.bias") for k in state) or not se_stages
    return arch


# ------------------------------------------------------------------------------------- public weight layouts

# The input normalisation each public layout's weights expect (see se_transfer.models.layouts for the layouts).
LAYOUT_INPUT_NORM = {"cadene": IMAGENET_RGB, "torchvision": IMAGENET_RGB, "caffe2": DETECTRON2_MSRA_BGR}


def layout_flavour(layout: str, arch: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture options a layout implies beyond its tensor shapes."""
    if layout == "cadene":
        return {
            # SEResNetBottleneck strides its 1x1; SEResNeXtBottleneck and SEBottleneck (SENet-154) their 3x3.
            "stride_in_1x1": arch["block"] == "bottleneck" and arch["groups"] == 1,
            "stem_pool": "caffe",
            # timm's legacy SEResNetBlock has a ReLU after bn2.
            "basic_relu_before_se": arch["block"] == "basic",
        }
    if layout == "torchvision":
        return {"stride_in_1x1": False, "stem_pool": "pytorch"}
    if layout == "caffe2":
        # MSRA ResNets stride their 1x1; FAIR's ResNeXts their 3x3. detectron2's stem pool pads by 1.
        return {"stride_in_1x1": arch["block"] == "bottleneck" and arch["groups"] == 1, "stem_pool": "pytorch"}
    if layout == "detectron2":  # converted from torchvision by detectron2's convert-torchvision-to-d2.py
        return {"stride_in_1x1": False, "stem_pool": "pytorch"}
    return {}  # a bare state dict of ours: the requested model's own defaults


# ------------------------------------------------------------------------------------------- registered models

# The ImageNet family: every SE model defaults to its official (Caffe) architecture; each baseline is the same
# network with se_stages=() so that a comparison changes one thing.

_SE = {"se_stages": (2, 3, 4, 5)}
_BASIC = {"block": "basic", "stem_pool": "caffe"}
_RESNET = {"block": "bottleneck", "stride_in_1x1": True, "stem_pool": "caffe"}
_RESNEXT_32X4D = {
    "block": "bottleneck",
    "groups": 32,
    "width_per_group": 4,
    "stride_in_1x1": False,
    "stem_pool": "caffe",
}

_DEFS: dict[str, dict[str, Any]] = {
    "resnet18": dict(_BASIC, layers=(2, 2, 2, 2)),
    "resnet34": dict(_BASIC, layers=(3, 4, 6, 3)),
    "resnet50": dict(_RESNET, layers=(3, 4, 6, 3)),
    "resnet101": dict(_RESNET, layers=(3, 4, 23, 3)),
    "resnet152": dict(_RESNET, layers=(3, 8, 36, 3)),
    "resnext50_32x4d": dict(_RESNEXT_32X4D, layers=(3, 4, 6, 3)),
    "resnext101_32x4d": dict(_RESNEXT_32X4D, layers=(3, 4, 23, 3)),
    "senet154": dict(
        block="bottleneck",
        layers=(3, 8, 36, 3),
        groups=64,
        width_per_group=4,
        reduce_first=2,
        stride_in_1x1=False,
        stem_type="deep",
        stem_width=128,
        stem_pool="caffe",
        downsample_kernel=3,
        drop_rate=0.2,
        **_SE,
    ),
}
for _base in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x4d"):
    _DEFS["se_" + _base] = dict(_DEFS[_base], **_SE)
for _name, _kwargs in _DEFS.items():
    register_model(_name, ResNet, "imagenet", **_kwargs)
