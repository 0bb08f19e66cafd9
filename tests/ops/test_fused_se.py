"""The fused SE + residual op (se_transfer.ops.fused_se): CUDA when present, else Triton's CPU interpreter.

Every case runs forward and backward through the fused op and through the eager reference with the same leaves and
the same upstream gradient, and compares the output and all six gradients.
"""

import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from se_transfer.ops import fused_se, triton_kernels
from se_transfer.ops.fused_se import GATES, se_scale_residual, se_scale_residual_reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CL = torch.channels_last

needs_triton = pytest.mark.skipif(
    not fused_se.can_run(torch.empty(0, device=DEVICE)),
    reason="Triton cannot run here (not installed, or neither CUDA nor TRITON_INTERPRET=1)",
)

# Default tolerances per dtype. fp32: both sides compute the same fp32 expressions, only the summation order of the
# H*W reductions (and fused multiply-adds) differ. bf16 / fp16: both sides round (almost) the same fp32 value, so
# they differ by at most one unit in the last place, 2**-7 (bf16) and 2**-10 (fp16) relative; allow two, since
# Triton's interpreter casts fp32 to bf16 by truncation (a GPU rounds to nearest).
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2**-6, 1e-5), torch.float16: (2**-9, 1e-5)}
NAMES = ("u", "shortcut", "w1", "b1", "w2", "b2")


def _layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "nchw":
        return t.contiguous()
    if kind == "nhwc":
        return t.contiguous(memory_format=CL)
    if kind == "w_strided":  # every other column of a wider tensor: H and W still fold into one HW axis (stride 2)
        n, c, h, w = t.shape
        return torch.empty(n, c, h, 2 * w, dtype=t.dtype, device=t.device)[..., ::2].copy_(t)
    if kind == "hw_transposed":  # W outer, H inner: no single HW stride, the op must copy it
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    raise ValueError(kind)


# (u, shortcut, upstream gradient) layouts
LAYOUTS = {
    "nchw": ("nchw", "nchw", "nchw"),
    "nhwc": ("nhwc", "nhwc", "nhwc"),
    "u_nhwc-sc_nchw": ("nhwc", "nchw", "nhwc"),
    "u_nchw-sc_nhwc-grad_nhwc": ("nchw", "nhwc", "nhwc"),
    "strided": ("w_strided", "hw_transposed", "hw_transposed"),
}
SHAPES = [(1, 3, 1, 1), (2, 16, 5, 7), (3, 33, 13, 3), (2, 64, 8, 8), (1, 64, 5, 7), (3, 16, 1, 1), (2, 3, 8, 8)]
# gate x final relu x biases x 4-D weights: cycled through the shape x layout grid so each appears several times
OPTIONS = list(itertools.product(GATES, (True, False), (True, False), (True, False)))


def make_inputs(
    shape,
    layout="nchw",
    dtype=torch.float32,
    sc_dtype=None,
    w_dtype=torch.float32,
    bias=True,
    w4d=True,
    hid=None,
    device=DEVICE,
):
    """Leaves (u, shortcut, w1, b1, w2, b2) requiring grad, and an upstream gradient for the output."""
    u_kind, sc_kind, grad_kind = LAYOUTS[layout]
    n, c, h, w = shape
    hid = hid or max(1, c // 4)
    u = _layout(torch.randn(shape, device=device).to(dtype), u_kind)
    sc = _layout(torch.randn(shape, device=device).to(sc_dtype or dtype), sc_kind)
    w1 = (torch.randn(hid, c, device=device) / c**0.5).to(w_dtype)
    w2 = (torch.randn(c, hid, device=device) / hid**0.5).to(w_dtype)
    if w4d:
        w1, w2 = w1[:, :, None, None], w2[:, :, None, None]
    b1 = (0.5 * torch.randn(hid, device=device)).to(w_dtype) if bias else None
    b2 = (0.5 * torch.randn(c, device=device)).to(w_dtype) if bias else None
    leaves = [t if t is None else t.requires_grad_() for t in (u, sc, w1, b1, w2, b2)]
    out_dtype = torch.promote_types(u.dtype, sc.dtype)
    grad = _layout(torch.randn(shape, device=device).to(out_dtype), grad_kind)
    return leaves, grad


def run(fn, leaves, grad, gate, relu):
    """fn's output and the gradients of all non-None leaves for the upstream gradient ``grad``."""
    out = fn(*leaves, gate=gate, relu=relu)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad)
    return out, grads


