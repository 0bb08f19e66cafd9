"""Pretrained weights into our models: inspect a file (layout, structure, flavour, input normalisation), check that
it fits, load it, and save ours (with the model's ``info``) in our format and detectron2's.

The layouts and how their keys map to ours are in ``se_transfer.models.layouts``; the ResNet family's structure,
flavours and input normalisation per layout in ``se_transfer.models.resnet``; building a model in a checkpoint's
flavour in ``se_transfer.models.builder``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write
from ..state import misfit
from .info import IMAGENET_RGB, model_info
from .layouts import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PKL_AUTHOR_KEY,
    WeightsError,
    detect_layout,
    file_error,
    map_keys,
    read_checkpoint,
    to_detectron2,
)
from .registry import baseline_of, list_models, model_defaults, model_entry
from .resnet import DEFAULTS, LAYOUT_INPUT_NORM, STRUCTURE_KEYS, architecture_from_state, layout_flavour
from .se import se_hidden_channels

logger = logging.getLogger(__name__)


def _structure(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The structure keys of ``arch`` (filled with ResNet's defaults), as comparable values."""
    out = {}
    for k in STRUCTURE_KEYS:
        v = arch.get(k, DEFAULTS[k])
        out[k] = tuple(sorted(v)) if k == "se_stages" else tuple(v) if isinstance(v, (list, tuple)) else v
    return out


def _describe(arch: Mapping[str, Any]) -> str:
    a = _structure(arch)
    se = f"SE in stages {list(a['se_stages'])}" if a["se_stages"] else "no SE"
    return (
        f"{a['block']} blocks {list(a['layers'])}, groups {a['groups']}, width/group {a['width_per_group']}, "
        f"{a['stem_type']} stem, {se}"
    )


def describe_architecture(arch: Mapping[str, Any]) -> str:
    """One line describing a network's structure: blocks and depths, groups and widths, stem, SE stages."""
    return _describe(arch)


