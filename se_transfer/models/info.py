"""What a model is and what its inputs must look like: one typed object, ``model.info``.

Every model of the toolkit carries a :class:`ModelInfo` made by its constructor and filled in by the builder
(``create_model``: the registered name and the structural arguments) and the weight loader (the input
normalisation the weights expect, and where they came from). Our weight files save it (``arch``, ``arch_kwargs``,
``input_norm``) and loading restores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

# Input normalisation a weight file implies. Images are given to ``normalize_input`` as RGB in [0, 1].
IMAGENET_RGB = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "RGB",
    "pixel_range": 1.0,
}
# The original Caffe models: BGR pixels in 0..255 minus the per-channel mean (in B, G, R order), no scaling.
CAFFE_BGR = {
    "mean": [104.0, 117.0, 123.0],
    "std": [1.0, 1.0, 1.0],
    "channel_order": "BGR",
    "pixel_range": 255.0,
}
# detectron2's MSRA ImageNet models (its default MODEL.PIXEL_MEAN / PIXEL_STD, INPUT.FORMAT BGR).
DETECTRON2_MSRA_BGR = {
    "mean": [103.53, 116.28, 123.675],
    "std": [1.0, 1.0, 1.0],
    "channel_order": "BGR",
    "pixel_range": 255.0,
}


@dataclass
class WeightsSource:
    """Where a model's weights were loaded from."""

    path: str
    layout: str  # 'se_transfer', 'cadene', 'torchvision', 'detectron2' or 'caffe2'
    head_loaded: bool  # whether the classifier came from the file (False: re-initialised, or none)


@dataclass
class ModelInfo:
    """A model's identity and input contract."""

    arch: str | None = None  # the registered name (None: built by its constructor)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # the structural arguments our files save
    input_norm: dict[str, Any] = field(default_factory=lambda: dict(IMAGENET_RGB))
    source: WeightsSource | None = None  # None: randomly initialised


def model_info(model: torch.nn.Module) -> ModelInfo:
    """``model.info``; a model of another library gets an empty one (ImageNet RGB input, no name, no source)."""
    info = getattr(model, "info", None)
    return info if isinstance(info, ModelInfo) else ModelInfo()


def normalize_input(images: torch.Tensor, input_norm: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Turn RGB images in [0, 1] (N x 3 x H x W) into what weights with ``input_norm`` expect."""
    spec = dict(input_norm or IMAGENET_RGB)
    x = images
    if spec["channel_order"] == "BGR":
        x = x.flip(1)
    elif spec["channel_order"] != "RGB":
        raise ValueError(f"input_norm channel_order must be 'RGB' or 'BGR', got {spec['channel_order']!r}")
    x = x * float(spec["pixel_range"])
    mean = torch.as_tensor(spec["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(spec["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
