"""SE-ResNet / SE-ResNeXt / SENet-154 and their baselines: ``create_model``, ``list_models``, weight loading."""

from ..ops.dispatch import SE_IMPLS
from .factory import MODEL_REGISTRY, baseline_of, create_model, list_models, model_defaults, register_model
from .fast_se import FastSEModule, se_impl, set_se_impl
from .resnet import STAGE_NAMES, BasicBlock, Bottleneck, ResNet, ShapeSpec, convert_frozen_batchnorm
from .se import SEModule
from .weights import (
    CAFFE_BGR,
    IMAGENET_RGB,
    WeightsError,
    normalize_input,
    read_checkpoint,
    save_detectron2,
    save_weights,
)

__all__ = [
    "CAFFE_BGR",
    "IMAGENET_RGB",
    "MODEL_REGISTRY",
    "STAGE_NAMES",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SE_IMPLS",
    "SEModule",
    "FastSEModule",
    "ShapeSpec",
    "WeightsError",
    "baseline_of",
    "convert_frozen_batchnorm",
    "create_model",
    "list_models",
    "model_defaults",
    "normalize_input",
    "register_model",
    "read_checkpoint",
    "save_detectron2",
    "save_weights",
    "se_impl",
    "set_se_impl",
]

from . import cifar  # noqa: F401  (registers the CIFAR models)