def _same_structure(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return _structure(a) == _structure(b)


def guess_model_name(arch: Mapping[str, Any]) -> str | None:
    """The registered ImageNet-family model whose default structure equals ``arch``, if any."""
    for name in list_models():
        if model_entry(name).family != "imagenet":
            continue
        if _same_structure(model_defaults(name), arch):
            return name
    return None


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class CheckpointInfo:
    """A weight file read and recognised: mapped tensors, layout, structure, flavour, input normalisation."""

    path: str
    state: dict[str, torch.Tensor]
    layout: str
    arch: dict[str, Any]
    flavour: dict[str, Any]
    input_norm: dict[str, Any]
    num_classes: int
    saved_arch: str | None = None  # the model name our own files record

    @property
    def model_name(self) -> str | None:
        """The registered model with this structure, if any."""
        return guess_model_name(self.arch)


def inspect_weights(path: str | os.PathLike) -> CheckpointInfo:
    """Read a weight file, recognise its layout, map its keys to ours and read its structure and flavour."""
    return inspect_state(path, *read_checkpoint(path))


def inspect_state(
    path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict[str, Any] | None
) -> CheckpointInfo:
    """``inspect_weights`` on what ``read_checkpoint(path)`` returned (for callers that have already read it)."""
    meta = dict(meta) if meta is not None else None
    author = meta.pop(PKL_AUTHOR_KEY, None) if meta is not None else None
    if meta:  # our own file (.pth, .safetensors, or a .pkl in detectron2's names) says what it holds
        layout = FORMAT_NAME
        if author is not None:
            state = map_keys(state, "detectron2")
        saved = dict(meta.get("arch_kwargs") or {})
        arch = {k: saved[k] for k in STRUCTURE_KEYS if k in saved}
        flavour = {k: v for k, v in saved.items() if k not in STRUCTURE_KEYS}
        input_norm = dict(meta.get("input_norm") or IMAGENET_RGB)
    else:
        try:
            layout = detect_layout(state)
        except WeightsError as e:
            raise file_error(path, str(e)) from None
        if layout == "detectron2" and author != "torchvision":
            raise file_error(
                path,
                f"a detectron2 .pkl by {author!r} without se_transfer metadata: its stride position, stem and input "
                "normalisation cannot be told from it. Use the file it was converted from (any public layout), or "
                "convert that with tools/convert_weights.py",
            )
        state = map_keys(state, layout)
        arch = architecture_from_state(state, path)
        flavour = layout_flavour(layout, arch)
        if not arch["se_bias"]:
            flavour["se_bias"] = False
        if arch["se_stages"]:
            # Keep the checkpoint's SE widths where they differ from C // 16 (timm rounds them to multiples of 8).
            expansion = 4 if arch["block"] == "bottleneck" else 1
            default_hidden = [se_hidden_channels(64 * 2**i * expansion, 16) for i in range(4)]
            if any(h is not None and h != d for h, d in zip(arch["se_channels"], default_hidden)):
                flavour["se_channels"] = arch["se_channels"]
        if layout == FORMAT_NAME:
            logger.warning(
                "%s: a bare se_transfer state dict without metadata: assuming the requested model's defaults "
                "and ImageNet RGB normalisation (save with se_transfer.models.save_weights to keep them)",
                path,
            )
        input_norm = dict(LAYOUT_INPUT_NORM.get(layout, IMAGENET_RGB))
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 0
    saved_arch = str(meta["arch"]) if meta and meta.get("arch") else None
    return CheckpointInfo(str(path), state, layout, arch, flavour, input_norm, num_classes, saved_arch)


def structure_mismatch(
    arch: Mapping[str, Any], name: str, overrides: Mapping[str, Any] | None = None, saved_arch: str | None = None
) -> str | None:
    """Why a network of structure ``arch`` is not model ``name`` (with ``overrides``), or None when it is.

    ``saved_arch``: the model name the file records (our files do); the message then names it and the options it
    was saved with beyond that model's defaults, rather than a guess from the shapes."""
    requested = {**model_defaults(name), **{k: v for k, v in (overrides or {}).items() if k in STRUCTURE_KEYS}}
    if _same_structure(arch, requested):
        return None
    if saved_arch and saved_arch in list_models():
        base, own = _structure(model_defaults(saved_arch)), _structure(arch)
        extra = {k: list(v) if isinstance(v, tuple) else v for k, v in own.items() if base[k] != v}
        hint = f" (saved as {saved_arch!r}" + (f" with {extra}" if extra else "")
        return (
            f"holds a network with {_describe(arch)}{hint}), which does not match the requested {name!r} "
            f"({_describe(requested)})"
        )
    guess = guess_model_name(arch)
    hint = f" (that is {guess!r}" if guess else " (no registered model has that structure"
    hint += f"; {baseline_of(name)!r} is {name!r} without SE)" if baseline_of(name) else ")"
    return (
        f"holds a network with {_describe(arch)}{hint}, which does not match the requested {name!r} "
        f"({_describe(requested)})"
    )


def flavour_conflicts(flavour: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{option: (the checkpoint's value, the requested value)} for requested options the checkpoint contradicts."""

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {k: (flavour[k], v) for k, v in overrides.items() if k in flavour and norm(flavour[k]) != norm(v)}


def load_state_dict_checked(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike = ""
) -> bool:
    """Load a mapped state dict; re-initialise a head of another size, and name any other mismatch in an error.

    Returns whether the model's classifier head came from the checkpoint (False: re-initialised, or no head)."""
    state = dict(state)
    expected = dict(model.state_dict())
    built = {f"layer{i}." for i in range(1, 5) if hasattr(model, f"layer{i}")}

    def unused_by_design(key: str) -> bool:
        # A backbone (features mode, or no classifier) does not use the head or the stages after its outputs.
        if key.startswith("fc.") and "fc.weight" not in expected:
            return True
        return key.startswith("layer") and not any(key.startswith(p) for p in built)

    dropped = [k for k in state if unused_by_design(k)]
    for k in dropped:
        del state[k]
    if dropped:
        logger.info("%s: not used by this model: %d tensors (%s ...)", path, len(dropped), dropped[0])

    head = [k for k in ("fc.weight", "fc.bias") if k in state and k in expected]
    if any(state[k].shape != expected[k].shape for k in head):
        logger.warning(
            "%s: classifier head re-initialised: checkpoint has %d classes, the model %d",
            path,
            state["fc.weight"].shape[0],
            expected["fc.weight"].shape[0],
        )
        for k in head:
            del state[k]
            del expected[k]
    elif "fc.weight" in expected and "fc.weight" not in state:
        logger.warning("%s: the checkpoint has no classifier; head fc is randomly initialised", path)
        expected.pop("fc.weight")
        expected.pop("fc.bias", None)

    check_fit(expected, state, path, "the model")
    model.load_state_dict(state, strict=False)
    return "fc.weight" in expected


_CLASSIFIERS = ("fc.weight", "roi_heads.box_predictor.cls_score.weight")  # a classifier's, a detector's


def _shape_of(state: Mapping[str, Any]) -> tuple[list[int], bool, tuple[str, int] | None]:
    """(blocks per stage, has SE blocks, (classifier tensor, outputs)) read off the key names of a state dict."""
    blocks: dict[int, set[str]] = {}
    for key in state:
        parts = key.split(".")
        if len(parts) > 2 and parts[0].startswith("layer") and parts[0][5:].isdigit() and parts[1].isdigit():
            blocks.setdefault(int(parts[0][5:]), set()).add(parts[1])
    classes = None
    for key in _CLASSIFIERS:
        fc = state.get(key)
        if fc is not None and hasattr(fc, "shape") and len(fc.shape) == 2:
            classes = (key, int(fc.shape[0]))
    return [len(blocks[i]) for i in sorted(blocks)], any(".se." in k for k in state), classes


def explain_misfit(expected: Mapping[str, Any], state: Mapping[str, Any], what: str, saved: str | None = None) -> str:
    """One clause saying how a state dict's network differs from ``what`` (stages, SE, classes), or ''."""
    (want_blocks, want_se, want_classes), (have_blocks, have_se, have_classes) = _shape_of(expected), _shape_of(state)

    def describe(blocks: list[int], se: bool) -> str:
        return f"{blocks} blocks per stage {'with' if se else 'without'} SE"

    saved_as = f" (saved as {saved!r})" if saved else ""
    if (want_blocks, want_se) != (have_blocks, have_se):
        return f"the file holds {describe(have_blocks, have_se)}{saved_as}, {what} has {describe(want_blocks, want_se)}"
    if want_classes is not None and have_classes is not None and want_classes != have_classes:
        return f"the file's classifier {have_classes[0]} has {have_classes[1]} outputs, {what} {want_classes[1]}"
    return ""


def check_fit(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    what: str,
    saved: str | None = None,
) -> None:
    """Raise a WeightsError that says in one line how ``state`` differs from ``expected``: the structure (blocks per
    stage, SE, classes; ``saved``: the architecture the file says it holds), then the first missing, unexpected and
    mis-shaped tensors with their counts.

    The comparison is ``se_transfer.state.misfit``'s.
    """
    details = misfit(expected, state)
    if details:
        why = explain_misfit(expected, state, what, saved)
        raise file_error(path, f"does not fit {what}: " + (f"{why} ({details})" if why else details))


def load_plain_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load our own (or a bare) state dict into a model of a family without public layouts, strictly."""
    state, meta = read_checkpoint(path)
    saved = (meta or {}).get("arch")
    if saved and (meta or {}).get("arch_kwargs"):
        saved += f" {dict(meta['arch_kwargs'])}"
    check_fit(model.state_dict(), state, path, model_info(model).arch or type(model).__name__, saved)
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------------------------------------------- saving


def checkpoint_metadata(model: torch.nn.Module) -> dict[str, Any]:
    """What our weight files carry beside the tensors: format, architecture and input normalisation."""
    info = model_info(model)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "arch": info.arch,
        "arch_kwargs": dict(info.arch_kwargs),
        "input_norm": dict(info.input_norm),
    }


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's weights in our format (.pth, or .safetensors by suffix), atomically."""
    path = Path(path)
    meta = checkpoint_metadata(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(path, lambda p: save_file(state, str(p), metadata={FORMAT_NAME: json.dumps(meta)}))
    else:
        atomic_write(path, lambda p: torch.save({**meta, "model": state}, p))
    return path


def save_detectron2(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write a detectron2 .pkl ({'model': numpy arrays, '__author__', 'matching_heuristics'}) atomically."""
    path = Path(path)
    payload = {
        "model": to_detectron2(model.state_dict()),
        "__author__": FORMAT_NAME,
        "matching_heuristics": True,
        "se_transfer": checkpoint_metadata(model),
    }

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(path, write)
    return path
