"""The detection backbone both detectors build: which network a weight file holds, and that network, built once.

torchvision's Faster R-CNN (``detection/model.py``) and detectron2's (``detection/d2.py``) both call
``resolve_backbone`` on their MODEL.WEIGHTS and ``build_backbone`` on the answer, so the two compute one network: the
project's own ``ResNet`` in features mode, in the flavour the weights were trained with (stride in the 1x1 or the 3x3,
stem pool, SE widths, the basic block's extra ReLU) and with the input normalisation they expect.

MODEL.WEIGHTS may be
- backbone weights in any layout ``se_transfer.models`` reads (Cadene, timm legacy and current, torchvision, ours,
  detectron2 and Caffe2 .pkl): structure, flavour and normalisation come from the file;
- a whole-detector checkpoint of either detector: the backbone's architecture comes from the metadata the
  checkpoint carries under ``BACKBONE_META_KEY`` (written by both trainers), the tensors are loaded by the detector;
- empty: a randomly initialised backbone of the configured architecture.
Wherever the config names an architecture or model options that contradict the file, ``resolve_backbone`` raises a
``BackboneConfigError`` that names the config key, its value and what the file holds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models import create_model
from ..models.builder import RUNTIME_ARGS, build_pretrained
from ..models.fast_se import set_se_impl
from ..models.info import IMAGENET_RGB
from ..models.layouts import WeightsError, read_checkpoint
from ..models.registry import model_entry
from ..models.resnet import STAGE_NAMES, STRUCTURE_KEYS, ResNet, architecture_from_state
from ..models.weights import (
    CheckpointInfo,
    describe_architecture,
    flavour_conflicts,
    guess_model_name,
    inspect_state,
    structure_mismatch,
)

logger = logging.getLogger(__name__)

# Key of a detector checkpoint under which the backbone's architecture and input normalisation are saved.
BACKBONE_META_KEY = "se_transfer_backbone"
# Where each detector keeps the project's ResNet inside its state dict.
DETECTOR_BODY_PREFIXES = ("backbone.bottom_up.body.", "backbone.body.")
_HEAD_PREFIXES = ("roi_heads.", "rpn.", "proposal_generator.")


class BackboneConfigError(WeightsError):
    """The config and the weight file disagree about the backbone, or the file cannot give a backbone."""


def is_detector_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is a whole detector's (heads present), not a backbone's."""
    return any(k.startswith(_HEAD_PREFIXES) for k in state)


@dataclass
class BackboneSpec:
    """The backbone a detector must build: registered architecture, its arguments, input normalisation, source."""

    arch: str
    kwargs: dict[str, Any]  # structure and flavour options for create_model
    input_norm: dict[str, Any]
    source: str  # 'imagenet' (backbone weights to load), 'detector' (a whole detector's), 'none' (random)
    path: str = ""
    info: CheckpointInfo | None = field(default=None, repr=False)


def _fail(msg: str) -> BackboneConfigError:
    return BackboneConfigError(msg)


def _check_kwargs(kwargs: Mapping[str, Any], kwargs_key: str) -> None:
    bad = sorted(set(kwargs) & set(RUNTIME_ARGS))
    if bad:
        raise _fail(f"{kwargs_key}: {bad} are set by the detector (freeze, norm, features), not as model options")


def resolve_backbone(
    weights: str | os.PathLike | None,
    arch: str = "",
    kwargs: Mapping[str, Any] | None = None,
    *,
    weights_key: str = "MODEL.WEIGHTS",
    arch_key: str = "MODEL.ARCH",
    kwargs_key: str = "MODEL.KWARGS",
) -> BackboneSpec:
    """Which network ``weights`` holds, checked against the configured ``arch`` ('' = take it from the file) and
    model options ``kwargs`` (they may add options the file does not fix, never contradict the ones it does)."""
    kwargs = dict(kwargs or {})
    if arch:
        model_entry(arch)  # unknown names list the close matches
        if model_entry(arch).family != "imagenet":
            raise _fail(f"{arch_key}={arch!r} is not an ImageNet-family backbone (detection needs res2..res5)")
    _check_kwargs(kwargs, kwargs_key)
    path = str(weights or "")
    if not path:
        if not arch:
            raise _fail(f"{arch_key} is empty and so is {weights_key}: name the backbone or give its weights")
        return BackboneSpec(arch, kwargs, dict(IMAGENET_RGB), "none")
    if not os.path.isfile(path):
        raise _fail(f"{weights_key}: file not found: {path}")
    try:
        state, meta = read_checkpoint(path)
    except WeightsError as e:
        raise _fail(f"{weights_key}: {e}") from None
    if is_detector_state(state):
        return _from_detector(path, state, arch, kwargs, arch_key, kwargs_key)
    try:
        info = inspect_state(path, state, meta)  # the file is read once
    except WeightsError as e:
        raise _fail(f"{weights_key}: {e}") from None
    name = arch or info.model_name
    if name is None:
        raise _fail(f"{weights_key}: {path} holds {describe_architecture(info.arch)}, which no registered model has")
    mismatch = structure_mismatch(info.arch, name, kwargs, info.saved_arch)
    if mismatch:
        raise _fail(f"{arch_key}={name!r} contradicts {weights_key}: {path} {mismatch}")
    conflicts = flavour_conflicts(info.flavour, kwargs)
    if conflicts:
        shown = ", ".join(f"{k}={b!r} (the file: {a!r})" for k, (a, b) in conflicts.items())
        raise _fail(f"{kwargs_key} contradicts {weights_key}: {path} was trained with other options: {shown}")
    full = {**{k: v for k, v in info.flavour.items() if k not in RUNTIME_ARGS}, **kwargs}
    return BackboneSpec(name, full, dict(info.input_norm), "imagenet", path, info)


