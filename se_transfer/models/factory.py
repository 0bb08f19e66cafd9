"""Registered model names, ``create_model`` and ``list_models``."""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..registry import Registry
from .fast_se import set_se_impl
from .resnet import ResNet

MODEL_REGISTRY = Registry("model")


class UnknownArgumentError(TypeError):
    """An argument that the requested model does not take."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: the class (or function) that builds it, its default arguments, and its family."""

    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]
    family: str  # "imagenet": ResNet family (224 inputs, public weight layouts); "cifar": 32x32 models


def register_model(name: str, builder: Callable[..., nn.Module], family: str, **defaults: Any) -> None:
    """Register ``builder(**defaults, **overrides, num_classes=...)`` under ``name``."""
    MODEL_REGISTRY.add(name, ModelEntry(builder, defaults, family))


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


MODEL_FAMILIES = ("imagenet", "cifar")


def has_se(name: str) -> bool:
    """Whether registered model ``name`` has SE blocks (the SE models are named se_* or senet*)."""
    return name.startswith(("se_", "senet"))


def list_models(pattern: str = "*", family: str | None = None, se: bool | None = None) -> list[str]:
    """Names of the registered models, sorted.

    ``pattern``: a shell-style filter such as 'se_resnet*'; ``family``: 'imagenet' (the ResNet family: 224-pixel
    inputs, public weight layouts, detection backbones) or 'cifar' (32 x 32 models of Tables 4 and 5); ``se``: True
    for the SE models only, False for those without SE."""
    if family is not None and family not in MODEL_FAMILIES:
        raise ValueError(f"family must be one of {MODEL_FAMILIES}, got {family!r}")
    return [
        n
        for n in MODEL_REGISTRY.names()
        if fnmatch.fnmatch(n, pattern)
        and (family is None or model_entry(n).family == family)
        and (se is None or has_se(n) == se)
    ]


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name is an error that lists the close matches."""
    return MODEL_REGISTRY.get(name)


def model_defaults(name: str) -> dict[str, Any]:
    """A copy of the default constructor arguments of a registered model (unknown names list close matches)."""
    return dict(model_entry(name).defaults)


def baseline_of(name: str) -> str | None:
    """The registered model that is ``name`` without SE ('se_resnet50' -> 'resnet50'), if any."""
    base = name[3:] if name.startswith("se_") else None
    return base if base in MODEL_REGISTRY else None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: str | os.PathLike | None = None,
    se_impl: str = "auto",
    **overrides: Any,
) -> ResNet:
    """Build a registered model, optionally with weights from a local checkpoint in any known layout.

    ``overrides`` are ResNet arguments (``stride_in_1x1``, ``stem_pool``, ``reduction``, ``se_stages``, ``se_variant``,
    ``features_only``, ``out_features``, ``freeze_at``, ``norm``, ...). With ``pretrained``, the flavour of the
    checkpoint (stride position, stem pool, SE widths) is applied unless overridden, its input normalisation is kept
    in ``model.input_norm``, and a classifier head of another size is re-initialised. ``se_impl`` chooses how the
    SE blocks are computed ('auto', 'eager' or 'triton'; see ``se_transfer.ops.dispatch``).
    """
    entry = model_entry(name)
    valid = _builder_args(entry.builder)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UnknownArgumentError(f"create_model({name!r}): unknown argument(s) {unknown}; valid: {sorted(valid)}")
    if pretrained is not None and str(pretrained) != "":
        from .weights import build_pretrained, load_plain_weights

        if entry.family == "imagenet":
            model = build_pretrained(name, pretrained, num_classes=num_classes, overrides=overrides)
        else:
            model = build_model(name, {**entry.defaults, **overrides, "num_classes": num_classes})
            load_plain_weights(model, pretrained)
    else:
        model = build_model(name, {**entry.defaults, **overrides, "num_classes": num_classes})
    return set_se_impl(model, se_impl)


def build_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Construct a registered model from complete arguments and record its name and architecture on it."""
    model = model_entry(name).builder(**kwargs)
    model.arch_name = name
    model.arch_kwargs = _structural(kwargs)
    return model


def _builder_args(builder: Callable[..., nn.Module]) -> frozenset[str]:
    fn = builder.__init__ if isinstance(builder, type) else builder
    return frozenset(p for p in inspect.signature(fn).parameters if p not in ("self", "num_classes"))


# ResNet's constructor arguments and their defaults.
RESNET_DEFAULTS = {
    p.name: p.default for p in inspect.signature(ResNet.__init__).parameters.values() if p.name != "self"
}
# Arguments that describe the trained network (saved with our checkpoints); the rest are run-time choices.
RUNTIME_ARGS = frozenset({"num_classes", "features_only", "out_features", "freeze_at", "norm", "drop_rate"})


def _structural(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        if k in RUNTIME_ARGS:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