def assert_matches(actual, expected, tol=None, what=""):
    out, grads = actual
    ref_out, ref_grads = expected
    assert len(grads) == len(ref_grads)
    for name, a, e in [("out", out, ref_out), *zip(NAMES, grads, ref_grads)]:
        assert a.dtype == e.dtype and a.shape == e.shape, f"{what} {name}: {a.dtype} {a.shape} vs {e.dtype} {e.shape}"
        rtol, atol = tol or TOL[a.dtype]
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{what} {n}: {m}")


def fp32_reference(leaves, grad, gate, relu):
    """The reference on exact fp32 copies of the leaves, each result rounded once to its dtype. (Autograd through
    the reference on low-precision leaves would round du twice: its two ``u.float()`` casts each round their own
    gradient to u's dtype before the two are summed.)"""
    wide = [t if t is None else t.detach().float().requires_grad_() for t in leaves]
    out, grads = run(se_scale_residual_reference, wide, grad.float(), gate, relu)
    narrow = [t for t in leaves if t is not None]
    return out.to(torch.result_type(leaves[0], leaves[1])), [g.to(t.dtype) for g, t in zip(grads, narrow)]


def check_against_reference(leaves, grad, gate, relu, tol=None):
    fused = run(se_scale_residual, leaves, grad, gate, relu)
    if all(t is None or t.dtype == torch.float32 for t in leaves):
        ref = run(se_scale_residual_reference, leaves, grad, gate, relu)
    else:
        ref = fp32_reference(leaves, grad, gate, relu)
    assert_matches(fused, ref, tol, what=f"gate={gate} relu={relu}")
    out, grads = fused
    u, sc, w1, b1, w2, b2 = leaves
    # every gradient has its leaf's shape (4-D weights stay 4-D) and dtype; the output and du keep u's memory format
    for t, g in zip([t for t in leaves if t is not None], grads):
        assert g.shape == t.shape and g.dtype == t.dtype
    assert out.dtype == torch.result_type(u, sc)
    u_format = CL if u.is_contiguous(memory_format=CL) and not u.is_contiguous() else torch.contiguous_format
    assert out.is_contiguous(memory_format=u_format) and grads[0].is_contiguous(memory_format=u_format)
    return fused


GRID = [
    (shape, layout, *OPTIONS[i % len(OPTIONS)]) for i, (shape, layout) in enumerate(itertools.product(SHAPES, LAYOUTS))
]


@needs_triton
@pytest.mark.parametrize(
    "shape, layout, gate, relu, bias, w4d",
    GRID,
    ids=[
        f"{'x'.join(map(str, s))}-{lay}-{g}-relu{int(r)}-bias{int(b)}-w{4 if w else 2}d" for s, lay, g, r, b, w in GRID
    ],
)
def test_fp32_matches_reference(shape, layout, gate, relu, bias, w4d):
    leaves, grad = make_inputs(shape, layout, bias=bias, w4d=w4d)
    check_against_reference(leaves, grad, gate, relu)


def _random_cases(count=8, seed=1234):
    rng = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    cases = []
    for _ in range(count):
        shape = tuple(
            int(torch.randint(lo, hi + 1, (1,), generator=rng)) for lo, hi in ((1, 3), (1, 70), (1, 9), (1, 9))
        )
        cases.append((shape, pick(list(LAYOUTS)), pick(GATES), pick((True, False)), pick((True, False))))
    return cases


