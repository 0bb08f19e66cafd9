"""Parameter and multiply-add counts, as in the paper's Table 2 ("GFLOPs" there are multiply-adds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .fast_se import se_impl
from .se import SEModule


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int = 224, batch_size: int = 1) -> dict[str, int]:
    """Multiply-adds of one forward pass at ``input_size`` x ``input_size``, per image.

    ``conv_fc``: the convolutions and fully connected layers (torch's FlopCounterMode, FLOPs / 2), the paper's measure.
    ``se_elementwise``: the SE blocks' own per-element work, counted as one multiply-add per element of U for the
    squeeze (a mean is a sum of x / HW) and one for the scale (NoSqueeze: the scale only). Their FCs are in conv_fc.
    ``total``: the sum of both. Runs on whatever device the model is on; a model on the 'meta' device costs nothing.
    """
    elementwise = 0

    def counting(module: SEModule) -> Callable[[torch.Tensor], torch.Tensor]:
        excitation = module.excitation  # the bound method; every SE path (fused or not) calls it once per forward

        def wrapped(x: torch.Tensor) -> torch.Tensor:
            nonlocal elementwise
            elementwise += x.numel() if module.no_squeeze else 2 * x.numel()
            return excitation(x)

        return wrapped

    se_modules = [m for m in model.modules() if isinstance(m, SEModule)]
    for m in se_modules:
        m.excitation = counting(m)  # an instance attribute shadows the method until deleted below
    param = next(model.parameters())
    x = torch.zeros(batch_size, 3, input_size, input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:  # the paper's measure: the textbook SE (squeeze over U, full fc1), not our inference shortcut
        with counter, torch.no_grad(), se_impl(model, "eager"):
            model(x)
    finally:
        for m in se_modules:
            del m.excitation
        model.train(was_training)
    conv_fc = counter.get_total_flops() // 2 // batch_size
    se = elementwise // batch_size
    return {"conv_fc": conv_fc, "se_elementwise": se, "total": conv_fc + se}


def complexity_row(name: str, input_size: int = 224, **overrides: Any) -> dict[str, Any]:
    """Parameters and multiply-adds of a registered model, built on the meta device (no memory, no compute)."""
    from .builder import create_model

    with torch.device("meta"):
        model = create_model(name, **overrides)
    macs = count_macs(model, input_size)
    return {"model": name, "params": count_parameters(model), **{f"macs_{k}": v for k, v in macs.items()}}
