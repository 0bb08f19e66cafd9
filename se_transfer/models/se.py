"""The Squeeze-and-Excitation block (Hu et al., CVPR 2018, section 3) and the paper's ablation options."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..ops import cpu_gate

SQUEEZE_TYPES = ("avg", "max")
GATE_TYPES = ("sigmoid", "tanh", "relu")
# How an SE block is computed (same parameters, same results up to floating-point rounding):
#   'eager'  the textbook PyTorch ops (squeeze over U, two FCs, gate, scale fused with the residual sum);
#   'triton' the fused CUDA kernels of se_transfer.ops.fused_se (an error where they cannot run);
#   'auto'   Triton on CUDA tensors when it is installed; elsewhere eager, except that inference without autograd
#            in a bottleneck takes the squeeze from the producer of U (see SEModule.producer_excitation), and that
#            float32 CPU inference runs the excitation as one native call (se_transfer.ops.cpu_gate) where it builds.
SE_IMPLS = ("auto", "eager", "triton")
_AFFINE = ("weight", "bias")
# BatchNorm's kernel updates running_mean/var in place without bumping their version counters; nn.BatchNorm2d bumps
# num_batches_tracked (a Python add_) on every such update, so that one stands for the statistics in the cache key.
_NORM_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _state_key(tensors) -> list:
    """A cache key that changes when any of ``tensors`` (None allowed) is replaced, moved to other storage (``.to``,
    ``.data =``) or modified in place: their storage addresses and version counters."""
    return [None if t is None else (t.data_ptr(), t._version) for t in tensors]


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
        if gate not in GATE_TYPES:
            raise ValueError(f"SE gate must be one of {GATE_TYPES}, got {gate!r}")
        hidden = hidden_channels if hidden_channels is not None else se_hidden_channels(channels, reduction)
        self.channels = channels
        self.squeeze = squeeze
        self.gate_type = gate
        self.no_squeeze = no_squeeze
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)
        self.impl = "auto"
        self._producer_cache: tuple[list, tuple[torch.Tensor, ...]] | None = None
        self._producer_plan: tuple[nn.Module, nn.Module, bool, list] | None = None
        self._native_cache: tuple[list, cpu_gate.GateParams | None] | None = None

    def _gate(self, s: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if self.gate_type == "sigmoid":
            return s.sigmoid_() if inplace else torch.sigmoid(s)
        if self.gate_type == "tanh":
            return s.tanh_() if inplace else torch.tanh(s)
        return s.relu_() if inplace else torch.relu(s)

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """Return the gate s (N x C x 1 x 1, or N x C x H x W for NoSqueeze) for the input U.

        With ``impl='auto'``, float32 CPU inference without autograd runs the average-squeeze SE as one native call
        (``se_transfer.ops.cpu_gate``) where that kernel could be built."""
        if x.dtype == torch.float32 and x.is_cpu and self._inference_shortcuts():
            params = self._native_params()
            if params is not None:
                return cpu_gate.excitation(params, x)
        if self.no_squeeze:
            s = self.fc2(self.relu(self.fc1(x)))
        else:
            z = x.mean((2, 3)) if self.squeeze == "avg" else x.amax((2, 3))
            # The FCs act on an N x C vector: a matrix product, not a 1x1 convolution on a 1x1 map (about 2% of
            # SE-ResNet-50's CPU time at batch 1). Same parameters, same shapes as the official 1x1 convs.
            h = self.relu(F.linear(z, self.fc1.weight.flatten(1), self.fc1.bias))
            s = F.linear(h, self.fc2.weight.flatten(1), self.fc2.bias)[:, :, None, None]
        return self._gate(s)

    def _inference_shortcuts(self) -> bool:
        """Whether the inference-only paths (the producer fold, the native CPU excitation) may run: ``impl='auto'``,
        no autograd, and neither compiling (the compiler fuses the squeeze itself) nor tracing (a trace would keep
        W' as a constant, and record the native call's output as an unfilled tensor)."""
        return (
            self.impl == "auto"
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
        )

    def _native_params(self) -> cpu_gate.GateParams | None:
        """fc1 and fc2 in the native kernel's layout, cached (rebuilt when their storage or version changes); None
        where the kernel does not apply (NoSqueeze, max squeeze, weights not float32 on the CPU, no kernel)."""
        if self.no_squeeze or self.squeeze != "avg":
            return None
        fc1, fc2 = self._modules["fc1"]._parameters, self._modules["fc2"]._parameters
        sources = (fc1["weight"], fc1.get("bias"), fc2["weight"], fc2.get("bias"))
        key = _state_key(sources)
        cache = self._native_cache
        if cache is None or cache[0] != key:
            w1, b1, w2, b2 = sources
            params = cpu_gate.gate_params(w1.flatten(1), b1, w2.flatten(1).t(), b2, self.gate_type)
            cache = self._native_cache = (key, params)
        return cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale x channel-wise by its excitation."""
        return x * self.excitation(x)

    # ---------------------------------------------------------------------------------------- fused forms

    def use_triton(self, u: torch.Tensor) -> bool:
        """Whether ``scale_residual`` takes the fused Triton path for ``u`` (``impl='triton'`` insists on it)."""
        if self.impl == "eager" or (self.impl == "auto" and not u.is_cuda):
            return False
        from ..ops import fused_se

        supported = not self.no_squeeze and self.squeeze == "avg" and u.dim() == 4
        if self.impl == "triton":
            if not supported:
                raise RuntimeError(
                    f"se_impl='triton' supports the average squeeze only (this block: {self.extra_repr()})"
                )
            if not fused_se.can_run(u):
                raise RuntimeError(
                    f"se_impl='triton' needs Triton and a CUDA tensor (got a {u.device.type} tensor"
                    f"{'' if fused_se.triton_available() else '; triton is not installed'}); use se_impl='auto'"
                )
            return True
        return supported and fused_se.can_run(u)

    def scale_residual(self, u: torch.Tensor, shortcut: torch.Tensor, relu: bool = True) -> torch.Tensor:
        """``act(shortcut + u * excitation(u))`` with act ReLU or identity: the SE block with its residual sum.

        On CUDA (``impl`` 'auto' or 'triton') this is one fused op: a squeeze that reads U once, one pass for
        scale + sum + ReLU, and a two-pass backward. Elsewhere the scale is fused with the sum (``addcmul``, Caffe's
        Axpy) and the ReLU acts in place.
        """
        if self.use_triton(u):
            from ..ops.fused_se import se_scale_residual

            return se_scale_residual(
                u, shortcut, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.gate_type, relu
            )
        out = torch.addcmul(shortcut, u, self.excitation(u))
        return out.relu_() if relu else out

    def producer_fold(self, x: torch.Tensor, producer: nn.Conv2d, norm: nn.Module) -> tuple | None:
        """The cached fold for ``producer_excitation`` when it applies to a block with input ``x``, else None.

        It applies in inference without autograd where the fused CUDA kernels do not run (they do scale + sum + ReLU
        in one pass), U = norm(producer(h)) with a 1x1, stride-1, ungrouped producer and a norm that is a fixed
        per-channel affine map, and an average squeeze. The fold is rebuilt first if any tensor it comes from
        changed (see ``producer_excitation``)."""
        # Once per block and forward, right after the previous block's convolutions have evicted every cache: each
        # object touched here costs, so the run-time conditions come first, the structural ones are worked out once
        # per (producer, norm) pair, and the modules' dicts are read directly (not through Module.__getattr__).
        if not self._inference_shortcuts():
            return None
        if x.is_cuda and self.use_triton(x):
            return None
        plan = self._producer_plan
        if plan is None or plan[0] is not producer or plan[1] is not norm:
            plan = self._plan(producer, norm)
        if not plan[2] or (norm.training and isinstance(norm, nn.BatchNorm2d)):  # BN in training: batch statistics
            return None
        key = _state_key([d.get(n) for d, n in plan[3]])  # every tensor W', b' and fc2 come from
        key.append(norm.eps)
        cache = self._producer_cache
        if cache is None or cache[0] != key:
            cache = self._producer_cache = (key, self._fold(producer, norm, self._modules["fc1"], self._modules["fc2"]))
        return cache[1]

    def _plan(self, producer: nn.Conv2d, norm: nn.Module) -> tuple[nn.Module, nn.Module, bool, list]:
        """(producer, norm, whether the shortcut fits them, the (dict, name) slots of the tensors the fold reads)."""
        plan = self._producer_plan
        if plan is None or plan[0] is not producer or plan[1] is not norm:
            sources = ((producer, _AFFINE), (norm, _NORM_STATE), (self._modules["fc1"], _AFFINE))
            sources += ((self._modules["fc2"], _AFFINE),)
            slots = [
                (mod._buffers if name in mod._buffers else mod._parameters, name)
                for mod, names in sources
                for name in names
            ]
            plan = self._producer_plan = (producer, norm, self._producer_structure_ok(producer, norm), slots)
        return plan

    def _producer_structure_ok(self, producer: nn.Conv2d, norm: nn.Module) -> bool:
        if self.no_squeeze or self.squeeze != "avg" or not isinstance(producer, nn.Conv2d):
            return False
        if producer.kernel_size != (1, 1) or producer.stride != (1, 1) or producer.groups != 1:
            return False
        if producer.padding not in ((0, 0), "valid") or producer.dilation != (1, 1):
            return False
        if isinstance(norm, nn.BatchNorm2d):
            return norm.running_mean is not None and norm.running_var is not None
        return isinstance(norm, FrozenBatchNorm2d)

    def producer_excitation(self, h: torch.Tensor, fold: tuple) -> torch.Tensor:
        """The excitation of U = norm(producer(h)), computed from h without reading U (inference only); ``fold`` is
        what ``producer_fold`` returned for this block.

        With a 1x1 stride-1 producer W and an affine norm (scale a, shift b), the mean of U over space is
        a * (W @ mean(h)) + b, so fc1(mean(U)) = W' @ mean(h) + b' with W' = fc1 diag(a) W and b' = fc1 b + b_fc1.
        The squeeze then reads h (a quarter of U's channels in a bottleneck) and fc1 reads W' (a quarter of fc1's
        size). W' and b' are cached and rebuilt whenever any of the tensors they come from changes (checked by
        storage and version counter on every forward). For float32 on a CPU the squeeze, both FCs and the gate run
        as one native call when ``se_transfer.ops.cpu_gate`` could build its kernel, else as PyTorch ops. Equal to
        ``excitation(U)`` up to floating-point rounding.
        """
        w_fold, b_fold, w2_t, b2, native = fold
        if native is not None and h.dtype == torch.float32:
            return cpu_gate.excitation(native, h)  # the five ops below in one native call (se_transfer.ops.cpu_gate)
        n = h.shape[0]
        hidden = torch.addmm(b_fold, h.sum((2, 3)), w_fold, alpha=1.0 / (h.shape[2] * h.shape[3])).relu_()
        s = torch.mm(hidden, w2_t) if b2 is None else torch.addmm(b2, hidden, w2_t)
        return self._gate(s, inplace=True).view(n, self.channels, 1, 1)

    def _fold(self, producer: nn.Conv2d, norm: nn.Module, fc1: nn.Conv2d, fc2: nn.Conv2d) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            f64 = torch.float64
            scale = norm.running_var.to(f64).add(norm.eps).rsqrt()
            if norm.weight is not None:
                scale = scale * norm.weight.to(f64)
            shift = -norm.running_mean.to(f64) * scale
            if norm.bias is not None:
                shift = shift + norm.bias.to(f64)
            if producer.bias is not None:
                shift = shift + producer.bias.to(f64) * scale
            w1 = fc1.weight.flatten(1).to(f64)
            w_fold = w1 @ (scale[:, None] * producer.weight.flatten(1).to(f64))  # hidden x C_in
            b_fold = w1 @ shift
            if fc1.bias is not None:
                b_fold = b_fold + fc1.bias.to(f64)
            dtype = fc1.weight.dtype
            # W' transposed and contiguous (addmm(b, z, W'^T) reads it row by row); fc2 as a transposed view
            w2_t = fc2.weight.view(self.channels, -1).t()
            w_fold, b_fold = w_fold.to(dtype), b_fold.to(dtype)
            native = cpu_gate.gate_params(w_fold, b_fold, w2_t, fc2.bias, self.gate_type)
            return w_fold.t().contiguous(), b_fold, w2_t, fc2.bias, native

    def extra_repr(self) -> str:
        return f"squeeze={'none' if self.no_squeeze else self.squeeze}, gate={self.gate_type}, impl={self.impl}"


def set_se_impl(model: nn.Module, impl: str) -> nn.Module:
    """Choose how every SE block of ``model`` is computed ('auto', 'eager' or 'triton'; see ``SE_IMPLS``)."""
    if impl not in SE_IMPLS:
        raise ValueError(f"se_impl must be one of {SE_IMPLS}, got {impl!r}")
    if impl == "triton":
        from ..ops import fused_se

        if not fused_se.triton_available():
            raise RuntimeError("se_impl='triton' needs the triton package (pip install triton); use se_impl='auto'")
    for m in model.modules():
        if isinstance(m, SEModule):
            m.impl = impl
    return model


@contextlib.contextmanager
def se_impl(model: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Temporarily compute every SE block of ``model`` with ``impl``; the previous choices come back afterwards."""
    previous = [(m, m.impl) for m in model.modules() if isinstance(m, SEModule)]
    set_se_impl(model, impl)
    try:
        yield model
    finally:
        for m, old in previous:
            m.impl = old
