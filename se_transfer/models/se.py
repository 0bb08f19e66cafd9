"""The Squeeze-and-Excitation block (Hu et al., CVPR 2018, section 3) and the paper's ablation options.

``SEModule`` is the paper's block and nothing else: the textbook PyTorch ops. How it is computed faster (fused
Triton kernels on CUDA, a native CPU excitation, the producer fold at inference) lives in ``se_transfer.ops`` and is
applied to a model by the explicit transform ``se_transfer.models.fast_se.set_se_impl`` (``create_model`` applies
it with its ``se_impl`` argument).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.gates import apply_gate, check_gate

SQUEEZE_TYPES = ("avg", "max")


def se_hidden_channels(channels: int, reduction: int) -> int:
    """Width of the bottleneck FC of an SE block: C // r, at least 1 (as in the official models)."""
    if reduction < 1:
        raise ValueError(f"SE reduction ratio must be >= 1, got {reduction}")
    return max(1, channels // reduction)


class SEModule(nn.Module):
    """Squeeze (global pooling) -> FC -> ReLU -> FC -> gate, then rescale the input channel-wise.

    The FC layers are 1x1 convolutions, so the parameters have the shapes of the official release
    (``fc1.weight``: C/r x C x 1 x 1, ``fc2.weight``: C x C/r x 1 x 1).

    Args:
        channels: number of channels C of the input U.
        reduction: reduction ratio r (paper default 16); ignored when ``hidden_channels`` is given.
        hidden_channels: explicit width of the bottleneck FC (overrides ``reduction``).
        squeeze: 'avg' (paper) or 'max' (ablation, section 6.2).
        gate: 'sigmoid' (paper), 'tanh' or 'relu' (ablation, section 6.3).
        bias: whether the FC layers have biases (the released models do; the paper's ResNet ablations do not).
        no_squeeze: the NoSqueeze ablation (section 7.1): no pooling, the two 1x1 convolutions act on every
            position, so the gate varies over space.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        hidden_channels: int | None = None,
        squeeze: str = "avg",
        gate: str = "sigmoid",
        bias: bool = True,
        no_squeeze: bool = False,
    ) -> None:
        super().__init__()
        if squeeze not in SQUEEZE_TYPES:
            raise ValueError(f"SE squeeze must be one of {SQUEEZE_TYPES}, got {squeeze!r}")
        check_gate(gate)
        hidden = hidden_channels if hidden_channels is not None else se_hidden_channels(channels, reduction)
        self.channels = channels
        self.squeeze = squeeze
        self.gate_type = gate
        self.no_squeeze = no_squeeze
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

    @property
    def avg_squeeze(self) -> bool:
        """Whether this is the paper's average-squeeze block (the fast paths of ``se_transfer.ops`` need it)."""
        return self.squeeze == "avg" and not self.no_squeeze

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The gate s (N x C x 1 x 1, or N x C x H x W for NoSqueeze) for the input U."""
        if self.no_squeeze:
            s = self.fc2(self.relu(self.fc1(x)))
        else:
            z = x.mean((2, 3)) if self.squeeze == "avg" else x.amax((2, 3))
            # The FCs act on an N x C vector: a matrix product, not a 1x1 convolution on a 1x1 map (about 2% of
            # SE-ResNet-50's CPU time at batch 1). Same parameters, same shapes as the official 1x1 convs.
            h = self.relu(F.linear(z, self.fc1.weight.flatten(1), self.fc1.bias))
            s = F.linear(h, self.fc2.weight.flatten(1), self.fc2.bias)[:, :, None, None]
        return apply_gate(s, self.gate_type)

    def forward(
        self,
        x: torch.Tensor,
        shortcut: torch.Tensor | None = None,
        relu: bool = True,
        excitation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x * s``: x rescaled channel-wise by its excitation s; with ``shortcut``, the SE block with its residual
        sum, ``act(shortcut + x * s)`` (act: ReLU if ``relu``, else identity; see :meth:`residual_sum`).

        Every residual unit calls its SE block through here, so forward hooks on an ``SEModule`` see every call
        whatever computes it (``se_transfer.analysis`` reads the gates that way). ``excitation``: s, when the caller
        computed it already (the producer fold of ``se_transfer.models.fast_se`` does, from the layer before).
        """
        if shortcut is None:
            return x * (self.excitation(x) if excitation is None else excitation)
        if excitation is None:
            return self.residual_sum(x, shortcut, relu)
        return _scaled_sum(shortcut, x, excitation, relu)

    def residual_sum(self, u: torch.Tensor, shortcut: torch.Tensor, relu: bool = True) -> torch.Tensor:
        """``act(shortcut + u * excitation(u))`` with act ReLU or identity: the SE block with its residual sum (the
        paper's Fig. 3). The scale is fused with the sum (``addcmul``, the official release's Caffe Axpy layer)."""
        return _scaled_sum(shortcut, u, self.excitation(u), relu)

    def extra_repr(self) -> str:
        return f"squeeze={'none' if self.no_squeeze else self.squeeze}, gate={self.gate_type}"


def _scaled_sum(shortcut: torch.Tensor, u: torch.Tensor, s: torch.Tensor, relu: bool) -> torch.Tensor:
    out = torch.addcmul(shortcut, u, s)
    return out.relu_() if relu else out
