"""Registered model names, ``create_model`` and ``list_models``."""

from __future__ import annotations

import fnmatch
import inspect
import os
from typing import Any

from ..registry import Registry
from .resnet import ResNet

# name -> default ResNet kwargs. Every SE model defaults to its official (Caffe) architecture; each baseline is
# the same network with se_stages=() so that a comparison changes one thing.
MODEL_REGISTRY = Registry("model")

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
    MODEL_REGISTRY.add(_name, _kwargs)

# What a model's baseline (the same network without SE) is called, for tables and comparisons.
BASELINES = {n: n[3:] for n in _DEFS if n.startswith("se_")}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell-style filter such as 'se_*'."""
    return [n for n in MODEL_REGISTRY.names() if fnmatch.fnmatch(n, pattern)]


def model_defaults(name: str) -> dict[str, Any]:
    """A copy of the default constructor arguments of a registered model (unknown names list close matches)."""
    return dict(MODEL_REGISTRY.get(name))


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: str | os.PathLike | None = None,
    **overrides: Any,
) -> ResNet:
    """Build a registered model, optionally with weights from a local checkpoint in any known layout.

    ``overrides`` are ResNet arguments (``stride_in_1x1``, ``stem_pool``, ``reduction``, ``se_stages``, ``se_variant``,
    ``features_only``, ``out_features``, ``freeze_at``, ``norm``, ...). With ``pretrained``, the flavour of the
    checkpoint (stride position, stem pool, SE widths) is applied unless overridden, its input normalisation is kept
    in ``model.input_norm``, and a classifier head of another size is re-initialised.
    """
    defaults = model_defaults(name)
    unknown = sorted(set(overrides) - set(RESNET_DEFAULTS) - {"num_classes"})
    if unknown:
        raise TypeError(f"create_model({name!r}): unknown argument(s) {unknown}; valid: {sorted(RESNET_DEFAULTS)}")
    if pretrained is not None and str(pretrained) != "":
        from .weights import build_pretrained

        return build_pretrained(name, pretrained, num_classes=num_classes, overrides=overrides)
    return build_model(name, {**defaults, **overrides, "num_classes": num_classes})


def build_model(name: str, kwargs: dict[str, Any]) -> ResNet:
    """Construct ResNet(**kwargs) and record its name and architecture arguments on it."""
    model = ResNet(**kwargs)
    model.arch_name = name
    model.arch_kwargs = _structural(kwargs)
    return model


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
