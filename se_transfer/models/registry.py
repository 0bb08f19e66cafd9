"""The model registry: every family registers its models here (at the bottom of its own file); ``list_models``,
``model_entry``, ``model_defaults`` and ``baseline_of`` read it."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..registry import Registry

MODEL_REGISTRY = Registry("model")
MODEL_FAMILIES = ("imagenet", "cifar")


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