@needs_triton
@pytest.mark.parametrize("shape, layout, gate, relu, bias", _random_cases())
def test_random_shapes_match_reference(shape, layout, gate, relu, bias):
    leaves, grad = make_inputs(shape, layout, bias=bias, hid=max(1, shape[1] // 3))
    check_against_reference(leaves, grad, gate, relu)


LOW_PRECISION = [
    # u dtype, shortcut dtype, weight dtype, shape, layout
    (torch.bfloat16, torch.bfloat16, torch.float32, (2, 64, 8, 8), "nhwc"),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, (3, 33, 13, 3), "nchw"),
    (torch.float16, torch.float16, torch.float32, (2, 16, 5, 7), "u_nhwc-sc_nchw"),
    (torch.float16, torch.float16, torch.float16, (1, 64, 5, 7), "nhwc"),
    (torch.bfloat16, torch.float32, torch.float32, (2, 64, 8, 8), "u_nhwc-sc_nchw"),  # autocast: fp32 shortcut
    (torch.float32, torch.bfloat16, torch.float32, (2, 33, 5, 7), "nhwc"),  # shortcut narrower than the output
    (torch.float16, torch.bfloat16, torch.float32, (2, 16, 8, 8), "nchw"),  # promotes to fp32
]


@needs_triton
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize(
    "dtype, sc_dtype, w_dtype, shape, layout",
    LOW_PRECISION,
    ids=[f"{str(d)[6:]}-sc_{str(s)[6:]}-w_{str(w)[6:]}-{lay}" for d, s, w, _, lay in LOW_PRECISION],
)
def test_low_precision_matches_fp32_reference(dtype, sc_dtype, w_dtype, shape, layout, relu):
    """Against the fp32 reference on the same low-precision inputs (tolerance: one unit in the last place)."""
    leaves, grad = make_inputs(shape, layout, dtype=dtype, sc_dtype=sc_dtype, w_dtype=w_dtype)
    check_against_reference(leaves, grad, "sigmoid", relu)


def plain_eager(u, shortcut, w1, b1, w2, b2, gate="sigmoid", relu=True):
    """The textbook SE block in the input dtype: pooling, two 1x1 convolutions, gate, scale, residual sum, relu."""
    dt = u.dtype
    z = F.adaptive_avg_pool2d(u, 1)
    w1, w2 = w1.reshape(*w1.shape[:2], 1, 1).to(dt), w2.reshape(*w2.shape[:2], 1, 1).to(dt)
    s = F.conv2d(F.relu(F.conv2d(z, w1, None if b1 is None else b1.to(dt))), w2, None if b2 is None else b2.to(dt))
    g = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[gate](s)
    out = shortcut + u * g
    return F.relu(out) if relu else out


# Tolerances against the textbook formula evaluated in the input dtype, whose every intermediate (pooled vector,
# FC outputs, gate, product, sum) is rounded to that dtype: a few units in the last place of the output dtype.
EAGER_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (4e-2, 4e-2), torch.float16: (1e-2, 1e-2)}


@needs_triton
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_plain_eager_formula_in_input_dtype(dtype, gate):
    leaves, grad = make_inputs((2, 32, 6, 5), "nhwc", dtype=dtype, w_dtype=dtype)
    fused = run(se_scale_residual, leaves, grad, gate, True)
    assert_matches(fused, run(plain_eager, leaves, grad, gate, True), EAGER_TOL[dtype], what=str(dtype))


