"""Excitation statistics (se_transfer.analysis): the recorded gates against a direct computation for every SE
implementation, hooks that change nothing, and SE switched off per stage against a network built without it."""

import numpy as np
import pytest
import torch

from se_transfer.analysis import ExcitationRecorder, ExcitationStats, pick_blocks, se_blocks, se_switched_off
from se_transfer.models import create_model
from se_transfer.models.fast_se import se_impl
from tests.helpers import randomize_batchnorm

# A small SE-ResNet (bottlenecks: the producer fold applies) and a CIFAR SE-ResNet-8 (basic blocks, native kernel)
TINY = dict(layers=(1, 1, 2, 1), width_per_group=16, stem_width=16, se_stages=(2, 3, 4, 5))


def _tiny_resnet(**kw):
    model = create_model("se_resnet50", num_classes=3, **{**TINY, **kw})
    _hand_set_se(model)
    randomize_batchnorm(model)
    return model.eval()


def _tiny_cifar():
    model = create_model("se_resnet20", num_classes=4, depth=8)
    _hand_set_se(model)
    randomize_batchnorm(model)
    return model.eval()


def _hand_set_se(model, seed=3):
    """SE weights large enough that the gates spread over (0, 1), saturating some."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "fc1") and hasattr(m, "fc2"):
                for p in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.4)


def _direct_gates(model, x, producer_of_u):
    """Each SE block's gate computed here, in float64, from the block input U (the output of the layer named by
    ``producer_of_u`` in the block): sigmoid(W2 relu(W1 mean(U) + b1) + b2)."""
    blocks = se_blocks(model)
    modules = dict(model.named_modules())
    captured, handles = {}, []
    for name, b in blocks.items():
        unit = b.module_name[: -len(".se")]
        handles.append(modules[f"{unit}.{producer_of_u}"].register_forward_hook(
            lambda m, a, out, name=name: captured.__setitem__(name, out.detach().double())))  # fmt: skip
    with torch.no_grad(), se_impl(model, "eager"):
        model(x)
    for h in handles:
        h.remove()
    gates = {}
    for name, b in blocks.items():  # parameters as float64, without autograd
        w1, b1, w2, b2 = (p.detach().double() for p in modules[b.module_name].parameters())
        h = torch.relu(captured[name].mean((2, 3)) @ w1.flatten(1).t() + b1)
        gates[name] = torch.sigmoid(h @ w2.flatten(1).t() + b2)
    return gates


def _reference_stats(gates, labels, num_classes):
    """Per-class mean and std (numpy) and summary numbers of gates {block: N x C} for the labels."""
    out = {}
    labels = labels.numpy()
    for name, s in gates.items():
        s = s.numpy()
        means = np.stack([s[labels == k].mean(0) for k in range(num_classes)])
        stds = np.stack([s[labels == k].std(0) for k in range(num_classes)])
        out[name] = {"mean": means, "std": stds, "spread": means.std(0).mean(), "high": (s > 0.99).mean(),
                     "low": (s < 0.01).mean(), "overall": s.mean(0)}  # fmt: skip
    return out


CASES = [
    # (model, producer of U in a unit, input size, SE implementations and grad modes to try)
    (_tiny_resnet, "bn3", 64),
    (_tiny_cifar, "bn2", 32),
]


@pytest.mark.parametrize("make, producer, size", CASES, ids=["bottleneck", "cifar"])
@pytest.mark.parametrize("impl, grad", [("eager", False), ("auto", False), ("auto", True)],
                         ids=["eager", "auto-inference", "auto-autograd"])  # fmt: skip
def test_statistics_equal_a_direct_computation(make, producer, size, impl, grad):
    model = make()
    num_classes = model.fc.out_features
    x = torch.randn(12, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % num_classes
    expected = _reference_stats(_direct_gates(model, x, producer), labels, num_classes)

    stats = ExcitationStats(se_blocks(model), num_classes)
    with se_impl(model, impl), ExcitationRecorder(model) as rec, torch.set_grad_enabled(grad):
        for part in (slice(0, 5), slice(5, 12)):  # two batches: the sums stream
            model(x[part])
            stats.add(rec.pop(), labels[part])
    assert stats.num_images == 12
    for name, ref in expected.items():
        np.testing.assert_allclose(stats.class_mean(name).numpy(), ref["mean"], atol=2e-5)
        np.testing.assert_allclose(stats.class_std(name).numpy(), ref["std"], atol=2e-5)
        np.testing.assert_allclose(stats.overall(name)[0].numpy(), ref["overall"], atol=2e-5)
        summary = stats.summary(name)
        assert summary["class_spread"] == pytest.approx(ref["spread"], abs=1e-5)
        # a gate within rounding of a threshold could fall either side: compare counts within one value
        values = 12 * stats.blocks[name].channels
        assert round(abs(summary["frac_high"] - ref["high"]) * values) <= 1
        assert round(abs(summary["frac_low"] - ref["low"]) * values) <= 1
    some = [stats.summary(n) for n in expected]
    assert max(s["frac_high"] for s in some) > 0 and max(s["class_spread"] for s in some) > 0  # not degenerate


def test_the_fold_path_is_the_one_recorded():
    """At inference with 'auto', the bottlenecks take the producer fold and hand their gate to the SE call."""
    model = _tiny_resnet()
    x = torch.randn(2, 3, 64, 64)
    seen = []
    se = model.layer1[0].se
    se.register_forward_pre_hook(lambda m, args: seen.append(len(args)))
    with torch.no_grad():
        model(x)
    assert seen == [4]  # (U, shortcut, relu, excitation): the fold passed the gate it computed


@pytest.mark.parametrize("impl", ["eager", "auto"])
def test_recording_does_not_change_the_logits(impl):
    model = _tiny_resnet()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad(), se_impl(model, impl):
        plain = model(x)
        with ExcitationRecorder(model) as rec:
            hooked = model(x)
            assert len(rec.pop()) == 5
        after = model(x)
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    assert not any(m._forward_pre_hooks for m in model.modules())  # removed on exit


@pytest.mark.parametrize("impl, grad", [("eager", False), ("auto", False), ("auto", True)])
def test_a_stage_switched_off_equals_a_model_built_without_se_there(impl, grad):
    model = _tiny_resnet()
    without = create_model("se_resnet50", num_classes=3, **{**TINY, "se_stages": (2, 3, 4)}).eval()
    missing, unexpected = without.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(".se." in k and k.startswith("layer4.") for k in unexpected)
    x = torch.randn(3, 3, 64, 64)
    with se_impl(model, impl), torch.set_grad_enabled(grad):
        full = model(x)
        with se_switched_off(model, [5]) as off:
            ablated = model(x)
        assert off == ["SE_5_1"]
        again = model(x)
        reference = without(x)
    torch.testing.assert_close(ablated, reference, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(full, ablated, atol=1e-4)  # the stage's SE did something
    torch.testing.assert_close(again, full)  # and comes back
    with pytest.raises(ValueError, match=r"no SE blocks in stage\(s\) \[6\]"):
        with se_switched_off(model, [6]):
            pass


def test_default_blocks_are_the_papers_for_se_resnet50():
    blocks = se_blocks(create_model("se_resnet50"))
    assert len(blocks) == 16 and blocks["SE_4_6"].channels == 1024 and blocks["SE_2_1"].module_name == "layer1.0.se"
    assert pick_blocks(blocks, None) == ["SE_2_3", "SE_3_4", "SE_4_6", "SE_5_1", "SE_5_2", "SE_5_3"]
    assert pick_blocks(blocks, ["SE_3_1", "SE_3_1"]) == ["SE_3_1"]
    with pytest.raises(ValueError, match="SE_6_1: no such SE block; this model has SE_2_1..SE_2_3"):
        pick_blocks(blocks, ["SE_6_1"])
    with pytest.raises(ValueError, match="no SE blocks"):
        se_blocks(create_model("resnet50"))


def test_summary_numbers_on_known_gates():
    model = _tiny_cifar()
    blocks = {"SE_2_1": se_blocks(model)["SE_2_1"]}
    c = blocks["SE_2_1"].channels
    stats = ExcitationStats(blocks, 3)
    # class 0: every gate 1.0 (saturated open); class 1: every gate 0.0 (closed); class 2: no images
    gates = torch.cat([torch.ones(2, c), torch.zeros(3, c)])
    stats.add({"SE_2_1": gates}, torch.tensor([0, 0, 1, 1, 1]))
    s = stats.summary("SE_2_1")
    assert s["frac_high"] == pytest.approx(0.4) and s["frac_low"] == pytest.approx(0.6)
    assert s["class_spread"] == pytest.approx(0.5) and s["within_class_std"] == 0 and s["mean"] == pytest.approx(0.4)
    assert torch.isnan(stats.class_mean("SE_2_1")[2]).all()
    with pytest.raises(ValueError, match="labels outside 0..2"):
        stats.add({"SE_2_1": gates[:1]}, torch.tensor([3]))
    with pytest.raises(ValueError, match="no gates recorded for"):
        stats.add({}, torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fused Triton SE kernels)")
def test_statistics_of_the_fused_cuda_kernels_equal_the_textbook_ones():
    pytest.importorskip("triton")
    model = _tiny_resnet().cuda()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    labels = torch.arange(8, device="cuda") % 3
    results = {}
    for impl in ("eager", "triton"):
        stats = ExcitationStats(se_blocks(model), 3, "cuda")
        with se_impl(model, impl), ExcitationRecorder(model) as rec, torch.no_grad():
            model(x)
            stats.add(rec.pop(), labels)
        results[impl] = stats
    for name in results["eager"].blocks:
        torch.testing.assert_close(results["triton"].class_mean(name), results["eager"].class_mean(name), atol=1e-5,
                                   rtol=1e-4)  # fmt: skip


def test_nosqueeze_gates_count_as_their_spatial_mean():
    model = _tiny_resnet(se_no_squeeze=True, se_stages=(4,))
    x = torch.randn(4, 3, 64, 64)
    captured = {}
    model.layer3[1].bn3.register_forward_hook(lambda m, a, out: captured.__setitem__("u", out.detach().double()))
    stats = ExcitationStats(se_blocks(model), 3)
    with torch.no_grad(), ExcitationRecorder(model) as rec:
        model(x)
        stats.add(rec.pop(), torch.tensor([0, 1, 2, 0]))
    se = model.layer3[1].se
    w1, b1, w2, b2 = (p.detach().double() for p in se.parameters())
    u = captured["u"].permute(0, 2, 3, 1)  # N x H x W x C: the two 1x1 convolutions act on every position
    s = torch.sigmoid(torch.relu(u @ w1.flatten(1).t() + b1) @ w2.flatten(1).t() + b2).mean((1, 2))
    torch.testing.assert_close(stats.class_mean("SE_4_2")[0], (s[0] + s[3]) / 2, atol=2e-5, rtol=0)
    torch.testing.assert_close(stats.class_mean("SE_4_2")[1], s[1], atol=2e-5, rtol=0)
