"""detectron2 adapter: SE backbones (plain and FPN) in detectron2's BACKBONE_REGISTRY, when detectron2 is installed.

detectron2 is imported only inside ``register()``; everything else here is plain Python, so the layout it builds is
tested without detectron2. The modules use detectron2's own names (``stem.conv1`` + ``.norm``, ``res2.0.conv1``,
``res2.0.shortcut``, ``res2.0.se.fc1``), which are exactly the names ``tools/convert_weights.py X.pkl`` writes, so::

    from se_transfer.detection.d2 import add_se_transfer_config, register
    register()
    add_se_transfer_config(cfg)                       # adds MODEL.SE_TRANSFER.*
    cfg.MODEL.BACKBONE.NAME = "build_se_transfer_fpn_backbone"
    cfg.MODEL.SE_TRANSFER.ARCH = "se_resnet50"
    cfg.MODEL.WEIGHTS = "se_resnet50.pkl"             # from tools/convert_weights.py
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = ...   # detectron2 wants 0..255 BGR/RGB: see the .pkl's metadata

Config keys used: MODEL.SE_TRANSFER.ARCH (a registered ImageNet-family model), MODEL.SE_TRANSFER.KWARGS (model
options as a dict), MODEL.RESNETS.OUT_FEATURES, MODEL.RESNETS.NORM, MODEL.BACKBONE.FREEZE_AT, and for the FPN
MODEL.FPN.IN_FEATURES, MODEL.FPN.OUT_CHANNELS, MODEL.FPN.NORM, MODEL.FPN.FUSE_TYPE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models.factory import model_defaults, model_entry
from ..models.resnet import RESNET_STAGE_PLANES
from ..models.se import se_hidden_channels

BACKBONE_NAMES = ("build_se_transfer_backbone", "build_se_transfer_fpn_backbone")


@dataclass(frozen=True)
class BlockSpec:
    """One residual block in detectron2's terms."""

    in_channels: int
    out_channels: int
    first_channels: int  # conv1 output (bottleneck) or width (basic)
    mid_channels: int  # conv2 output (bottleneck)
    stride: int
    stride_in_1x1: bool
    groups: int
    shortcut_kernel: int  # 0: identity shortcut
    se_channels: int  # 0: no SE
    bottleneck: bool
    relu_before_se: bool


