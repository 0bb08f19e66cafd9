"""Faster R-CNN + FPN (torchvision's implementation) on any registered backbone, SE or not."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..models import read_checkpoint
from ..models.info import model_info
from ..models.resnet import ResNet
from ..models.weights import check_fit
from .backbone import build_backbone, resolve_backbone

logger = logging.getLogger(__name__)

FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")


@dataclass
class DetectorInfo:
    """What a detector built here carries (``model.info``): the input normalisation its backbone's weights expect and
    where its weights came from: 'detector' (heads trained), 'imagenet' (backbone only) or 'none'."""

    input_norm: dict[str, Any]
    weights_source: str


class BackboneWithFPN(nn.Module):
    """A features_only backbone (res2..res5) followed by an FPN giving P2-P6 (P6 by max-pooling P5)."""

    def __init__(self, body: ResNet, out_channels: int = 256) -> None:
        super().__init__()
        shapes = body.output_shape()
        self.in_features = list(shapes)
        if self.in_features != ["res2", "res3", "res4", "res5"]:
            raise ValueError(f"the FPN needs res2..res5 from the backbone, got {self.in_features}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [shapes[n].channels for n in self.in_features], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels
        self.strides = {name: 4 * 2**i for i, name in enumerate(FPN_LEVELS)}

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """P2..P6 feature maps, finest first."""
        feats = self.body(x)
        out = self.fpn(OrderedDict((f"p{i + 2}", feats[n]) for i, n in enumerate(self.in_features)))
        out["p6"] = out.pop("pool")
        return out


class NormalizingTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, normalising RGB [0, 1] inputs as the backbone's weights expect.

    ``input_norm`` (from the weight file): channel order RGB or BGR, pixel range 1 or 255, mean and std in that range.
    """

    def __init__(
        self, min_size: int | Sequence[int], max_size: int, input_norm: Mapping[str, Any], resize: bool = True
    ) -> None:
        scale = float(input_norm["pixel_range"])
        mean = [m / scale for m in input_norm["mean"]]
        std = [s / scale for s in input_norm["std"]]
        super().__init__(min_size, max_size, mean, std)
        self.bgr = input_norm["channel_order"] == "BGR"
        self.resize_inputs = resize

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        """torchvision's resize, or nothing when the data pipeline already resized (multi-scale stays intact)."""
        if not self.resize_inputs:
            return image, target
        return super().resize(image, target)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Flip RGB -> BGR when the weights want it, then subtract mean and divide by std."""
        return super().normalize(image.flip(0) if self.bgr else image)


def build_faster_rcnn(
    arch: str,
    num_classes: int,
    weights: str | os.PathLike | None = None,
    freeze_at: int = 2,
    norm: str = "FrozenBN",
    fpn_channels: int = 256,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    backbone_kwargs: Mapping[str, Any] | None = None,
    resize_inputs: bool = True,
    se_impl: str = "auto",
    **faster_rcnn_kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN + FPN with backbone ``arch`` for ``num_classes`` object classes (plus background).

    ``weights``: an ImageNet checkpoint of the backbone in any layout ``create_model`` reads (its flavour and input
    normalisation are used), or a whole-detector checkpoint of ours (its backbone rebuilt from the metadata it
    carries, then loaded strictly); see ``se_transfer.detection.backbone``. ``arch`` and ``backbone_kwargs`` that
    contradict the file are an error. None: random initialisation, with a loud warning. Anchors 32..512 on P2..P6
    with ratios 0.5/1/2, RoIAlign 7x7 on P2..P5 (the FPN paper's setup).
    ``resize_inputs=False``: the caller resizes (our data pipeline does, multi-scale included); the model only
    normalises and batches, and returns boxes in the coordinates of the images it was given. ``se_impl``: how the
    backbone's SE blocks are computed ('auto': fused Triton kernels on CUDA, see ``se_transfer.models.se``).
    """
    spec = resolve_backbone(weights, arch, backbone_kwargs, kwargs_key="MODEL.KWARGS")
    body = build_backbone(spec, freeze_at=freeze_at, norm=norm, se_impl=se_impl)
    input_norm = model_info(body).input_norm
    backbone = BackboneWithFPN(body, fpn_channels)
    anchors = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    roi_pool = MultiScaleRoIAlign(featmap_names=["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        **faster_rcnn_kwargs,
    )
    model.transform = NormalizingTransform(min_size, max_size, input_norm, resize=resize_inputs)
    model.info = DetectorInfo(dict(input_norm), spec.source)
    if spec.source == "detector":
        _load_detector(model, read_checkpoint(spec.path)[0], spec.path)
    return model


def _load_detector(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    check_fit(model.state_dict(), state, path, "this detector")
    model.load_state_dict(state, strict=False)
    logger.info("loaded the whole detector from %s", path)
