"""Pretrained weights from local files in every public layout: read, recognise, map, check, load, save.

Layouts recognised (by their keys, nothing to declare):
- ``cadene``: Cadene's pretrainedmodels ``se_resnet*``/``se_resnext*``/``senet154`` and timm's ``legacy_*`` models, the
  official Caffe weights converted (``layer0.conv1``, ``layer1.0.se_module.fc1``, ``last_linear``). Caffe flavour:
  stride in the first 1x1 of SE-ResNet bottlenecks, ceil-mode stem pool without padding.
- ``torchvision``: torchvision's ``resnet*``/``resnext*`` and timm's ``resnet*``/``resnext*``/``seresnet*``/
  ``seresnext*`` (``conv1``, ``layer1.0.se.fc1``, ``fc``). Flavour: stride in the 3x3, stem pool with padding 1.
- ``se_transfer``: our own files (``save_weights``), which carry the architecture and input normalisation.
- ``detectron2``: detectron2's ResNet names (``stem.conv1.norm``, ``res2.0.conv1``, ``res2.0.shortcut``, ``linear``)
  in a detectron2 .pkl: ours (``save_detectron2``, with our metadata) or torchvision's converted by detectron2's
  ``convert-torchvision-to-d2.py`` (``__author__: torchvision``).
- ``caffe2``: the Caffe2/Detectron model-zoo names of detectron2's ImageNet .pkl files (``conv1_w``,
  ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ``res2_0_branch1_w``, ``fc1000_w``); their norms are affine only (scale,
  bias), read as frozen statistics mean 0, variance 1, as detectron2 does. MSRA flavour: stride in the 1x1 (ResNet),
  detectron2's stem pool (padding 1), BGR 0..255 minus detectron2's MSRA mean, std 1.
Files are ``.pth``/``.pt``/``.bin`` (read with ``torch.load(weights_only=True)``), ``.safetensors``, or ``.pkl``
(unpickled with a loader that accepts only numpy arrays and plain containers, never arbitrary objects).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write
from ..state import misfit
from .factory import RESNET_DEFAULTS, RUNTIME_ARGS, baseline_of, build_model, list_models, model_defaults, model_entry
from .resnet import ResNet
from .se import se_hidden_channels

logger = logging.getLogger(__name__)

FORMAT_NAME = "se_transfer"
FORMAT_VERSION = 1

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
LAYOUT_INPUT_NORM = {"cadene": IMAGENET_RGB, "torchvision": IMAGENET_RGB, "caffe2": DETECTRON2_MSRA_BGR}

# Arguments that fix the network's shape: a checkpoint and the requested model must agree on them.
STRUCTURE_KEYS = (
    "block",
    "layers",
    "groups",
    "width_per_group",
    "reduce_first",
    "stem_type",
    "stem_width",
    "downsample_kernel",
    "se_stages",
)


class WeightsError(ValueError):
    """A weight file that cannot be read, recognised or loaded into the requested model."""


def _fail(path: Path | str, msg: str) -> WeightsError:
    return WeightsError(f"{path}: {msg}")


# ----------------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a weight file and return (state dict of tensors, our metadata or None). Never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    meta = None
    if path.suffix == ".pkl":
        return _read_pickle(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            obj: Any = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise _fail(path, f"not a readable safetensors file ({e})") from e
        if FORMAT_NAME in header:
            meta = json.loads(header[FORMAT_NAME])
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise _fail(
                path,
                "cannot be loaded with torch.load(weights_only=True): it is not a checkpoint, or it pickles objects "
                f"other than tensors and plain containers ({str(e).splitlines()[0]})",
            ) from e
        except Exception as e:  # torch.load raises many types on arbitrary bytes (IndexError, RuntimeError, ...)
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _fail(path, f"not a PyTorch checkpoint ({detail})") from e
        if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
            meta = {k: v for k, v in obj.items() if k != "model"}
    state = _unwrap_state_dict(obj, path)
    return state, meta


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain containers; refuses every other global (no code runs)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays and containers)")


# Where a detectron2 .pkl keeps its tensors, and the metadata our own .pkl files add.
PKL_AUTHOR_KEY = "__author__"


def read_pickle_payload(path: str | os.PathLike) -> dict[str, Any]:
    """The dict in a .pkl weights file (detectron2 / Caffe2 model zoo), unpickled without running any code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise _fail(path, f"not a weights .pkl that is safe to read ({e})") from e
    except Exception as e:  # truncated or foreign bytes raise EOFError, ValueError, ...
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _fail(path, f"not a readable .pkl ({detail})") from e
    if not isinstance(obj, Mapping):
        raise _fail(path, f"expected a dict of arrays, found {type(obj).__name__}")
    return dict(obj)


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A detectron2-style .pkl: {'model': arrays, '__author__', ...}, or Caffe2's {'blobs': arrays} / bare arrays."""
    import numpy as np

    obj = read_pickle_payload(path)
    meta: dict[str, Any] = {PKL_AUTHOR_KEY: str(obj.get(PKL_AUTHOR_KEY, "Caffe2"))}
    if isinstance(obj.get("model"), Mapping):
        arrays = obj["model"]
        if isinstance(obj.get(FORMAT_NAME), Mapping):
            meta.update(obj[FORMAT_NAME])
    else:
        arrays = obj["blobs"] if isinstance(obj.get("blobs"), Mapping) else obj
    state = {}
    for key, value in arrays.items():
        if str(key).endswith("_momentum"):  # Caffe2 solver state, not weights
            continue
        if isinstance(value, np.ndarray):
            state[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, torch.Tensor):
            state[str(key)] = value
    if not state:
        raise _fail(path, f"holds no arrays; top-level keys: {list(obj)[:10]}")
    return state, meta


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the model state dict in a checkpoint: plain, or under 'model' / 'state_dict' (training checkpoints)."""
    if not isinstance(obj, Mapping):
        raise _fail(path, f"expected a dict of tensors, found {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        for key in ("model", "state_dict", "model_state", "module"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state_dict(obj[key], path)
        raise _fail(
            path,
            "no state dict found: expected a dict of tensors or one under 'model' / 'state_dict'; "
            f"top-level keys: {list(obj)[:10]}",
        )
    for prefix in ("module.", "_orig_mod.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# -------------------------------------------------------------------------------------- layouts and key mapping


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a state dict: 'cadene', 'torchvision' (also timm) or 'se_transfer'."""
    if "layer0.conv1.weight" in state:
        return "cadene"
    if "stem.conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return FORMAT_NAME
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "torchvision"
    if "conv1.0.weight" in state:
        raise WeightsError(
            "this looks like a timm ResNet-C/D variant (deep stem 'conv1.0'), which is not an SENet-family layout"
        )
    if "res2.0.conv1.weight" in state:
        return "detectron2"
    if "res2_0_branch2a_w" in state or "conv1_w" in state:
        return "caffe2"
    if any(k.startswith(("roi_heads.", "proposal_generator.", "rpn.")) for k in state):
        raise WeightsError(
            "this is a whole-detector checkpoint, not backbone weights: give it to a detector as its MODEL.WEIGHTS"
        )
    raise WeightsError(
        "unrecognised weight layout: expected Cadene/timm-legacy ('layer0.conv1.weight'), torchvision/timm "
        "('conv1.weight'), se_transfer ('stem.conv1.weight'), detectron2 ('res2.0.conv1.weight') or Caffe2 "
        f"('res2_0_branch2a_w') keys; first keys: {list(state)[:8]}"
    )


