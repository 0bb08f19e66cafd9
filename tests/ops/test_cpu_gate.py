"""The native CPU excitation (se_transfer.ops.cpu_gate): equal to the PyTorch formula, built once, and optional."""

import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

from se_transfer.models import SEModule, create_model
from se_transfer.models.fast_se import se_impl
from se_transfer.ops import cpu_gate

HAVE_CC = shutil.which("cc") is not None
needs_kernel = pytest.mark.skipif(not HAVE_CC, reason="no C compiler ('cc') on this machine")


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A private kernel cache and a kernel state that is forgotten again afterwards."""
    monkeypatch.setenv("SE_TRANSFER_CACHE_DIR", str(tmp_path / "cache"))
    cpu_gate.reset()
    yield tmp_path / "cache"
    cpu_gate.reset()


def _reference(h, w1, b1, w2t, b2, gate):
    s = F.linear(F.relu(F.linear(h.double().mean((2, 3)), w1.double(), b1.double())), w2t.double().t())
    if b2 is not None:
        s = s + b2.double()
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[gate](s)[:, :, None, None]


def _weights(cin, hid, c, bias2=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hid, cin, generator=g) / cin**0.5
    w2t = torch.randn(hid, c, generator=g) / hid**0.5
    return w1, torch.randn(hid, generator=g) * 0.1, w2t, torch.randn(c, generator=g) * 0.1 if bias2 else None


def _layout(h, layout):
    if layout == "channels_last":
        return h.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider map: H and W do not merge into one axis
        wide = torch.repeat_interleave(h, 2, dim=3)
        return wide[:, :, :, ::2]
    if layout == "batch_slice":  # a view with a larger batch stride
        return torch.cat([h, h], dim=1)[:, : h.shape[1]]
    return h


@needs_kernel
def test_kernel_builds_here():
    # the rest of this file and the model tests rely on it: a silent fallback would hide a broken build
    assert cpu_gate.available(), cpu_gate.unavailable_reason()


@needs_kernel
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "batch_slice"])
@pytest.mark.parametrize(
    "n,cin,hid,c,hw,gate,bias2",
    [
        (1, 64, 16, 256, (56, 56), "sigmoid", True),
        (2, 128, 32, 512, (28, 28), "tanh", True),
        (3, 5, 1, 7, (1, 1), "relu", False),
        (1, 33, 4, 70, (7, 9), "sigmoid", False),
        (2, 512, 128, 2048, (7, 7), "sigmoid", True),
        (1, 40, 3, 24, (1, 37), "tanh", True),
        (1, 24, 6, 48, (37, 1), "relu", True),
    ],
)
def test_native_gate_equals_the_formula(n, cin, hid, c, hw, gate, bias2, layout):
    w1, b1, w2t, b2 = _weights(cin, hid, c, bias2)
    h = _layout(torch.randn(n, cin, *hw).relu_(), layout)
    out = cpu_gate.excitation(cpu_gate.GateParams(w1, b1, w2t, b2, gate), h)
    assert out.shape == (n, c, 1, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(h, w1, b1, w2t, b2, gate), rtol=2e-5, atol=2e-6)


@needs_kernel
def test_wide_blocks_use_heap_scratch_and_results_do_not_depend_on_threads():
    w1, b1, w2t, b2 = _weights(5000, 8, 40)  # cin + hid > the kernel's 4096-float stack buffer
    h = torch.randn(2, 5000, 3, 5)
    params = cpu_gate.GateParams(w1, b1, w2t, b2, "sigmoid")
    torch.testing.assert_close(
        cpu_gate.excitation(params, h).double(), _reference(h, w1, b1, w2t, b2, "sigmoid"), rtol=2e-5, atol=2e-6
    )
    w1, b1, w2t, b2 = _weights(512, 128, 2048)
    params = cpu_gate.GateParams(w1, b1, w2t, b2, "sigmoid")
    threads = torch.get_num_threads()
    outs = []
    for layout in ("contiguous", "channels_last"):
        h = _layout(torch.randn(1, 512, 14, 14), layout)
        for nt in (1, 2):
            torch.set_num_threads(nt)
            outs.append(cpu_gate.excitation(params, h))
        torch.set_num_threads(threads)
        assert torch.equal(outs[-1], outs[-2])  # each output is summed in one fixed order


@needs_kernel
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_batch_split_over_samples_equals_one_sample_at_a_time_in_any_thread(layout):
    w1, b1, w2t, b2 = _weights(64, 16, 256)
    params = cpu_gate.GateParams(w1, b1, w2t, b2, "sigmoid")
    h = _layout(torch.randn(5, 64, 9, 11), layout)
    singles = torch.cat([cpu_gate.excitation(params, h[i : i + 1]) for i in range(5)])
    threads = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            assert torch.equal(cpu_gate.excitation(params, h), singles)
    finally:
        torch.set_num_threads(threads)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=cpu_gate.excitation(params, h)))
    worker.start()
    worker.join()
    assert torch.equal(result["out"], singles)


@needs_kernel
def test_bad_inputs_name_what_is_wrong():
    w1, b1, w2t, b2 = _weights(8, 2, 4)
    with pytest.raises(ValueError, match="w2t must be a float32 CPU tensor"):
        cpu_gate.GateParams(w1, b1, w2t.double(), b2, "sigmoid")
    with pytest.raises(ValueError, match="b1 must be a float32 CPU tensor of shape \\(2,\\)"):
        cpu_gate.GateParams(w1, torch.zeros(3), w2t, b2, "sigmoid")
    with pytest.raises(ValueError, match="gate must be one of"):
        cpu_gate.GateParams(w1, b1, w2t, b2, "swish")
    params = cpu_gate.GateParams(w1, b1, w2t, b2, "sigmoid")
    with pytest.raises(ValueError, match="h has 9 channels, the SE block's first FC reads 8"):
        cpu_gate.excitation(params, torch.randn(1, 9, 2, 2))
    with pytest.raises(ValueError, match="float32 CPU tensor, got torch.float64"):
        cpu_gate.excitation(params, torch.randn(1, 8, 2, 2, dtype=torch.float64))


@needs_kernel
def test_built_once_into_the_cache_and_rebuilt_when_the_file_is_damaged(fresh_kernel, monkeypatch):
    assert cpu_gate.available()
    built = list(fresh_kernel.glob("se_gate-*.so"))
    assert len(built) == 1 and not list(fresh_kernel.glob("*.tmp*"))
    # a second process (here: a reset) loads the cached library without compiling
    cpu_gate.reset()
    calls = []
    real_build = cpu_gate._build
    monkeypatch.setattr(cpu_gate, "_build", lambda *a: calls.append(a) or real_build(*a))
    assert cpu_gate.available() and calls == []
    # a damaged file under the expected name (never written in place: the loaded library is mapped from it) is
    # compiled again, once; a second cache directory, since this process already holds the first file's library
    damaged = fresh_kernel.parent / "damaged"
    damaged.mkdir()
    (damaged / built[0].name).write_bytes(b"not a shared library")
    monkeypatch.setenv("SE_TRANSFER_CACHE_DIR", str(damaged))
    cpu_gate.reset()
    assert cpu_gate.available() and len(calls) == 1
    assert (damaged / built[0].name).read_bytes()[:4] == b"\x7fELF"
    w1, b1, w2t, b2 = _weights(16, 4, 32)
    h = torch.randn(1, 16, 5, 5)
    out = cpu_gate.excitation(cpu_gate.GateParams(w1, b1, w2t, b2, "sigmoid"), h)
    torch.testing.assert_close(out.double(), _reference(h, w1, b1, w2t, b2, "sigmoid"), rtol=2e-5, atol=2e-6)


@needs_kernel
def test_an_unusable_cache_directory_builds_into_a_private_one(fresh_kernel, monkeypatch):
    blocker = fresh_kernel.parent / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SE_TRANSFER_CACHE_DIR", str(blocker / "cache"))
    cpu_gate.reset()
    assert cpu_gate.available(), cpu_gate.unavailable_reason()


def test_without_a_compiler_the_models_fall_back_to_pytorch_ops(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-se-transfer")
    assert not cpu_gate.available()
    assert "no-such-compiler-se-transfer" in cpu_gate.unavailable_reason()
    with pytest.raises(RuntimeError, match="not available: no C compiler"):
        cpu_gate.GateParams(*_weights(8, 2, 4), "sigmoid")
    model = create_model("se_resnet50", layers=(1, 1, 1, 1), num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast = model(x)
        with se_impl(model, "eager"):
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert all(m._fold.value.native is None for m in model.modules() if isinstance(m, SEModule))


def test_disabled_by_environment(fresh_kernel, monkeypatch):
    monkeypatch.setenv("SE_TRANSFER_CPU_KERNEL", "0")
    assert not cpu_gate.available()
    assert "SE_TRANSFER_CPU_KERNEL=0" in cpu_gate.unavailable_reason()


@needs_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_models_take_the_native_gate_in_float32_only(channels_last):
    model = create_model("se_resnet50", layers=(1, 1, 1, 1), num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    ses = [m for m in model.modules() if isinstance(m, SEModule)]
    with torch.no_grad():
        fast = model(x)
        assert all(isinstance(m._fold.value.native, cpu_gate.GateParams) for m in ses)
        with se_impl(model, "eager"):
            ref = model(x)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        model.double()
        torch.testing.assert_close(model(x.double()), ref.double(), rtol=1e-5, atol=1e-5)
        assert all(m._fold.value.native is None for m in ses)  # float64: PyTorch ops


@needs_kernel
@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("se_resnet20", {}, 32),  # CIFAR basic blocks
        ("se_resnet18", {"num_classes": 10}, 64),  # ImageNet basic blocks
        ("se_resnet50", {"layers": (1, 1, 1, 1), "num_classes": 10, "se_variant": "post", "se_bias": False}, 64),
    ],
)
def test_se_blocks_outside_the_bottleneck_shortcut_take_the_native_gate_at_inference(name, kwargs, size):
    model = create_model(name, **kwargs).eval()
    ses = [m for m in model.modules() if isinstance(m, SEModule)]
    x = torch.randn(3, 3, size, size)
    model(x)  # autograd on: PyTorch ops, no native parameters built
    assert all(m._native.value is None for m in ses)
    with torch.no_grad():
        fast = model(x)
        assert all(isinstance(m._native.value, cpu_gate.GateParams) for m in ses)
        with se_impl(model, "eager"):
            ref = model(x)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        for m in ses:  # an in-place edit of fc2 is seen (the kernel reads a transposed copy of it)
            m.fc2.weight.mul_(-1.0)
        flipped = model(x)
        with se_impl(model, "eager"):
            torch.testing.assert_close(flipped, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_traced_models_record_the_textbook_se():
    # a trace would otherwise record torch.empty and miss the native call that fills it (or keep W' as a constant)
    model = create_model("se_resnet50", layers=(1, 1, 1, 1), num_classes=10).eval()
    x, other = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        with se_impl(model, "eager"):
            ref = model(other)
        torch.testing.assert_close(traced(other), ref, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            model.layer2[0].bn3.running_var.mul_(4.0)  # shared with the trace: no stale fold inside it
        with se_impl(model, "eager"):
            ref = model(other)
        torch.testing.assert_close(traced(other), ref, rtol=1e-5, atol=1e-5)
