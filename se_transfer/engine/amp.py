"""Mixed precision by name: the one map from the config's / command line's 'none' | 'bf16' | 'fp16' to a dtype."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(name: str, key: str = "SOLVER.AMP") -> torch.dtype | None:
    """The autocast dtype of ``name`` (None for 'none'); another name is an error naming ``key``."""
    if name not in AMP_DTYPES:
        raise ValueError(f"{key} must be one of {sorted(AMP_DTYPES)}, got {name!r}")
    return AMP_DTYPES[name]


def autocast(device_type: str, dtype: torch.dtype | None) -> AbstractContextManager:
    """torch.autocast to ``dtype`` on ``device_type``, or nothing when ``dtype`` is None."""
    return nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
