"""Building models: ``create_model`` (a registered name, optional weights from a local file, the SE implementation)
and ``build_pretrained`` (a model in the flavour of a checkpoint, its weights loaded). Fills in ``model.info``."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .fast_se import set_se_impl
from .info import WeightsSource
from .layouts import file_error
from .registry import UnknownArgumentError, model_defaults, model_entry
from .weights import (
    CheckpointInfo,
    flavour_conflicts,
    inspect_weights,
    load_plain_weights,
    load_state_dict_checked,
    structure_mismatch,
)

logger = logging.getLogger(__name__)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: str | os.PathLike | None = None,
    se_impl: str = "auto",
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights from a local checkpoint in any known layout.

    ``overrides`` are ResNet arguments (``stride_in_1x1``, ``stem_pool``, ``reduction``, ``se_stages``, ``se_variant``,
    ``features_only``, ``out_features``, ``freeze_at``, ``norm``, ...). With ``pretrained``, the flavour of the
    checkpoint (stride position, stem pool, SE widths) is applied unless overridden, its input normalisation is kept
    in ``model.info.input_norm``, and a classifier head of another size is re-initialised. ``se_impl`` chooses how the
    SE blocks are computed ('auto', 'eager' or 'triton'; see ``se_transfer.ops.dispatch``).
    """
    entry = model_entry(name)
    valid = _builder_args(entry.builder)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UnknownArgumentError(f"create_model({name!r}): unknown argument(s) {unknown}; valid: {sorted(valid)}")
    if pretrained is not None and str(pretrained) != "":
        if entry.family == "imagenet":
            model = build_pretrained(name, pretrained, num_classes=num_classes, overrides=overrides)
        else:
            model = build_model(name, {**entry.defaults, **overrides, "num_classes": num_classes})
            load_plain_weights(model, pretrained)
            model.info.source = WeightsSource(str(pretrained), "se_transfer", head_loaded=True)  # strict: all loaded
    else:
        model = build_model(name, {**entry.defaults, **overrides, "num_classes": num_classes})
    return set_se_impl(model, se_impl)


def build_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Construct a registered model from complete arguments and record its name and architecture in its info."""
    model = model_entry(name).builder(**kwargs)
    model.info.arch = name
    model.info.arch_kwargs = _structural(kwargs)
    return model


def build_pretrained(
    name: str,
    path: str | os.PathLike | CheckpointInfo,
    *,
    num_classes: int = 1000,
    overrides: Mapping[str, Any] | None = None,
    on_conflict: str = "warn",
) -> nn.Module:
    """Build model ``name`` in the flavour of the checkpoint at ``path`` and load its weights (see module doc).

    ``on_conflict``: what an override that contradicts the checkpoint's flavour (``stride_in_1x1``, ``stem_pool``,
    ...) does: 'warn' (it is applied; an ablation) or 'error' (a WeightsError naming both values).
    """
    overrides = dict(overrides or {})
    info = path if isinstance(path, CheckpointInfo) else inspect_weights(path)
    path = info.path
    arch, flavour = info.arch, info.flavour
    mismatch = structure_mismatch(arch, name, overrides, info.saved_arch)
    if mismatch:
        raise file_error(path, mismatch)
    conflicts = flavour_conflicts(flavour, overrides)
    if conflicts and on_conflict == "error":
        shown = ", ".join(f"{k}: the file's {a!r}, requested {b!r}" for k, (a, b) in conflicts.items())
        raise file_error(path, f"the requested options contradict the network these weights were trained as ({shown})")
    for key, (theirs, ours) in conflicts.items():
        logger.warning(
            "%s: overriding the checkpoint's %s=%r with %r; outputs will differ from the source model",
            path,
            key,
            theirs,
            ours,
        )
    kwargs = {**model_defaults(name), **{k: v for k, v in flavour.items() if k not in RUNTIME_ARGS}}
    kwargs.update(overrides)
    kwargs["num_classes"] = num_classes
    model = build_model(name, kwargs)
    head_loaded = load_state_dict_checked(model, info.state, path)
    model.info.input_norm = dict(info.input_norm)
    model.info.source = WeightsSource(str(path), info.layout, head_loaded)
    logger.info("loaded %s weights (%s layout) from %s", name, info.layout, path)
    return model


def _builder_args(builder: Callable[..., nn.Module]) -> frozenset[str]:
    config = getattr(builder, "Config", None)  # a family with an options object (ResNet: ResNetConfig)
    if config is not None:
        return frozenset(f.name for f in dataclasses.fields(config) if f.name != "num_classes")
    fn = builder.__init__ if isinstance(builder, type) else builder
    return frozenset(p for p in inspect.signature(fn).parameters if p not in ("self", "num_classes"))


# Arguments that describe the trained network (saved with our checkpoints); the rest are run-time choices.
RUNTIME_ARGS = frozenset({"num_classes", "features_only", "out_features", "freeze_at", "norm", "drop_rate"})


def _structural(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        if k in RUNTIME_ARGS:
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
