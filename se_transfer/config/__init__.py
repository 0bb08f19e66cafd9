"""Configuration: defaults (every key documented), YAML files with _BASE_, KEY VALUE overrides, unknown keys refused."""

from __future__ import annotations

import ast
import contextlib
import difflib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode

from .defaults import _C

__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_config", "merge_file", "merge_overrides"]


class ConfigError(ValueError):
    """A config file or override that cannot be applied (unknown key, wrong type, unreadable file)."""


@contextlib.contextmanager
def config_key(key: str, value: Any) -> Iterator[None]:
    """Errors about files and data raised inside name the config key that set the path: ``DATA.ROOT /x: ...``.

    The error keeps its type (so the command line still reports it as one ``error:`` line); its message gains the
    key and value in front, once."""
    try:
        yield
    except (OSError, ValueError) as e:
        prefix = f"{key} {value}: "
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror or e}"
        if not value or message.startswith(prefix) or key in message:
            raise
        message = f"{key} {message}" if message.startswith(f"{value}:") else prefix + message
        try:
            new = type(e)(message)
        except Exception:  # an exception type with another constructor: leave it as it was
            raise e from None
        raise new from e


def get_cfg() -> CfgNode:
    """A fresh copy of the default configuration."""
    return _C.clone()


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'SOLVER.BASE_LR': 0.1, ...}: the leaf values of a nested config or mapping by dotted key (an empty node is a
    leaf, as MODEL.KWARGS can be)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CfgNode):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _unknown_key(full_key: str, cfg: CfgNode, source: str) -> ConfigError:
    close = difflib.get_close_matches(full_key, _all_keys(cfg), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"{source}: unknown config key {full_key!r}{hint}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config with yaml.safe_load, resolving _BASE_ (relative to the file) recursively."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _BASE_ cycle through {[str(p) for p in seen]}")
    if not path.is_file():
        referrer = f" (the _BASE_ of {seen[-1]})" if seen else ""
        raise ConfigError(f"config file not found: {path}{referrer}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / base, seen + (path,))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def _coerce(value: Any, default: Any, full_key: str, source: str) -> Any:
    """Check a new value against the default's type (ints may become floats, lists tuples and back)."""
    if isinstance(default, CfgNode):
        raise ConfigError(f"{source}: {full_key} is a group of keys, not a value")
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)
    elif isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(default)(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"{source}: {full_key} must be of type {type(default).__name__} (default {default!r}), got {value!r}"
    )


def _merge_dict(cfg: CfgNode, data: dict, source: str, root: CfgNode, prefix: str = "") -> None:
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            if not cfg.is_new_allowed():
                raise _unknown_key(full, root, source)
            cfg[key] = CfgNode(value) if isinstance(value, dict) else value
        elif isinstance(cfg[key], CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full} is a group of keys; give a mapping, got {value!r}")
            _merge_dict(cfg[key], value, source, root, full + ".")
        else:
            if isinstance(value, str) and not isinstance(cfg[key], str):
                value = _parse_literal(value)  # detectron2's YAML style: STEPS: (120000, 160000)
            cfg[key] = _coerce(value, cfg[key], full, source)


def merge_file(cfg: CfgNode, path: str | os.PathLike) -> CfgNode:
    """Merge a YAML file (and its _BASE_ chain) into ``cfg``; unknown keys and wrong types are errors."""
    _merge_dict(cfg, _read_yaml(Path(path)), str(path), cfg)
    return cfg


def _parse_literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as a path or a model name


def merge_overrides(cfg: CfgNode, opts: Sequence[str]) -> CfgNode:
    """Apply ``KEY VALUE`` pairs (values read as Python literals, detectron2's convention)."""
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides must be KEY VALUE pairs, got an odd list: {list(opts)}")
    for key, text in zip(opts[0::2], opts[1::2]):
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            if part not in node or not isinstance(node[part], CfgNode):
                raise _unknown_key(key, cfg, "command line")
            node = node[part]
        value = _parse_literal(text)
        if leaf not in node:
            if node.is_new_allowed():
                node[leaf] = value
                continue
            raise _unknown_key(key, cfg, "command line")
        node[leaf] = _coerce(value, node[leaf], key, "command line")
    return cfg


def load_config(config_file: str | os.PathLike | None, opts: Iterable[str] = ()) -> CfgNode:
    """Defaults, then the config file (with _BASE_), then command-line overrides; the result is frozen."""
    cfg = get_cfg()
    if config_file:
        merge_file(cfg, config_file)
    merge_overrides(cfg, list(opts))
    cfg.freeze()
    return cfg
