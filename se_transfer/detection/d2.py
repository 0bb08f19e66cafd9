"""detectron2 adapter: the project's SE backbones in detectron2's Faster R-CNN, trained by detectron2's own engine.

detectron2 is imported only inside the functions that need it; importing this module does not need it. The backbone
is the project's own ``ResNet`` (``se_transfer.detection.backbone``), wrapped as a detectron2 ``Backbone`` with
``output_shape()``, so it computes exactly what ``create_model(arch, pretrained=weights)`` computes, SE kernels and
frozen stages included. Usage, as a detectron2 project::

    from se_transfer.detection.d2 import add_se_transfer_config, merge_config_file, register, resolve_config
    register()                                  # the backbones enter detectron2's BACKBONE_REGISTRY
    cfg = get_cfg(); add_se_transfer_config(cfg)
    merge_config_file(cfg, "configs/detectron2/faster_rcnn_se_resnet50_fpn_2x.yaml")
    cfg.MODEL.WEIGHTS = "se_resnet50.pth"       # any public layout (Cadene, timm, torchvision, ours, .pkl)
    resolve_config(cfg)                         # fills ARCH, PIXEL_MEAN/STD, INPUT.FORMAT from the weights

Config keys (``add_se_transfer_config``):
- ``MODEL.SE_TRANSFER.ARCH``: a registered ImageNet-family model ('' = the one the weights file holds);
- ``MODEL.SE_TRANSFER.KWARGS``: model options beyond the file's (they may not contradict it);
- ``MODEL.SE_TRANSFER.SE_IMPL``: how SE blocks are computed ('auto': the fused Triton kernels on CUDA);
- ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` ([] = from the weights) and ``INPUT.FORMAT`` ('' = from the weights).
Also read: ``MODEL.WEIGHTS``, ``MODEL.RESNETS.OUT_FEATURES``, ``MODEL.RESNETS.NORM`` (FrozenBN, BN or SyncBN),
``MODEL.BACKBONE.FREEZE_AT`` and the ``MODEL.FPN.*`` keys. ``MODEL.RESNETS.DEPTH``, ``STRIDE_IN_1X1``, ``NUM_GROUPS``
and ``WIDTH_PER_GROUP`` describe detectron2's own ResNet and are not used: the weights file decides.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config import flatten
from ..engine.checkpoint import atomic_torch_save
from ..io import atomic_write_text
from ..models.layouts import read_checkpoint, read_pickle_payload
from ..models.weights import checkpoint_metadata
from .backbone import BACKBONE_META_KEY, BackboneConfigError, BackboneSpec, build_backbone, is_detector_state
from .backbone import resolve_backbone as _resolve

logger = logging.getLogger(__name__)

BACKBONE_NAMES = ("build_se_transfer_backbone", "build_se_transfer_fpn_backbone")
# `_BASE_: "detectron2-model-zoo://Base-RCNN-FPN.yaml"` names a config file shipped inside the installed detectron2
# package (found by path: detectron2.model_zoo imports pkg_resources, which current setuptools no longer has).
MODEL_ZOO_PREFIX = "detectron2-model-zoo://"
INSTALL_HINT = (
    "detectron2 is not installed. It has no usable PyPI package; build it from its source, e.g. "
    "`pip install ../shared/third_party/detectron2-0.6-cp311-cp311-linux_x86_64.whl` here, or "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'` elsewhere "
    "(see README, 'detectron2')"
)
_NORMS = {"FrozenBN": "FrozenBN", "BN": "BN", "SyncBN": "BN"}
# PIXEL_MEAN / PIXEL_STD that differ from the file's by at most this (0..255 units) are the same normalisation:
# detectron2's MSRA mean 103.53 and Caffe's 104 are one convention.
MEAN_TOLERANCE = 1.0
STD_RTOL = 0.01


def require_detectron2() -> None:
    """Import detectron2 or raise an ImportError that says how to install it."""
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e


# ------------------------------------------------------------------------------------------------------- config


def add_se_transfer_config(cfg: Any) -> None:
    """Add MODEL.SE_TRANSFER.* and make PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT 'from the weights' by default."""
    from detectron2.config import CfgNode

    cfg.MODEL.SE_TRANSFER = CfgNode()
    cfg.MODEL.SE_TRANSFER.ARCH = ""
    cfg.MODEL.SE_TRANSFER.KWARGS = CfgNode(new_allowed=True)
    cfg.MODEL.SE_TRANSFER.SE_IMPL = "auto"
    cfg.MODEL.PIXEL_MEAN = []
    cfg.MODEL.PIXEL_STD = []
    cfg.INPUT.FORMAT = ""


def model_zoo_config_dir() -> Path:
    """The folder of config files inside the installed detectron2 package (model_zoo/configs)."""
    import importlib.util

    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_zoo" / "configs"
    if not folder.is_dir():
        raise FileNotFoundError(f"detectron2 is installed without its model-zoo configs (no {folder})")
    return folder


def load_yaml_with_base(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A detectron2 YAML config with its ``_BASE_`` chain merged (safe_load; detectron2-model-zoo:// bases)."""
    path = Path(path)
    if str(path) in _seen:
        raise ValueError(f"{path}: _BASE_ chain loops: {' -> '.join(_seen + (str(path),))}")
    if not path.is_file():
        referrer = f" (the _BASE_ of {_seen[-1]})" if _seen else ""
        raise FileNotFoundError(f"config file not found: {path}{referrer}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping, found {type(data).__name__}")
    bases = data.pop("_BASE_", None)
    if bases is None:
        return data
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        if base.startswith(MODEL_ZOO_PREFIX):
            base_path = model_zoo_config_dir() / base[len(MODEL_ZOO_PREFIX) :]
        else:
            base_path = Path(os.path.expanduser(base))
            if not base_path.is_absolute():
                base_path = path.parent / base_path
        _merge_into(load_yaml_with_base(base_path, _seen + (str(path),)), merged)
    _merge_into(data, merged)
    return merged