@needs_triton
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_multi_block_multi_split_paths(monkeypatch, layout):
    """Tiny tiles: several channel and HW blocks, reductions split in 3 with several loop steps per split."""
    monkeypatch.setattr(triton_kernels, "_TILE", 16)
    monkeypatch.setattr(triton_kernels, "_LONG_MAX", 8)
    monkeypatch.setattr(triton_kernels, "_CPU_SPLIT", 3)
    shape = (2, 33, 13, 3)
    leaves, grad = make_inputs(shape, layout)
    u = leaves[0]
    block_hw, block_c, _ = triton_kernels.blocks(u)
    assert (block_hw, block_c) == ((8, 2) if layout == "nchw" else (2, 8))
    if DEVICE.type == "cpu":
        split, chunk = triton_kernels.split_reduction(u.device, shape[0] * -(-33 // block_c), 39, block_hw)
        assert split == 3 and chunk > block_hw  # split reductions, each looping over several HW blocks
    check_against_reference(leaves, grad, "tanh", True)


@needs_triton
def test_relu_free_shortcut_gradient_is_the_upstream_gradient():
    """Without the final relu the shortcut's gradient is grad_out itself (no copy); cast only across dtypes."""
    leaves, grad = make_inputs((2, 16, 5, 7), "nhwc")
    d_sc = run(se_scale_residual, leaves, grad, "sigmoid", False)[1][1]
    assert d_sc is grad
    leaves, grad = make_inputs((2, 16, 5, 7), "nhwc", dtype=torch.bfloat16, sc_dtype=torch.float32)
    d_sc = run(se_scale_residual, leaves, grad, "sigmoid", False)[1][1]
    assert d_sc is grad and d_sc.dtype == torch.float32
    leaves, grad = make_inputs((2, 16, 5, 7), "nhwc", dtype=torch.float32, sc_dtype=torch.bfloat16)
    d_sc = run(se_scale_residual, leaves, grad, "sigmoid", False)[1][1]
    assert d_sc.dtype == torch.bfloat16 and torch.equal(d_sc, grad.to(torch.bfloat16))


@needs_triton
@pytest.mark.parametrize("relu", [True, False])
def test_broadcast_upstream_gradient(relu):
    """``out.sum().backward()`` hands the op an expanded gradient (all strides 0)."""
    leaves, _ = make_inputs((2, 16, 5, 7), "nhwc")
    grad = torch.full((), 0.5, device=DEVICE).expand(2, 16, 5, 7)
    check_against_reference(leaves, grad, "tanh", relu)


@needs_triton
def test_without_grad_and_saved_tensors():
    """Inference (no autograd) gives the reference, and the op's side outputs are the fp32 z, a and g."""
    leaves, _ = make_inputs((2, 16, 5, 7), "nhwc", dtype=torch.bfloat16)
    with torch.no_grad():
        out = se_scale_residual(*leaves, gate="relu", relu=True)
        torch.testing.assert_close(out, se_scale_residual_reference(*leaves, gate="relu"), rtol=2**-6, atol=1e-5)
        u, _, w1, b1, w2, b2 = leaves
        _, z, a, g = torch.ops.se_transfer.se_scale_residual(*leaves, "relu", True)
    assert z.dtype == a.dtype == g.dtype == torch.float32
    torch.testing.assert_close(z, u.float().mean((2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, torch.relu(F.linear(z, w1.flatten(1), b1)))
    torch.testing.assert_close(g, torch.relu(F.linear(a, w2.flatten(1), b2)))


@needs_triton
def test_autocast_does_not_reach_the_excitation():
    """Under autocast the op's FCs stay fp32 (as its fake impl promises), so fp32 inputs give the fp32 result."""
    leaves, grad = make_inputs((2, 16, 5, 7), "nhwc")
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out, z, a, g = torch.ops.se_transfer.se_scale_residual(*leaves, "sigmoid", True)
    assert out.dtype == z.dtype == a.dtype == g.dtype == torch.float32
    torch.testing.assert_close(out, se_scale_residual_reference(*leaves), rtol=1e-5, atol=1e-5)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = se_scale_residual(*leaves)
    (du,) = torch.autograd.grad(out, leaves[0], grad)
    (ref_du,) = torch.autograd.grad(se_scale_residual_reference(*leaves), leaves[0], grad)
    torch.testing.assert_close(du, ref_du, rtol=1e-5, atol=1e-5)


OPCHECK_CASES = [("nchw", torch.float32, torch.float32), ("u_nhwc-sc_nchw", torch.bfloat16, torch.float32)]


@needs_triton
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layout, dtype, sc_dtype", OPCHECK_CASES, ids=["nchw-fp32", "u_nhwc-sc_nchw-bf16_fp32"])
def test_opcheck(layout, dtype, sc_dtype, relu):
    """Schema, fake tensors (shapes, dtypes, strides), autograd registration, AOT dispatch with dynamic shapes."""
    leaves, grad = make_inputs((2, 16, 5, 7), layout, dtype=dtype, sc_dtype=sc_dtype, w_dtype=dtype, bias=relu)
    torch.library.opcheck(torch.ops.se_transfer.se_scale_residual.default, (*leaves, "tanh", relu))
    u, sc, w1, b1, w2, b2 = (t if t is None else t.detach() for t in leaves)
    out, z, a, g = torch.ops.se_transfer.se_scale_residual(u, sc, w1, b1, w2, b2, "tanh", relu)
    torch.library.opcheck(
        torch.ops.se_transfer.se_scale_residual_backward.default,
        (grad, out if relu else None, u, z, a, g, w1, b1, w2, b2, "tanh", relu, sc.dtype),
    )


@needs_triton
@pytest.mark.parametrize("relu", [True, False])
def test_torch_compile_fullgraph_equals_eager(relu):
    def f(u, sc, w1, b1, w2, b2):
        return se_scale_residual(u, sc, w1, b1, w2, b2, "sigmoid", relu) * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    leaves, grad = make_inputs((2, 16, 5, 7), "u_nhwc-sc_nchw", dtype=torch.bfloat16, sc_dtype=torch.float32)
    out, grads = run(lambda *a, gate, relu: compiled(*a), leaves, grad, "sigmoid", relu)
    ref_out, ref_grads = run(lambda *a, gate, relu: f(*a), leaves, grad, "sigmoid", relu)
    assert out.stride() == ref_out.stride() and out.dtype == ref_out.dtype
    assert torch.equal(out, ref_out)
    for name, a, e in zip(NAMES, grads, ref_grads):
        assert a.dtype == e.dtype and torch.equal(a, e), name


# ---------------------------------------------------------------------------------------------- errors, heuristics


def _cpu_inputs(shape=(2, 16, 5, 7)):
    return make_inputs(shape, device=torch.device("cpu"))[0]


@pytest.mark.skipif(not fused_se.triton_available(), reason="triton is not installed")
def test_cpu_tensor_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    leaves = _cpu_inputs()
    assert not fused_se.can_run(leaves[0])
    with pytest.raises(RuntimeError, match=r"CUDA tensors.*TRITON_INTERPRET=1.*cpu"):
        se_scale_residual(*leaves)


def test_missing_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(fused_se, "triton_available", lambda: False)
    leaves = _cpu_inputs()
    assert not fused_se.can_run(leaves[0])
    with pytest.raises(RuntimeError, match="needs Triton, which is not installed"):
        se_scale_residual(*leaves)


def test_invalid_arguments_are_clear_errors():
    u, sc, w1, b1, w2, b2 = _cpu_inputs()
    with pytest.raises(RuntimeError, match=r"shortcut shape \(2, 16, 5, 6\) does not match u shape \(2, 16, 5, 7\)"):
        se_scale_residual(u, sc[..., :6], w1, b1, w2, b2)
    with pytest.raises(RuntimeError, match="unsupported gate 'swish'"):
        se_scale_residual(u, sc, w1, b1, w2, b2, gate="swish")
    with pytest.raises(RuntimeError, match=r"w1 must be hid x C.*\(4, 16, 1, 1\) and \(16, 5, 1, 1\)"):
        se_scale_residual(u, sc, w1, b1, torch.zeros(16, 5, 1, 1), b2)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        se_scale_residual(u.double(), sc, w1, b1, w2, b2)


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, se_transfer.ops as ops\n"
        "assert not ops.triton_available() and not ops.can_run(torch.zeros(1))\n"
        "x = torch.zeros(1, 4, 2, 2); w = torch.zeros(1, 4)\n"
        "try:\n"
        "    ops.se_scale_residual(x, x, w, None, w.t(), None)\n"
        "except RuntimeError as e:\n"
        "    assert 'needs Triton' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_tile_and_split_heuristics_for_a_gpu(monkeypatch):
    """SE-ResNet-50 stage 1 on an H100-like GPU (132 SMs): the contiguous axis is the long one, and the reductions
    launch at least 4 programs per SM with HW chunks that cover H*W exactly once."""
    monkeypatch.setattr(triton_kernels, "_sm_count", lambda index: 132)
    n, c, h, w = 8, 256, 56, 56
    for fmt, expected in ((CL, (8, 256)), (torch.contiguous_format, (256, 8))):
        u = torch.empty(n, c, h, w, device="meta").contiguous(memory_format=fmt)
        block_hw, block_c, num_warps = triton_kernels.blocks(u)
        assert (block_hw, block_c, num_warps) == (*expected, 4)
        rows = n * (c // block_c)
        split, chunk = triton_kernels.split_reduction(torch.device("cuda", 0), rows, h * w, block_hw)
        assert rows * split >= 4 * 132
        assert chunk % block_hw == 0 and (split - 1) * chunk < h * w <= split * chunk
    # a big batch needs no split; tiny maps get small tiles, one warp
    assert triton_kernels.split_reduction(torch.device("cuda", 0), 256 * 8, 49, 8) == (1, 56)
    assert triton_kernels.blocks(torch.empty(2, 3, 5, 7, device="meta")) == (64, 4, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_triton
def test_cuda_realistic_size_bf16_channels_last():
    leaves, grad = make_inputs((8, 256, 56, 56), "nhwc", dtype=torch.bfloat16, hid=16)
    fused = run(se_scale_residual, leaves, grad, "sigmoid", True)
    ref = run(se_scale_residual_reference, leaves, grad, "sigmoid", True)
    # bf16 tensors: one unit in the last place; fp32 weight gradients sum 25k products in another order than torch
    for name, a, e in [("out", fused[0], ref[0]), *zip(NAMES, fused[1], ref[1])]:
        assert a.dtype == e.dtype and a.shape == e.shape, name
        tol = TOL[torch.bfloat16] if a.dtype == torch.bfloat16 else (1e-4, 1e-4)
        torch.testing.assert_close(a, e, rtol=tol[0], atol=tol[1], msg=lambda m, n=name: f"{n}: {m}")
    assert fused[0].is_contiguous(memory_format=CL) and fused[1][0].is_contiguous(memory_format=CL)
