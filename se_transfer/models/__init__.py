"""SE-ResNet / SE-ResNeXt / SENet-154 and their baselines: ``create_model``, ``list_models``, weight loading.

One file per model family, each with its registrations: ``resnet`` (the ImageNet family, its weight layouts'
flavours and input normalisation), ``cifar`` and ``shake_shake`` (Tables 4 and 5). ``registry`` holds the names,
``builder`` builds them (``create_model``), ``info`` is the metadata every model carries (``model.info``),
``layouts`` and ``weights`` read, load and save weight files, ``se`` is the SE block and ``fast_se`` the transform
that gives it its fast paths.
"""

from ..ops.dispatch import SE_IMPLS
from . import cifar, resnet, shake_shake  # noqa: F401  (register the models)
from .blocks import BasicBlock, Bottleneck
from .builder import build_pretrained, create_model
from .fast_se import FastSEModule, se_impl, set_se_impl
from .info import CAFFE_BGR, IMAGENET_RGB, ModelInfo, WeightsSource, model_info, normalize_input
from .layers import ShapeSpec, convert_frozen_batchnorm
from .layouts import WeightsError, read_checkpoint
from .registry import MODEL_REGISTRY, baseline_of, list_models, model_defaults, register_model
from .resnet import STAGE_NAMES, ResNet, ResNetConfig
from .se import SEModule
from .weights import inspect_weights, save_detectron2, save_weights

__all__ = [
    "CAFFE_BGR",
    "IMAGENET_RGB",
    "MODEL_REGISTRY",
    "STAGE_NAMES",
    "SE_IMPLS",
    "BasicBlock",
    "Bottleneck",
    "FastSEModule",
    "ModelInfo",
    "ResNet",
    "ResNetConfig",
    "SEModule",
    "ShapeSpec",
    "WeightsError",
    "WeightsSource",
    "baseline_of",
    "build_pretrained",
    "convert_frozen_batchnorm",
    "create_model",
    "inspect_weights",
    "list_models",
    "model_defaults",
    "model_info",
    "normalize_input",
    "read_checkpoint",
    "register_model",
    "save_detectron2",
    "save_weights",
    "se_impl",
    "set_se_impl",
]
