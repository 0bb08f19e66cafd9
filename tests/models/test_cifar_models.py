import pytest
import torch
from torch import nn

from se_transfer.models import baseline_of, create_model, list_models, model_defaults, save_weights
from se_transfer.models.cifar import CifarBasicBlock, CifarResNet, PreActBottleneck, ShortcutA, WideBasicBlock
from se_transfer.models.registry import model_entry
from se_transfer.models.shake_shake import ShakeBlock, ShakeShake, ShakeShakeFunction, ShakeShortcut, shake_shake

CIFAR_MODELS = [n for n in list_models() if model_entry(n).family == "cifar"]
BASELINES = ["resnet20", "resnet110", "preact_resnet164", "wrn16_8", "shake_shake26_2x96d", "shake_even29_2x4x64d"]

# Exact counts with a 10-way classifier (pinned) and the papers' rounded figures.
PARAM_COUNTS = {
    "resnet20": 269_722,
    "resnet110": 1_727_962,
    "preact_resnet164": 1_703_258,
    "wrn16_8": 10_961_370,
    "shake_shake26_2x96d": 26_192_922,
    "shake_even29_2x4x64d": 34_437_450,
}
PAPER_COUNTS = {
    "resnet20": 0.27e6,
    "resnet110": 1.7e6,
    "preact_resnet164": 1.7e6,
    "wrn16_8": 11.0e6,
    "shake_shake26_2x96d": 26.2e6,
    "shake_even29_2x4x64d": 34.4e6,
}
# Channels C of the SE block of every residual unit (the output width of the unit).
SE_CHANNELS = {
    "resnet20": [16] * 3 + [32] * 3 + [64] * 3,
    "resnet110": [16] * 18 + [32] * 18 + [64] * 18,
    "preact_resnet164": [64] * 18 + [128] * 18 + [256] * 18,
    "wrn16_8": [128] * 2 + [256] * 2 + [512] * 2,
    "shake_shake26_2x96d": [96] * 4 + [192] * 4 + [384] * 4,
    "shake_even29_2x4x64d": [256] * 3 + [512] * 3 + [1024] * 3,
}
NUM_FEATURES = {
    "resnet20": 64,
    "resnet110": 64,
    "preact_resnet164": 256,
    "wrn16_8": 512,
    "shake_shake26_2x96d": 384,
    "shake_even29_2x4x64d": 1024,
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_count(name: str, **kwargs) -> int:
    with torch.device("meta"):
        return _count(create_model(name, **kwargs))


def test_every_cifar_model_is_registered_with_its_se_twin():
    assert sorted(CIFAR_MODELS) == sorted(BASELINES + ["se_" + n for n in BASELINES])
    for name in BASELINES:
        assert baseline_of("se_" + name) == name
        assert model_defaults("se_" + name) == {**model_defaults(name), "se": True}


def test_resnet_parameter_counts_by_hand():
    # He et al.'s CIFAR ResNet, option A, 10 classes. Stem: 3*16*9 + BN 2*16 = 464. A basic block C_in -> C has
    # 9*C_in*C + 9*C*C conv weights + 4*C BN parameters: 16->16: 4672, 16->32: 13952, 32->32: 18560, 32->64: 55552,
    # 64->64: 73984. FC: 64*10 + 10 = 650.
    # ResNet-110 (n=18): 464 + 18*4672 + (13952 + 17*18560) + (55552 + 17*73984) + 650 = 1,727,962.
    # ResNet-20 (n=3):   464 + 3*4672 + (13952 + 2*18560) + (55552 + 2*73984) + 650 = 269,722.
    # The often quoted 1,730,714 / 272,474 are the counts with 1x1 projection shortcuts (option B): the two
    # projections add 16*32 + 2*32 + 32*64 + 2*64 = 2,752 parameters.
    assert _meta_count("resnet110", num_classes=10) == 1_727_962
    assert _meta_count("resnet20", num_classes=10) == 269_722
    assert _meta_count("resnet110", num_classes=10, shortcut="B") == 1_730_714
    assert _meta_count("resnet20", num_classes=10, shortcut="B") == 272_474


@pytest.mark.parametrize("name", BASELINES)
def test_parameter_counts_match_the_papers(name):
    n10 = _meta_count(name, num_classes=10)
    assert n10 == PARAM_COUNTS[name]
    assert abs(n10 - PAPER_COUNTS[name]) / PAPER_COUNTS[name] < 0.03
    assert _meta_count(name, num_classes=100) - n10 == 90 * (NUM_FEATURES[name] + 1)
    # SE adds fc1 (C*C/r + C/r) and fc2 (C/r*C + C) per residual unit.
    r = 16
    se_extra = sum(2 * c * c // r + c // r + c for c in SE_CHANNELS[name])
    assert _meta_count("se_" + name, num_classes=10) - n10 == se_extra


def test_se_increase_of_resnet110_by_formula():
    # 18 * [(2*16*16//16 + 1 + 16) + (2*32*32//16 + 2 + 32) + (2*64*64//16 + 4 + 64)] = 18 * (49 + 162 + 580)
    assert _meta_count("se_resnet110", num_classes=10) - _meta_count("resnet110", num_classes=10) == 14_238
    assert _meta_count("se_resnet110", num_classes=10, reduction=8) - 1_727_962 == sum(
        18 * (2 * c * c // 8 + c // 8 + c) for c in (16, 32, 64)
    )


def test_architectures_have_the_documented_layout():
    with torch.device("meta"):
        r110, p164, wrn = create_model("resnet110"), create_model("preact_resnet164"), create_model("wrn16_8")
        ss26, se29 = create_model("shake_shake26_2x96d"), create_model("shake_even29_2x4x64d")
    assert [len(getattr(r110, f"layer{i}")) for i in (1, 2, 3)] == [18, 18, 18]
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in r110.modules())
    assert [len(getattr(p164, f"layer{i}")) for i in (1, 2, 3)] == [18, 18, 18]
    assert [getattr(p164, f"layer{i}")[0].conv3.out_channels for i in (1, 2, 3)] == [64, 128, 256]
    assert [getattr(p164, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3)] == [16, 32, 64]
    assert [len(getattr(wrn, f"layer{i}")) for i in (1, 2, 3)] == [2, 2, 2]
    assert [getattr(wrn, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3)] == [128, 256, 512]
    assert wrn.conv1.out_channels == 16
    assert [len(getattr(ss26, f"layer{i}")) for i in (1, 2, 3)] == [4, 4, 4]
    assert [getattr(ss26, f"layer{i}")[0].branch1[1].out_channels for i in (1, 2, 3)] == [96, 192, 384]
    assert isinstance(ss26.layer1[0].downsample, ShakeShortcut) and ss26.layer1[1].downsample is None
    assert [len(getattr(se29, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    for i, width in zip((1, 2, 3), (256, 512, 1024)):
        branch = getattr(se29, f"layer{i}")[0].branch2
        grouped = branch[4]
        assert (grouped.in_channels, grouped.out_channels, grouped.groups) == (width, width, 4)
        assert branch[7].out_channels == width
    assert se29.conv1.out_channels == 64
    assert se29.layer1[0].shake_backward == "even" and ss26.layer1[0].shake_backward == "shake"


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_forward_backward_and_channels_last(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).train()  # train mode: BN uses batch statistics, shakes are random
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    with torch.no_grad():
        ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


def test_initialisation():
    model = create_model("resnet20")
    conv = model.layer3[1].conv1
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)
    assert not model.fc.bias.any()


def test_option_a_shortcut_is_parameter_free_and_zero_pads():
    sc = ShortcutA(16, 32, stride=2)
    assert list(sc.parameters()) == [] and list(sc.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        y = sc(inp)
        assert y.shape == (2, 32, 4, 4)
        torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2], rtol=0, atol=0)
        assert not y[:, 16:].any()
    model = CifarResNet(depth=20)
    assert isinstance(model.layer2[0].downsample, ShortcutA) and isinstance(model.layer3[0].downsample, ShortcutA)
    assert model.layer1[0].downsample is None and model.layer2[1].downsample is None


def test_shake_shortcut_sees_the_shifted_pixels():
    sc = ShakeShortcut(1, 2, stride=2).eval()
    with torch.no_grad():
        sc.conv1.weight.fill_(1.0)
        sc.conv2.weight.fill_(1.0)
    sc.bn.eps = 0.0  # running stats mean 0, var 1: BN is the identity
    x = torch.randn(1, 1, 6, 6)
    y = sc(x)
    r = x.relu()[0, 0]
    torch.testing.assert_close(y[0, 0], r[::2, ::2])
    shifted = torch.zeros(6, 6)
    shifted[1:, 1:] = r[:-1, :-1]  # one pixel right and down, zeros on top and left
    torch.testing.assert_close(y[0, 1], shifted[::2, ::2])
    torch.testing.assert_close(y[0, 1, 1:, 1:], r[1:-1:2, 1:-1:2])


def test_shake_shake_function_gradients():
    x1 = torch.randn(3, 2, 4, 4, requires_grad=True)
    x2 = torch.randn(3, 2, 4, 4, requires_grad=True)
    alpha = torch.rand(3, 1, 1, 1)
    beta = torch.rand(3, 1, 1, 1)
    out = ShakeShakeFunction.apply(x1, x2, alpha, beta)
    torch.testing.assert_close(out, alpha * x1 + (1 - alpha) * x2)
    g = torch.randn_like(out)
    out.backward(g)
    torch.testing.assert_close(x1.grad, g * beta)
    torch.testing.assert_close(x2.grad, g * (1 - beta))


def _coefficients(n: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) drawn by shake_shake for n images, read off x1 = 1, x2 = 0 and the gradient of x1."""
    x1 = torch.ones(n, 1, 1, 1, requires_grad=True)
    x2 = torch.zeros(n, 1, 1, 1, requires_grad=True)
    out = shake_shake(x1, x2, training=True, **kwargs)
    out.sum().backward()
    torch.testing.assert_close(x1.grad + x2.grad, torch.ones_like(x1))
    return out.detach().flatten(), x1.grad.flatten()


def test_shake_shake_draws_independent_alpha_and_beta_per_image():
    torch.manual_seed(0)
    alpha, beta = _coefficients(4096)
    assert len(alpha.unique()) > 4000 and len(beta.unique()) > 4000  # one coefficient per image
    assert 0 <= alpha.min() and alpha.max() <= 1 and 0 <= beta.min() and beta.max() <= 1
    assert abs(alpha.mean() - 0.5) < 0.03 and abs(beta.mean() - 0.5) < 0.03
    assert abs(torch.corrcoef(torch.stack([alpha, beta]))[0, 1]) < 0.06
    torch.manual_seed(0)
    again = _coefficients(4096)
    assert torch.equal(again[0], alpha) and torch.equal(again[1], beta)  # the default RNG drives it


def test_shake_even_keep_and_batch_level():
    alpha, beta = _coefficients(64, backward="even")
    assert len(alpha.unique()) == 64 and torch.equal(beta, torch.full_like(beta, 0.5))
    alpha, beta = _coefficients(64, backward="keep")
    torch.testing.assert_close(beta, alpha)
    alpha, beta = _coefficients(64, level="batch")
    assert len(alpha.unique()) == 1 and len(beta.unique()) == 1
    alpha, beta = _coefficients(64, forward="even")
    assert torch.equal(alpha, torch.full_like(alpha, 0.5))
    x1, x2 = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(shake_shake(x1, x2, training=False), 0.5 * (x1 + x2))


def test_shake_block_eval_is_the_even_combination_and_train_is_random():
    torch.manual_seed(0)
    block = ShakeBlock(8, 16, 2, "basic", 16, 1, se=False, reduction=16, shake_forward="shake",
                       shake_backward="shake", shake_level="image")  # fmt: skip
    x = torch.randn(4, 8, 8, 8)
    block.train()
    block(x)  # give the BN layers non-trivial running statistics
    block.eval()
    with torch.no_grad():
        out = block(x)
        expected = block.downsample(x) + 0.5 * (block.branch1(x) + block.branch2(x))
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(block(x), out, rtol=0, atol=0)
    model = ShakeShake(depth=8, base_width=8).train()
    y = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        first, second = model(y), model(y)
        assert not torch.allclose(first, second)
        torch.manual_seed(1)
        a = model(y)
        torch.manual_seed(1)
        torch.testing.assert_close(model(y), a, rtol=0, atol=0)
        model.eval()
        torch.testing.assert_close(model(y), model(y), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CifarBasicBlock(8, 16, 2, "A", se=True, reduction=4),
        lambda: PreActBottleneck(8, 4, 2, se=True, reduction=4),
        lambda: WideBasicBlock(8, 16, 2, 0.0, se=True, reduction=4),
        lambda: ShakeBlock(
            8,
            16,
            2,
            "bottleneck",
            16,
            4,
            se=True,
            reduction=4,
            shake_forward="shake",
            shake_backward="even",
            shake_level="image",
        ),  # fmt: skip
    ],
)
def test_se_sits_on_the_residual_branch_before_the_sum(make):
    torch.manual_seed(0)
    block = make().eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        with_se = block(x)
        block.se.fc2.weight.zero_()  # a gate of sigmoid(-1e4) = 0 removes the residual branch, leaving the shortcut
        block.se.fc2.bias.fill_(-1e4)
        out = block(x)
        if isinstance(block, (PreActBottleneck, WideBasicBlock)):
            shortcut = block.downsample(torch.relu(block.bn1(x)))
        else:
            shortcut = block.downsample(x)
        if isinstance(block, CifarBasicBlock):
            shortcut = shortcut.relu()
    torch.testing.assert_close(out, shortcut)
    assert not torch.allclose(with_se, out)


def test_overrides_validation_and_weight_round_trip(tmp_path):
    with pytest.raises(ValueError, match="6n\\+2"):
        create_model("resnet20", depth=21)
    with pytest.raises(ValueError, match="9n\\+2"):
        create_model("preact_resnet164", depth=165)
    with pytest.raises(ValueError, match="shake_backward"):
        create_model("shake_shake26_2x96d", shake_backward="sometimes")
    with pytest.raises(TypeError, match="unknown argument"):
        create_model("wrn16_8", groups=2)
    wrn = create_model("wrn16_8", depth=10, widen_factor=1, drop_rate=0.3)
    assert wrn.layer1[0].drop_rate == 0.3
    model = create_model("se_resnet20", num_classes=100).eval()
    path = save_weights(model, tmp_path / "se_resnet20.pth")
    loaded = create_model("se_resnet20", num_classes=100, pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    model.reset_classifier(10)
    assert model(x).shape == (2, 10)
