"""How SE blocks are computed: the inference shortcut (squeeze from the producer of U), se_impl plumbing, Triton."""

import pytest
import torch
from torch import nn

from se_transfer.models import SEModule, create_model
from se_transfer.models.complexity import count_macs
from se_transfer.models.fast_se import se_impl, set_se_impl
from se_transfer.ops.dispatch import EAGER, RESIDUAL, TRITON, choose


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                n = m.running_var.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def _small_bottleneck_net(**kwargs) -> nn.Module:
    return _randomize_norms(create_model("se_resnet50", layers=(1, 2, 1, 1), num_classes=10, **kwargs)).eval()


def _count_excitations(model: nn.Module) -> list[int]:
    calls = [0]
    for m in model.modules():
        if isinstance(m, SEModule):
            original = m.excitation

            def counted(x, _orig=original):
                calls[0] += 1
                return _orig(x)

            m.excitation = counted
    return calls


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"norm": "FrozenBN"},
        {"se_bias": False, "se_gate": "tanh"},
        {"stride_in_1x1": False, "groups": 4, "width_per_group": 8},
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_producer_squeeze_equals_the_textbook_se(kwargs, channels_last):
    model = _small_bottleneck_net(**kwargs)
    x = torch.randn(2, 3, 64, 80)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    calls = _count_excitations(model)
    with torch.no_grad():
        fast = model(x)
        assert calls[0] == 0  # every bottleneck took the shortcut: U was never squeezed
        with se_impl(model, "eager"):
            ref = model(x)
        assert calls[0] == 5  # one textbook SE per block
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_producer_cache_follows_weight_and_statistics_changes():
    model = _small_bottleneck_net()
    other = _randomize_norms(create_model("se_resnet50", layers=(1, 2, 1, 1), num_classes=10), seed=1).eval()
    x = torch.randn(1, 3, 64, 64)

    def check():
        with torch.no_grad():
            fast = model(x)
            with se_impl(model, "eager"):
                ref = model(x)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        return fast

    before = check()
    model.load_state_dict(other.state_dict())  # in-place copies into the same tensors
    after = check()
    assert not torch.allclose(before, after)
    with torch.no_grad():
        model.layer4[0].bn3.running_var.mul_(3.0)  # a statistic alone changes
        model.layer4[0].se.fc1.weight.mul_(-1.0)
    check()
    model.double()  # new tensors of another dtype
    x = x.double()
    check()


def test_producer_cache_follows_running_statistics_updated_by_a_training_forward():
    # BatchNorm's kernel updates running_mean/var without bumping their version counters (torch.optim.swa_utils
    # .update_bn and BN recalibration do exactly this under no_grad); the fold must still be rebuilt.
    model = _small_bottleneck_net()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # builds the fold
        model.train()
        for _ in range(2):
            model(torch.randn(2, 3, 64, 64) * 3 + 1)
        model.eval()
        fast = model(x)
        with se_impl(model, "eager"):
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_shortcut_only_without_autograd_and_in_eval():
    model = _small_bottleneck_net()
    blk = model.layer1[0]
    block_input = torch.randn(1, blk.conv1.in_channels, 16, 16)
    with torch.no_grad():
        assert blk.se.producer_fold(block_input, blk.conv3, blk.bn3) is not None
        set_se_impl(model, "eager")
        assert blk.se.producer_fold(block_input, blk.conv3, blk.bn3) is None
        set_se_impl(model, "auto")
        model.train()
        assert blk.se.producer_fold(block_input, blk.conv3, blk.bn3) is None  # BN uses the batch's statistics
        model.eval()
    # autograd on: fc1's own weights must get gradients
    assert blk.se.producer_fold(block_input, blk.conv3, blk.bn3) is None
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    assert blk.se.fc1.weight.grad is not None and blk.se.fc1.weight.grad.abs().sum() > 0


def test_se_impl_is_chosen_by_name_and_validated():
    model = create_model("se_resnet20", se_impl="eager")
    assert {m.impl for m in model.modules() if isinstance(m, SEModule)} == {"eager"}
    with se_impl(model, "auto"):
        assert {m.impl for m in model.modules() if isinstance(m, SEModule)} == {"auto"}
    assert {m.impl for m in model.modules() if isinstance(m, SEModule)} == {"eager"}
    with pytest.raises(ValueError, match="se_impl must be one of"):
        create_model("se_resnet20", se_impl="fast")


def test_mac_count_is_the_papers_measure_whatever_the_impl():
    with torch.device("meta"):
        model = create_model("se_resnet50")
    set_se_impl(model, "auto")
    macs = count_macs(model)
    assert round(macs["total"] / 1e9, 2) == 3.87  # Table 2 style count of the textbook SE (not the shortcut)


def test_triton_path_inside_a_model_equals_eager():
    """The model-level wiring of the fused op (CUDA, or Triton's CPU interpreter in CI): logits and gradients."""
    fused_se = pytest.importorskip("se_transfer.ops.fused_se")
    x = torch.randn(2, 3, 8, 8)
    if not fused_se.can_run(x):
        pytest.skip("Triton cannot run here (no CUDA and TRITON_INTERPRET is not set)")
    torch.manual_seed(0)
    model = create_model("se_resnet20", depth=8, num_classes=10).train()
    ref_model = create_model("se_resnet20", depth=8, num_classes=10, se_impl="eager").train()
    ref_model.load_state_dict(model.state_dict())
    set_se_impl(model, "triton")
    for m, impl in ((model, "triton"), (ref_model, "eager")):
        paths = {choose(s.impl, x, RESIDUAL, s.avg_squeeze) for s in m.modules() if isinstance(s, SEModule)}
        assert paths == {TRITON if impl == "triton" else EAGER}
    out, ref = model(x), ref_model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