_CADENE_RULES = [
    (re.compile(r"^layer0\."), "stem."),
    (re.compile(r"\.se_module\."), ".se."),
    (re.compile(r"^last_linear\."), "fc."),
]
_TORCHVISION_RULES = [
    (re.compile(r"^(conv1|bn1)\."), r"stem.\1."),
]


# detectron2's ResNet names -> ours (the inverse of ``detectron2_name``).
_DETECTRON2_RULES = [
    (re.compile(r"^res(\d)\."), lambda m: f"layer{int(m.group(1)) - 1}."),
    (re.compile(r"\.shortcut\.norm\."), ".downsample.1."),
    (re.compile(r"\.shortcut\."), ".downsample.0."),
    (re.compile(r"(^|\.)conv(\d)\.norm\."), r"\1bn\2."),
    (re.compile(r"^linear\."), "fc."),
]
# Caffe2 / Detectron model-zoo names -> detectron2's (then _DETECTRON2_RULES).
_CAFFE2_RULES = [
    (re.compile(r"^conv1_w$"), "stem.conv1.weight"),
    (re.compile(r"^res_conv1_bn_([sb])$"), r"stem.conv1.norm.\1"),
    (re.compile(r"^fc1000_([wb])$"), r"linear.\1"),
    (re.compile(r"^res(\d)_(\d+)_branch1_w$"), r"res\1.\2.shortcut.weight"),
    (re.compile(r"^res(\d)_(\d+)_branch1_bn_([sb])$"), r"res\1.\2.shortcut.norm.\3"),
    (re.compile(r"^res(\d)_(\d+)_branch2([abc])_w$"), lambda m: f"res{m[1]}.{m[2]}.conv{'abc'.index(m[3]) + 1}.weight"),
    (
        re.compile(r"^res(\d)_(\d+)_branch2([abc])_bn_([sb])$"),
        lambda m: f"res{m[1]}.{m[2]}.conv{'abc'.index(m[3]) + 1}.norm.{m[4]}",
    ),
    (re.compile(r"\.([sw])$"), lambda m: ".weight"),
    (re.compile(r"\.b$"), ".bias"),
]


