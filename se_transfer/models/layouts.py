"""Weight files in every public layout: read them safely, recognise the layout, map the keys to ours (and ours to
detectron2's).

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
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "se_transfer"
FORMAT_VERSION = 1


class WeightsError(ValueError):
    """A weight file that cannot be read, recognised or loaded into the requested model."""


def file_error(path: Path | str, msg: str) -> WeightsError:
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
            raise file_error(path, f"not a readable safetensors file ({e})") from e
        if FORMAT_NAME in header:
            meta = json.loads(header[FORMAT_NAME])
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise file_error(
                path,
                "cannot be loaded with torch.load(weights_only=True): it is not a checkpoint, or it pickles objects "
                f"other than tensors and plain containers ({str(e).splitlines()[0]})",
            ) from e
        except Exception as e:  # torch.load raises many types on arbitrary bytes (IndexError, RuntimeError, ...)
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise file_error(path, f"not a PyTorch checkpoint ({detail})") from e
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
        raise file_error(path, f"not a weights .pkl that is safe to read ({e})") from e
    except Exception as e:  # truncated or foreign bytes raise EOFError, ValueError, ...
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise file_error(path, f"not a readable .pkl ({detail})") from e
    if not isinstance(obj, Mapping):
        raise file_error(path, f"expected a dict of arrays, found {type(obj).__name__}")
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
        raise file_error(path, f"holds no arrays; top-level keys: {list(obj)[:10]}")
    return state, meta


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the model state dict in a checkpoint: plain, or under 'model' / 'state_dict' (training checkpoints)."""
    if not isinstance(obj, Mapping):
        raise file_error(path, f"expected a dict of tensors, found {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        for key in ("model", "state_dict", "model_state", "module"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state_dict(obj[key], path)
        raise file_error(
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