def _merge_into(src: Mapping[str, Any], dst: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge_into(v, dst[k])
        else:
            dst[k] = copy.deepcopy(v)


def merge_config_file(cfg: Any, path: str | os.PathLike) -> None:
    """Merge a config file (and its _BASE_ files) into a detectron2 cfg; unknown keys are errors naming the file."""
    data = load_yaml_with_base(path)
    try:
        cfg.merge_from_other_cfg(type(cfg)(data))
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(f"{path}: {explain_merge_error(cfg, e)}") from None


def merge_overrides(cfg: Any, opts: list[str]) -> None:
    """Merge trailing KEY VALUE pairs; a misspelt key is an error that suggests the close matches."""
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(f"command-line overrides: {explain_merge_error(cfg, e)}") from None


def explain_merge_error(cfg: Any, error: Exception) -> str:
    """yacs' merge error as one line, with the valid keys closest to a non-existent one."""
    import difflib
    import re

    text = str(error.args[0]) if error.args else str(error)
    m = re.search(r"Non-existent (?:config )?key: (\S+)", text)
    if not m:
        return text
    key = m.group(1)
    close = difflib.get_close_matches(key, list(flatten(cfg)), n=2, cutoff=0.8)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config key {key}{hint}"


def input_config(input_norm: Mapping[str, Any]) -> tuple[str, list[float], list[float]]:
    """(INPUT.FORMAT, MODEL.PIXEL_MEAN, MODEL.PIXEL_STD) in detectron2's 0..255 convention for a weights' norm."""
    scale = 255.0 / float(input_norm["pixel_range"])
    mean = [round(float(m) * scale, 4) for m in input_norm["mean"]]
    std = [round(float(s) * scale, 4) for s in input_norm["std"]]
    return str(input_norm["channel_order"]), mean, std


def _check_input(cfg: Any, spec: BackboneSpec) -> list[str]:
    """The input keys of ``cfg`` that contradict the weights' normalisation, as messages."""
    fmt, mean, std = input_config(spec.input_norm)
    source = spec.path or "random initialisation (ImageNet RGB)"
    problems = []
    if cfg.INPUT.FORMAT and cfg.INPUT.FORMAT != fmt:
        problems.append(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r} but {source} expects {fmt!r} input")
    given_mean, given_std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    if given_mean and (
        len(given_mean) != len(mean) or any(abs(a - b) > MEAN_TOLERANCE for a, b in zip(given_mean, mean))
    ):
        problems.append(f"MODEL.PIXEL_MEAN={given_mean} but {source} expects {mean} ({fmt}, 0..255)")
    if given_std and (
        len(given_std) != len(std) or any(not math.isclose(a, b, rel_tol=STD_RTOL) for a, b in zip(given_std, std))
    ):
        problems.append(f"MODEL.PIXEL_STD={given_std} but {source} expects {std} ({fmt}, 0..255)")
    return problems


def uses_se_transfer(cfg: Any) -> bool:
    """Whether the config's backbone is one of ours."""
    return cfg.MODEL.BACKBONE.NAME in BACKBONE_NAMES


def backbone_spec(cfg: Any) -> BackboneSpec:
    """The backbone MODEL.WEIGHTS holds, checked against MODEL.SE_TRANSFER.ARCH / KWARGS (errors name both)."""
    return _resolve(
        cfg.MODEL.WEIGHTS,
        cfg.MODEL.SE_TRANSFER.ARCH,
        dict(cfg.MODEL.SE_TRANSFER.KWARGS),
        weights_key="MODEL.WEIGHTS",
        arch_key="MODEL.SE_TRANSFER.ARCH",
        kwargs_key="MODEL.SE_TRANSFER.KWARGS",
    )


def resolve_config(cfg: Any) -> BackboneSpec | None:
    """Fill MODEL.SE_TRANSFER.ARCH, MODEL.PIXEL_MEAN/STD and INPUT.FORMAT from MODEL.WEIGHTS where they are unset;
    raise a BackboneConfigError naming both sides where the config contradicts the file. ``cfg`` must be mutable.

    For a config whose backbone is not ours, unset input keys get detectron2's defaults (MSRA BGR)."""
    if not uses_se_transfer(cfg):
        from detectron2.config import get_cfg

        d2 = get_cfg()
        cfg.MODEL.PIXEL_MEAN = list(cfg.MODEL.PIXEL_MEAN) or list(d2.MODEL.PIXEL_MEAN)
        cfg.MODEL.PIXEL_STD = list(cfg.MODEL.PIXEL_STD) or list(d2.MODEL.PIXEL_STD)
        cfg.INPUT.FORMAT = cfg.INPUT.FORMAT or d2.INPUT.FORMAT
        return None
    spec = backbone_spec(cfg)
    problems = _check_input(cfg, spec)
    if problems:
        raise BackboneConfigError("; ".join(problems) + ". Leave them unset to take them from the weights")
    fmt, mean, std = input_config(spec.input_norm)
    cfg.MODEL.SE_TRANSFER.ARCH = spec.arch
    cfg.INPUT.FORMAT = cfg.INPUT.FORMAT or fmt
    cfg.MODEL.PIXEL_MEAN = list(cfg.MODEL.PIXEL_MEAN) or mean
    cfg.MODEL.PIXEL_STD = list(cfg.MODEL.PIXEL_STD) or std
    logger.info(
        "backbone %s from %s (%s): INPUT.FORMAT %s, MODEL.PIXEL_MEAN %s, MODEL.PIXEL_STD %s",
        spec.arch,
        spec.path or "random initialisation",
        spec.source,
        cfg.INPUT.FORMAT,
        list(cfg.MODEL.PIXEL_MEAN),
        list(cfg.MODEL.PIXEL_STD),
    )
    return spec


# ----------------------------------------------------------------------------------------------------- backbone


def _backbone_class() -> type:
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import Backbone

    class SETransferBackbone(Backbone):
        """The project's ResNet (features mode) as a detectron2 Backbone: res2..res5 with their channels/strides."""

        def __init__(self, body: Any) -> None:
            super().__init__()
            self.body = body
            self._out_features = list(body.out_features)
            shapes = body.output_shape()
            self._out_feature_channels = {k: v.channels for k, v in shapes.items()}
            self._out_feature_strides = {k: v.stride for k, v in shapes.items()}

        def forward(self, x):
            return self.body(x)

        def output_shape(self):
            return {
                k: ShapeSpec(channels=self._out_feature_channels[k], stride=self._out_feature_strides[k])
                for k in self._out_features
            }

        def checkpoint_metadata(self) -> dict[str, Any]:
            """The architecture, options and input normalisation of the backbone, for detector checkpoints."""
            return checkpoint_metadata(self.body)

    return SETransferBackbone


def build_bottom_up(cfg: Any, input_shape: Any) -> Any:
    """The SE backbone of ``cfg`` as a detectron2 Backbone, weights loaded when MODEL.WEIGHTS holds backbone weights."""
    spec = backbone_spec(cfg)
    problems = _check_input(cfg, spec)
    if not cfg.MODEL.PIXEL_MEAN or not cfg.MODEL.PIXEL_STD or not cfg.INPUT.FORMAT:
        problems.append(
            "MODEL.PIXEL_MEAN, MODEL.PIXEL_STD and INPUT.FORMAT are unset: call "
            "se_transfer.detection.d2.resolve_config(cfg) before building the model (tools/train_net_d2.py does)"
        )
    if problems:
        raise BackboneConfigError("; ".join(problems))
    in_chans = int(spec.kwargs.get("in_chans", 3))
    if input_shape.channels != in_chans:
        raise BackboneConfigError(
            f"the backbone takes {in_chans}-channel input, the model gives {input_shape.channels}"
        )
    norm = cfg.MODEL.RESNETS.NORM
    if norm not in _NORMS:
        raise BackboneConfigError(f"MODEL.RESNETS.NORM={norm!r}: the SE backbones support {sorted(_NORMS)}")
    body = build_backbone(
        spec,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=_NORMS[norm],
        se_impl=cfg.MODEL.SE_TRANSFER.SE_IMPL,
        out_features=tuple(cfg.MODEL.RESNETS.OUT_FEATURES),
    )
    if norm == "SyncBN":
        import torch

        body = torch.nn.SyncBatchNorm.convert_sync_batchnorm(body)
    return _backbone_class()(body)


def register() -> None:
    """Register the two backbone builders into detectron2's BACKBONE_REGISTRY (once; needs detectron2)."""
    require_detectron2()
    from detectron2.modeling import BACKBONE_REGISTRY
    from detectron2.modeling.backbone import FPN
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    if BACKBONE_NAMES[0] in BACKBONE_REGISTRY:
        return

    def build_se_transfer_backbone(cfg, input_shape):
        """An se_transfer model (from MODEL.WEIGHTS / MODEL.SE_TRANSFER.ARCH) as a detectron2 backbone."""
        return build_bottom_up(cfg, input_shape)

    def build_se_transfer_fpn_backbone(cfg, input_shape):
        """The backbone above with detectron2's FPN (P2-P6, P6 by max-pooling P5)."""
        return FPN(
            bottom_up=build_bottom_up(cfg, input_shape),
            in_features=cfg.MODEL.FPN.IN_FEATURES,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            top_block=LastLevelMaxPool(),
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        )

    BACKBONE_REGISTRY.register(build_se_transfer_backbone)
    BACKBONE_REGISTRY.register(build_se_transfer_fpn_backbone)


# -------------------------------------------------------------------------------------------------- checkpoints


def _find_backbone(model: Any) -> Any:
    for m in model.modules():
        if hasattr(m, "checkpoint_metadata") and hasattr(m, "body"):
            return m
    return None


def checkpointer_class() -> type:
    """detectron2's DetectionCheckpointer, made safe and aware of the SE backbone (see the class docstring)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    class SETransferCheckpointer(DetectionCheckpointer):
        """DetectionCheckpointer that (1) saves the backbone's architecture in every checkpoint (BACKBONE_META_KEY),
        so ``--eval-only``/``--resume`` rebuild the network the weights belong to; (2) leaves backbone-only
        MODEL.WEIGHTS to the backbone builder, which already loaded and checked them; (3) reads .pth with
        ``weights_only=True`` and .pkl with a loader that accepts arrays only (detectron2 unpickles anything)."""

        def save(self, name: str, **kwargs: Any) -> None:
            """fvcore's save, written atomically (temporary file, fsync, rename) with the backbone's metadata."""
            if not self.save_dir or not self.save_to_disk:
                return
            data = {"model": self.model.state_dict()}
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
            backbone = _find_backbone(self.model)
            if backbone is not None:
                data[BACKBONE_META_KEY] = backbone.checkpoint_metadata()
            data.update(kwargs)
            basename = f"{name}.pth"
            path = atomic_torch_save(data, Path(self.save_dir) / basename)
            self.logger.info("Saved checkpoint to %s", path)
            self.tag_last_checkpoint(basename)

        def tag_last_checkpoint(self, last_filename_basename: str) -> None:
            atomic_write_text(Path(self.save_dir) / "last_checkpoint", last_filename_basename)

        def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            if path and os.path.isfile(path) and not is_detector_state(read_checkpoint(path)[0]):
                self.logger.info(
                    "%s holds backbone weights only: the backbone builder loaded them (every tensor checked); "
                    "the FPN and the heads start from their initialisation",
                    path,
                )
                return {}
            return super().load(path, *args, **kwargs)

        def _load_file(self, filename: str) -> dict[str, Any]:
            if filename.endswith(".pkl"):
                data = read_pickle_payload(filename)
                if "model" in data and "__author__" in data:
                    return data
                data = data.get("blobs", data)
                data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
                return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
            return super()._load_file(filename)

        def _torch_load(self, f: str) -> dict[str, Any]:
            return torch.load(f, map_location="cpu", weights_only=True)

    return SETransferCheckpointer