def map_keys(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename the keys of a state dict of ``layout`` to ours (Caffe2's affine norms get statistics 0 / 1)."""
    if layout == "caffe2":
        state = _caffe2_to_detectron2(state)
        layout = "detectron2"
    rules = {
        "cadene": _CADENE_RULES,
        "torchvision": _TORCHVISION_RULES,
        "detectron2": _DETECTRON2_RULES,
        FORMAT_NAME: [],
    }[layout]
    out = OrderedDict()
    for key, value in state.items():
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _caffe2_to_detectron2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        name = key
        for pattern, repl in _CAFFE2_RULES:
            name = pattern.sub(repl, name)
        if name == key:
            raise WeightsError(f"Caffe2 tensor {key!r} has no counterpart in a ResNet")
        out[name] = value
    for key in [k for k in out if k.endswith(".norm.weight")]:
        # AffineChannel: y = x * s + b, i.e. a frozen norm with mean 0 and variance 1 (detectron2 does the same).
        stem = key[: -len("weight")]
        out.setdefault(stem + "running_mean", torch.zeros_like(out[key]))
        out.setdefault(stem + "running_var", torch.ones_like(out[key]))
    return out


def _layout_flavour(layout: str, arch: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture options a layout implies beyond its tensor shapes."""
    if layout == "cadene":
        return {
            # SEResNetBottleneck strides its 1x1; SEResNeXtBottleneck and SEBottleneck (SENet-154) their 3x3.
            "stride_in_1x1": arch["block"] == "bottleneck" and arch["groups"] == 1,
            "stem_pool": "caffe",
            # timm's legacy SEResNetBlock has a ReLU after bn2.
            "basic_relu_before_se": arch["block"] == "basic",
        }
    if layout == "torchvision":
        return {"stride_in_1x1": False, "stem_pool": "pytorch"}
    if layout == "caffe2":
        # MSRA ResNets stride their 1x1; FAIR's ResNeXts their 3x3. detectron2's stem pool pads by 1.
        return {"stride_in_1x1": arch["block"] == "bottleneck" and arch["groups"] == 1, "stem_pool": "pytorch"}
    if layout == "detectron2":  # converted from torchvision by detectron2's convert-torchvision-to-d2.py
        return {"stride_in_1x1": False, "stem_pool": "pytorch"}
    return {}  # a bare state dict of ours: the requested model's own defaults


def infer_architecture(state: Mapping[str, torch.Tensor], path: str | os.PathLike = "") -> dict[str, Any]:
    """Read the structure (block type, depths, groups, widths, stem, SE stages and widths) off a mapped state dict."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise _fail(path, f"tensor {key!r} is missing; cannot tell the architecture")
        return state[key].shape

    arch: dict[str, Any] = {}
    arch["block"] = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    layers = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not idx:
            raise _fail(path, f"no tensors for stage layer{stage} (res{stage + 1})")
        layers.append(max(idx) + 1)
    arch["layers"] = layers
    arch["stem_type"] = "deep" if "stem.conv2.weight" in state else "7x7"
    arch["stem_width"] = shape("stem.conv3.weight" if arch["stem_type"] == "deep" else "stem.conv1.weight")[0]
    if arch["block"] == "bottleneck":
        first_width, per_group = shape("layer1.0.conv1.weight")[0], shape("layer1.0.conv2.weight")[1]
        width = shape("layer1.0.conv2.weight")[0]
        groups = first_width // per_group
        arch.update(groups=groups, width_per_group=width // groups, reduce_first=width // first_width)
    else:
        arch.update(groups=1, width_per_group=64, reduce_first=1)
    ds = "layer2.0.downsample.0.weight"
    arch["downsample_kernel"] = state[ds].shape[-1] if ds in state else 1
    se_stages, se_channels = [], []
    for stage in range(1, 5):
        widths = {v.shape[0] for k, v in state.items() if re.fullmatch(rf"layer{stage}\.\d+\.se\.fc1\.weight", k)}
        if widths:
            se_stages.append(stage + 1)
        # Blocks that disagree leave the default width, so that the odd tensor is named when loading.
        se_channels.append(widths.pop() if len(widths) == 1 else None)
    arch["se_stages"] = se_stages
    arch["se_channels"] = se_channels
    arch["se_bias"] = any(k.endswith(".se.fc1.bias") for k in state) or not se_stages
    return arch


def _structure(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The structure keys of ``arch`` (filled with ResNet's defaults), as comparable values."""
    out = {}
    for k in STRUCTURE_KEYS:
        v = arch.get(k, RESNET_DEFAULTS[k])
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
            raise _fail(path, str(e)) from None
        if layout == "detectron2" and author != "torchvision":
            raise _fail(
                path,
                f"a detectron2 .pkl by {author!r} without se_transfer metadata: its stride position, stem and input "
                "normalisation cannot be told from it. Use the file it was converted from (any public layout), or "
                "convert that with tools/convert_weights.py",
            )
        state = map_keys(state, layout)
        arch = infer_architecture(state, path)
        flavour = _layout_flavour(layout, arch)
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


def build_pretrained(
    name: str,
    path: str | os.PathLike | CheckpointInfo,
    *,
    num_classes: int = 1000,
    overrides: Mapping[str, Any] | None = None,
    on_conflict: str = "warn",
) -> ResNet:
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
        raise _fail(path, mismatch)
    conflicts = flavour_conflicts(flavour, overrides)
    if conflicts and on_conflict == "error":
        shown = ", ".join(f"{k}: the file's {a!r}, requested {b!r}" for k, (a, b) in conflicts.items())
        raise _fail(path, f"the requested options contradict the network these weights were trained as ({shown})")
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
    model.input_norm = info.input_norm
    model.pretrained_source = {"path": str(path), "layout": info.layout, "head_loaded": head_loaded}
    logger.info("loaded %s weights (%s layout) from %s", name, info.layout, path)
    return model


def load_state_dict_checked(model: ResNet, state: Mapping[str, torch.Tensor], path: str | os.PathLike = "") -> bool:
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
        raise _fail(path, f"does not fit {what}: " + (f"{why} ({details})" if why else details))


def load_plain_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load our own (or a bare) state dict into a model of a family without public layouts, strictly."""
    state, meta = read_checkpoint(path)
    saved = (meta or {}).get("arch")
    if saved and (meta or {}).get("arch_kwargs"):
        saved += f" {dict(meta['arch_kwargs'])}"
    check_fit(model.state_dict(), state, path, getattr(model, "arch_name", type(model).__name__), saved)
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------------------------------------------- saving


def checkpoint_metadata(model: ResNet) -> dict[str, Any]:
    """What our weight files carry beside the tensors: format, architecture and input normalisation."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "arch": getattr(model, "arch_name", None),
        "arch_kwargs": dict(getattr(model, "arch_kwargs", {})),
        "input_norm": dict(model.input_norm or IMAGENET_RGB),
    }


def save_weights(model: ResNet, path: str | os.PathLike) -> Path:
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


def detectron2_name(key: str) -> str | None:
    """detectron2's name for one of our state-dict keys (None: not stored, e.g. num_batches_tracked)."""
    if key.endswith("num_batches_tracked"):
        return None
    k = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", key)
    k = re.sub(r"\.downsample\.0\.", ".shortcut.", k)
    k = re.sub(r"\.downsample\.1\.", ".shortcut.norm.", k)
    k = re.sub(r"(^|\.)bn(\d)\.", r"\1conv\2.norm.", k)
    return re.sub(r"^fc\.", "linear.", k)


def to_detectron2(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Rename our keys to detectron2's ResNet names (``res2.0.conv1.norm``, ``shortcut``, ``linear``) as numpy."""
    out = OrderedDict()
    for key, value in state.items():
        name = detectron2_name(key)
        if name is not None:
            out[name] = value.detach().cpu().numpy()
    return out


def save_detectron2(model: ResNet, path: str | os.PathLike) -> Path:
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


# --------------------------------------------------------------------------------------------- normalisation


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