def _from_detector(
    path: str,
    state: Mapping[str, torch.Tensor],
    arch: str,
    kwargs: dict[str, Any],
    arch_key: str,
    kwargs_key: str,
) -> BackboneSpec:
    saved = _detector_meta(path)
    if saved is not None:
        name = str(saved.get("arch") or "")
        saved_kwargs = dict(saved.get("arch_kwargs") or {})
        if arch and arch != name:
            structure = {k: saved_kwargs[k] for k in STRUCTURE_KEYS if k in saved_kwargs}
            mismatch = structure_mismatch(structure, arch, kwargs)
            if mismatch:
                raise _fail(
                    f"{arch_key}={arch!r} contradicts the detector checkpoint {path}, whose backbone is {name!r}"
                )
        conflicts = flavour_conflicts(saved_kwargs, kwargs)
        if conflicts:
            shown = ", ".join(f"{k}={b!r} (the checkpoint: {a!r})" for k, (a, b) in conflicts.items())
            raise _fail(f"{kwargs_key} contradicts the detector checkpoint {path}: {shown}")
        full = {**saved_kwargs, **kwargs}
        return BackboneSpec(name or arch, full, dict(saved.get("input_norm") or IMAGENET_RGB), "detector", path)
    # A detector checkpoint without our metadata: the structure shows in the shapes, the flavour does not.
    prefix = next((p for p in DETECTOR_BODY_PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is None:
        raise _fail(f"{path}: a detector checkpoint without an se_transfer backbone (no {DETECTOR_BODY_PREFIXES} keys)")
    body = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    structure = architecture_from_state(body, path)
    name = arch or guess_model_name(structure)
    if name is None:
        raise _fail(f"{path}: the detector's backbone matches no registered model; set {arch_key}")
    mismatch = structure_mismatch(structure, name, kwargs)
    if mismatch:
        raise _fail(f"{arch_key}={name!r} contradicts the detector checkpoint {path}: its backbone {mismatch}")
    logger.warning(
        "%s: a detector checkpoint without se_transfer metadata: its backbone's structure is %r, but its flavour "
        "(stride position, stem pool) and input normalisation cannot be read; using %s and ImageNet RGB",
        path,
        name,
        f"{kwargs_key}={kwargs}" if kwargs else f"{name!r}'s defaults",
    )
    return BackboneSpec(name, dict(kwargs), dict(IMAGENET_RGB), "detector", path)


def _detector_meta(path: str) -> dict[str, Any] | None:
    """The BACKBONE_META_KEY entry of a detector checkpoint (.pth), if it has one."""
    if path.endswith((".pkl", ".safetensors")):
        return None
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    meta = obj.get(BACKBONE_META_KEY) if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else None


def build_backbone(
    spec: BackboneSpec,
    *,
    freeze_at: int = 2,
    norm: str = "FrozenBN",
    se_impl: str = "auto",
    out_features: Sequence[str] = STAGE_NAMES,
) -> ResNet:
    """The project's ResNet in features mode as ``spec`` says; backbone weights are loaded (every tensor checked)."""
    options = {"features_only": True, "out_features": tuple(out_features), "freeze_at": freeze_at, "norm": norm}
    if spec.source == "imagenet":
        body = build_pretrained(
            spec.arch, spec.info or spec.path, num_classes=0, overrides={**spec.kwargs, **options}, on_conflict="error"
        )
        body = set_se_impl(body, se_impl)
    else:
        body = create_model(spec.arch, se_impl=se_impl, **spec.kwargs, **options)
        if spec.source == "none":
            logger.warning(
                "MODEL.WEIGHTS is empty: the %s backbone starts from RANDOM initialisation. Detection results will "
                "be far below the paper's; pass ImageNet weights (any public layout, see README) with MODEL.WEIGHTS",
                spec.arch,
            )
    body.info.input_norm = dict(spec.input_norm)
    spec.info = None  # the tensors now live in the model
    return body
