"""The SE gates, once: the function, its in-place form and its derivative, for every implementation.

The order of ``GATES`` is also the native kernel's gate code (``csrc/se_gate.c``: 0 sigmoid, 1 tanh, 2 relu).
The models (``se_transfer.models.se``), the fused Triton op's excitation and its manual backward
(``se_transfer.ops.fused_se``) and the native CPU excitation (``se_transfer.ops.cpu_gate``) all read this table.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Gate(NamedTuple):
    forward: object  # s -> g
    forward_: object  # s -> g, writing into s
    grad: object  # (dg, g) -> ds, from the gate's output g


GATE_TABLE: dict[str, Gate] = {
    "sigmoid": Gate(torch.sigmoid, torch.Tensor.sigmoid_, lambda dg, g: dg * g * (1 - g)),
    "tanh": Gate(torch.tanh, torch.Tensor.tanh_, lambda dg, g: dg * (1 - g * g)),
    "relu": Gate(torch.relu, torch.Tensor.relu_, lambda dg, g: torch.where(g > 0, dg, 0.0)),
}
GATES = tuple(GATE_TABLE)


def check_gate(gate: str, what: str = "SE gate") -> None:
    """A ValueError naming the valid gates when ``gate`` is not one of them."""
    if gate not in GATE_TABLE:
        raise ValueError(f"{what} must be one of {GATES}, got {gate!r}")


def apply_gate(s: torch.Tensor, gate: str, inplace: bool = False) -> torch.Tensor:
    """``gate(s)``; with ``inplace`` written into ``s`` (only where autograd does not need ``s``)."""
    g = GATE_TABLE[gate]
    return g.forward_(s) if inplace else g.forward(s)


def gate_backward(dg: torch.Tensor, g: torch.Tensor, gate: str) -> torch.Tensor:
    """The gradient with respect to the gate's input, from the gradient ``dg`` of its output ``g``."""
    return GATE_TABLE[gate].grad(dg, g)


def gate_code(gate: str) -> int:
    """The native kernel's code of ``gate``."""
    return GATES.index(gate)