def d2_layout(arch: str, **overrides: Any) -> tuple[dict[str, Any], list[list[BlockSpec]]]:
    """(stem spec, blocks per stage res2..res5) of a registered ImageNet-family model with its options."""
    if model_entry(arch).family != "imagenet":
        raise ValueError(f"{arch} is not an ImageNet-family backbone")
    a = {**_resnet_defaults(), **model_defaults(arch), **overrides}
    if a["se_variant"] != "standard" or a["se_no_squeeze"] or a["se_squeeze"] != "avg" or a["se_gate"] != "sigmoid":
        raise ValueError("the detectron2 adapter builds the standard SE block (avg squeeze, sigmoid gate) only")
    stem = {
        "deep": a["stem_type"] == "deep",
        "width": a["stem_width"],
        "pool": a["stem_pool"],
        "in_chans": a["in_chans"],
    }
    bottleneck = a["block"] == "bottleneck"
    expansion = 4 if bottleneck else 1
    stages = []
    in_ch = a["stem_width"]
    for i, planes in enumerate(RESNET_STAGE_PLANES):
        out_ch = planes * expansion
        width = int(planes * a["width_per_group"] / 64) * a["groups"]
        hidden = a["se_channels"][i] if a["se_channels"] is not None else None
        se = (hidden or se_hidden_channels(out_ch, a["reduction"])) if (i + 2) in a["se_stages"] else 0
        blocks = []
        for b in range(a["layers"][i]):
            stride = 2 if (b == 0 and i > 0) else 1
            needs_proj = b == 0 and (stride != 1 or in_ch != out_ch)
            blocks.append(
                BlockSpec(
                    in_channels=in_ch,
                    out_channels=out_ch,
                    first_channels=(width // a["reduce_first"]) if bottleneck else planes,
                    mid_channels=width if bottleneck else planes,
                    stride=stride,
                    stride_in_1x1=bool(a["stride_in_1x1"]),
                    groups=a["groups"],
                    shortcut_kernel=(a["downsample_kernel"] if i > 0 else 1) if needs_proj else 0,
                    se_channels=se,
                    bottleneck=bottleneck,
                    relu_before_se=bool(a["basic_relu_before_se"]) and not bottleneck,
                )
            )
            in_ch = out_ch
        stages.append(blocks)
    return stem, stages


def _resnet_defaults() -> dict[str, Any]:
    from ..models.factory import RESNET_DEFAULTS

    return dict(RESNET_DEFAULTS)


def d2_state_shapes(stem: dict[str, Any], stages: list[list[BlockSpec]]) -> dict[str, tuple[int, ...]]:
    """The parameter and buffer shapes of the detectron2 backbone ``register()`` builds (FrozenBN norms)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> None:
        shapes[f"{name}.weight"] = (cout, cin // groups, k, k)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def norm(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.norm.{p}"] = (c,)

    if stem["deep"]:
        mid = stem["width"] // 2
        for j, (cin, cout) in enumerate([(stem["in_chans"], mid), (mid, mid), (mid, stem["width"])], start=1):
            conv(f"stem.conv{j}", cin, cout, 3)
            norm(f"stem.conv{j}", cout)
    else:
        conv("stem.conv1", stem["in_chans"], stem["width"], 7)
        norm("stem.conv1", stem["width"])
    for i, blocks in enumerate(stages):
        for b, s in enumerate(blocks):
            p = f"res{i + 2}.{b}"
            if s.bottleneck:
                convs = [(s.in_channels, s.first_channels, 1, 1), (s.first_channels, s.mid_channels, 3, s.groups),
                         (s.mid_channels, s.out_channels, 1, 1)]  # fmt: skip
            else:
                convs = [(s.in_channels, s.first_channels, 3, 1), (s.first_channels, s.out_channels, 3, 1)]
            for j, (cin, cout, k, g) in enumerate(convs, start=1):
                conv(f"{p}.conv{j}", cin, cout, k, g)
                norm(f"{p}.conv{j}", cout)
            if s.shortcut_kernel:
                conv(f"{p}.shortcut", s.in_channels, s.out_channels, s.shortcut_kernel)
                norm(f"{p}.shortcut", s.out_channels)
            if s.se_channels:
                conv(f"{p}.se.fc1", s.out_channels, s.se_channels, 1, bias=True)
                conv(f"{p}.se.fc2", s.se_channels, s.out_channels, 1, bias=True)
    return shapes


def add_se_transfer_config(cfg: Any) -> None:
    """Add MODEL.SE_TRANSFER.ARCH and MODEL.SE_TRANSFER.KWARGS to a detectron2 config."""
    from detectron2.config import CfgNode

    cfg.MODEL.SE_TRANSFER = CfgNode()
    cfg.MODEL.SE_TRANSFER.ARCH = "se_resnet50"
    cfg.MODEL.SE_TRANSFER.KWARGS = CfgNode(new_allowed=True)


def register() -> None:
    """Register the two backbone builders into detectron2's BACKBONE_REGISTRY (once; needs detectron2)."""
    try:
        from detectron2.modeling import BACKBONE_REGISTRY
    except ImportError as e:  # pragma: no cover - exercised only where detectron2 is missing
        raise ImportError("se_transfer.detection.d2 needs detectron2, which is not installed") from e
    if BACKBONE_NAMES[0] in BACKBONE_REGISTRY:
        return
    builders = _make_builders()
    for name in BACKBONE_NAMES:
        BACKBONE_REGISTRY.register(builders[name])


def _make_builders() -> dict[str, Any]:  # pragma: no cover - needs detectron2
    import torch.nn.functional as F
    from detectron2.layers import CNNBlockBase, Conv2d, get_norm
    from detectron2.modeling.backbone import FPN, ResNet
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    from ..models.se import SEModule

    class SEStem(CNNBlockBase):
        """7x7 (or SENet-154's three 3x3) conv + norm + ReLU, then the Caffe (ceil) or PyTorch (pad 1) max-pool."""

        def __init__(self, spec: dict[str, Any], norm: str) -> None:
            super().__init__(spec["in_chans"], spec["width"], 4)
            self.caffe_pool = spec["pool"] == "caffe"
            if spec["deep"]:
                mid = spec["width"] // 2
                chans = [(spec["in_chans"], mid, 2), (mid, mid, 1), (mid, spec["width"], 1)]
                for j, (cin, cout, s) in enumerate(chans, start=1):
                    setattr(self, f"conv{j}", Conv2d(cin, cout, 3, s, 1, bias=False, norm=get_norm(norm, cout)))
                self.num_convs = 3
            else:
                w = spec["width"]
                self.conv1 = Conv2d(spec["in_chans"], w, 7, 2, 3, bias=False, norm=get_norm(norm, w))
                self.num_convs = 1

        def forward(self, x):
            for j in range(1, self.num_convs + 1):
                x = F.relu_(getattr(self, f"conv{j}")(x))
            if self.caffe_pool:
                return F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
            return F.max_pool2d(x, 3, 2, 1)

    class SEBlock(CNNBlockBase):
        """A residual block (bottleneck or basic) with the SE on the branch before the sum."""

        def __init__(self, s: BlockSpec, norm: str) -> None:
            super().__init__(s.in_channels, s.out_channels, s.stride)
            self.spec = s
            if s.bottleneck:
                s1, s3 = (s.stride, 1) if s.stride_in_1x1 else (1, s.stride)
                self.conv1 = Conv2d(s.in_channels, s.first_channels, 1, s1, 0, bias=False,
                                    norm=get_norm(norm, s.first_channels))  # fmt: skip
                self.conv2 = Conv2d(s.first_channels, s.mid_channels, 3, s3, 1, groups=s.groups, bias=False,
                                    norm=get_norm(norm, s.mid_channels))  # fmt: skip
                self.conv3 = Conv2d(s.mid_channels, s.out_channels, 1, 1, 0, bias=False,
                                    norm=get_norm(norm, s.out_channels))  # fmt: skip
            else:
                self.conv1 = Conv2d(s.in_channels, s.first_channels, 3, s.stride, 1, bias=False,
                                    norm=get_norm(norm, s.first_channels))  # fmt: skip
                self.conv2 = Conv2d(s.first_channels, s.out_channels, 3, 1, 1, bias=False,
                                    norm=get_norm(norm, s.out_channels))  # fmt: skip
            self.shortcut = None
            if s.shortcut_kernel:
                k = s.shortcut_kernel
                self.shortcut = Conv2d(s.in_channels, s.out_channels, k, s.stride, k // 2, bias=False,
                                       norm=get_norm(norm, s.out_channels))  # fmt: skip
            self.se = SEModule(s.out_channels, hidden_channels=s.se_channels) if s.se_channels else None

        def forward(self, x):
            out = F.relu_(self.conv1(x))
            if self.spec.bottleneck:
                out = self.conv3(F.relu_(self.conv2(out)))
            else:
                out = self.conv2(out)
                if self.spec.relu_before_se:
                    out = F.relu_(out)
            if self.se is not None:
                out = self.se(out)
            shortcut = x if self.shortcut is None else self.shortcut(x)
            return F.relu_(out + shortcut)

    def build_se_transfer_backbone(cfg, input_shape):
        """An se_transfer model (MODEL.SE_TRANSFER.ARCH) as a detectron2 ResNet backbone."""
        kwargs = dict(cfg.MODEL.SE_TRANSFER.KWARGS)
        kwargs.setdefault("in_chans", input_shape.channels)
        stem_spec, stages = d2_layout(cfg.MODEL.SE_TRANSFER.ARCH, **kwargs)
        norm = cfg.MODEL.RESNETS.NORM
        out_features = cfg.MODEL.RESNETS.OUT_FEATURES
        last = max(int(f[3:]) for f in out_features if f.startswith("res"))
        blocks = [[SEBlock(s, norm) for s in stage] for stage in stages[: last - 1]]
        return ResNet(SEStem(stem_spec, norm), blocks, out_features=out_features).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)

    def build_se_transfer_fpn_backbone(cfg, input_shape):
        """The backbone above with detectron2's FPN (P2-P6, P6 by max-pooling P5)."""
        return FPN(
            bottom_up=build_se_transfer_backbone(cfg, input_shape),
            in_features=cfg.MODEL.FPN.IN_FEATURES,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            top_block=LastLevelMaxPool(),
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        )

    return {
        "build_se_transfer_backbone": build_se_transfer_backbone,
        "build_se_transfer_fpn_backbone": build_se_transfer_fpn_backbone,
    }
