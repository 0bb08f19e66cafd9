import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from se_transfer.models import STAGE_NAMES, create_model, list_models
from se_transfer.models.complexity import count_macs
from se_transfer.models.layouts import map_keys

timm = pytest.importorskip("timm")

# Parameter counts with a 1000-way classifier (../shared/REFERENCE.md section 2: Cadene / official models).
PARAM_COUNTS = {
    "se_resnet50": 28_088_024,
    "se_resnet101": 49_326_872,
    "se_resnet152": 66_821_848,
    "se_resnext50_32x4d": 27_559_896,
    "se_resnext101_32x4d": 48_955_416,
    "senet154": 115_088_984,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# timm's legacy_* models are the official Caffe architectures (Cadene's conversion).
OFFICIAL = {
    "se_resnet50": "legacy_seresnet50",
    "se_resnet101": "legacy_seresnet101",
    "se_resnet152": "legacy_seresnet152",
    "se_resnext50_32x4d": "legacy_seresnext50_32x4d",
    "se_resnext101_32x4d": "legacy_seresnext101_32x4d",
    "senet154": "legacy_senet154",
}


def _conv_layout(model: nn.Module, rename=lambda n: n) -> dict:
    return {
        rename(name): (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.groups, m.bias is not None)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


def _pools(model: nn.Module) -> list:
    return [(m.kernel_size, m.stride, m.padding, m.ceil_mode) for m in model.modules() if isinstance(m, nn.MaxPool2d)]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_default_se_models_have_the_official_layout(name):
    with torch.device("meta"):
        ours = create_model(name)
        ref = timm.create_model(OFFICIAL[name])
    rename = lambda n: next(iter(map_keys({n + ".weight": None}, "cadene")))[: -len(".weight")]  # noqa: E731
    assert _conv_layout(ours) == _conv_layout(ref, rename)
    assert _pools(ours) == _pools(ref) == [(3, 2, 0, True)]
    assert sum(p.numel() for p in ours.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet152"])
def test_baseline_parameter_counts(name):
    with torch.device("meta"):
        assert sum(p.numel() for p in create_model(name).parameters()) == PARAM_COUNTS[name]


def test_stride_positions_of_the_official_models():
    with torch.device("meta"):
        se_r50, se_x50, senet = (
            create_model("se_resnet50"),
            create_model("se_resnext50_32x4d"),
            create_model("senet154"),
        )
    b = se_r50.layer2[0]
    assert b.conv1.stride == (2, 2) and b.conv2.stride == (1, 1)  # Caffe/MSRA ResNet: stride in the first 1x1
    b = se_x50.layer2[0]
    assert b.conv1.stride == (1, 1) and b.conv2.stride == (2, 2) and b.conv2.groups == 32
    assert b.conv2.out_channels == 256  # ResNeXt 3x3 widths 128/256/512/1024
    b = senet.layer3[0]
    assert b.conv2.groups == 64 and b.conv2.stride == (2, 2)
    assert (b.conv1.out_channels, b.conv2.out_channels, b.conv3.out_channels) == (512, 1024, 1024)
    assert b.downsample[0].kernel_size == (3, 3) and b.downsample[0].padding == (1, 1)
    assert senet.layer1[0].downsample[0].kernel_size == (1, 1)
    assert [senet.stem.conv1.out_channels, senet.stem.conv2.out_channels, senet.stem.conv3.out_channels] == [
        64,
        64,
        128,
    ]
    assert senet.drop_rate == 0.2
    assert [se_r50.layer1[0].se.fc1.out_channels, se_r50.layer4[0].se.fc1.out_channels] == [16, 128]


def test_options_change_the_layout():
    with torch.device("meta"):
        m = create_model("se_resnet50", stride_in_1x1=False, stem_pool="pytorch", reduction=8)
    assert m.layer2[0].conv1.stride == (1, 1) and m.layer2[0].conv2.stride == (2, 2)
    assert _pools(m) == [(3, 2, 1, False)]
    assert m.layer1[0].se.fc1.out_channels == 32


def test_macs_match_the_paper():
    with torch.device("meta"):
        se = count_macs(create_model("se_resnet50"))
        base = count_macs(create_model("resnet50"))
        tv_layout = count_macs(create_model("resnet50", stride_in_1x1=False))
    assert abs(se["total"] / 1e9 - 3.87) <= 0.02
    assert abs(base["total"] / 1e9 - 3.86) <= 0.01
    assert base["se_elementwise"] == 0 and se["se_elementwise"] > 0
    assert 0.0 < se["total"] / base["total"] - 1 < 0.005  # the paper: +0.26%
    assert abs(tv_layout["total"] / 1e9 - 4.09) <= 0.02  # stride in the 3x3 costs more


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", ["se_resnet18", "se_resnet50", "se_resnext50_32x4d", "senet154"])
def test_stage_outputs_have_documented_channels_and_strides(name):
    expansion = 1 if name == "se_resnet18" else 4
    model = create_model(name, features_only=True).eval()
    shapes = model.output_shape()
    assert list(shapes) == list(STAGE_NAMES)
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert [s.channels for s in shapes.values()] == [64 * expansion * 2**i for i in range(4)]
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        feats = model(x)
    for n, f in feats.items():
        assert f.shape == (1, shapes[n].channels, 128 // shapes[n].stride, 96 // shapes[n].stride)
    assert not hasattr(model, "fc")


def test_features_match_the_classifier_trunk():
    full = create_model("se_resnet50").eval()
    feat = create_model("se_resnet50", features_only=True, out_features=["res3", "res5"]).eval()
    feat.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = feat(x)
        assert list(out) == ["res3", "res5"]
        torch.testing.assert_close(out["res5"], full.forward_features(x))
        torch.testing.assert_close(out["res3"], full.forward_stages(x, ["res3"])["res3"])


def test_features_stop_at_the_last_requested_stage():
    model = create_model("resnet50", features_only=True, out_features=["stem", "res3"])
    assert hasattr(model, "layer2") and not hasattr(model, "layer3")
    assert model.output_shape() == {"stem": (64, 4), "res3": (512, 8)}
    with pytest.raises(ValueError, match="out_features"):
        create_model("resnet50", features_only=True, out_features=["res6"])


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at_freezes_what_it_says(freeze_at):
    model = create_model("se_resnet50", features_only=True, freeze_at=freeze_at)
    parts = dict(model.stages())
    for idx, name in enumerate(["stem", *STAGE_NAMES], start=1):
        frozen = idx <= freeze_at
        params = list(parts[name].parameters())
        assert all(p.requires_grad != frozen for p in params), name
        norms = [m for m in parts[name].modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms), name
    if freeze_at == 5:
        assert not any(p.requires_grad for p in model.parameters())
        return
    # A frozen part does not move in a training step, and its BN statistics do not update.
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        part = "stem" if k.startswith("stem.") else STAGE_NAMES[int(k[5]) - 1]
        idx = ["stem", *STAGE_NAMES].index(part) + 1
        changed = not torch.equal(before[k], after[k])
        if idx <= freeze_at:
            assert not changed, f"frozen {k} changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("layer4."))


def test_frozen_bn_everywhere_equals_bn_in_eval():
    bn = create_model("se_resnet50").eval()
    frozen = create_model("se_resnet50", norm="FrozenBN").eval()
    frozen.load_state_dict(bn.state_dict())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x))


@pytest.mark.parametrize("variant", ["standard", "pre", "post", "identity", "3x3"])
@pytest.mark.parametrize("name", ["se_resnet18", "se_resnet50"])
def test_se_integration_variants(variant, name):
    model = create_model(name, num_classes=5, se_variant=variant)
    blk = model.layer2[0]
    expected_channels = {
        "standard": blk.bn2.num_features if name == "se_resnet18" else blk.bn3.num_features,
        "post": blk.bn2.num_features if name == "se_resnet18" else blk.bn3.num_features,
        "identity": blk.downsample[1].num_features,
        "pre": blk.conv1.in_channels,
        "3x3": blk.bn1.num_features if name == "se_resnet18" else blk.bn2.num_features,
    }[variant]
    assert blk.se.channels == expected_channels
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_se_variant_placement_is_what_it_says():
    # With the gate forced to 0 (sigmoid of a huge negative bias), each variant must zero a different path.
    x = torch.randn(1, 64, 8, 8)
    for variant, expect_zero in [("standard", "branch"), ("identity", "shortcut"), ("post", "all"), ("pre", "branch")]:
        model = create_model("se_resnet18", se_variant=variant).eval()
        blk = model.layer1[0]
        with torch.no_grad():
            blk.se.fc2.bias.fill_(-1e4)
            out = blk(x)
            branch = blk.residual(x)
        if expect_zero == "all":
            assert torch.count_nonzero(out) == 0
        elif expect_zero == "branch":
            torch.testing.assert_close(out, torch.relu(x))
        else:
            torch.testing.assert_close(out, torch.relu(branch))


def test_se_stages_select_where_se_is():
    model = create_model("se_resnet50", se_stages=(2, 3, 4))  # the paper's "no SE in the last stage"
    assert all(hasattr(b, "se") for b in model.layer3) and not any(hasattr(b, "se") for b in model.layer4)
    with torch.device("meta"):
        full = sum(p.numel() for p in create_model("se_resnet50").parameters())
        base = sum(p.numel() for p in create_model("resnet50").parameters())
        no5 = sum(p.numel() for p in create_model("se_resnet50", se_stages=(2, 3, 4)).parameters())
    assert (no5 - base) / base < 0.04 < (full - base) / base  # paper: ~10% -> ~4% extra parameters


@pytest.mark.parametrize(
    "kwargs",
    [
        {"se_variant": "middle"},
        {"stem_pool": "avg"},
        {"se_stages": (1, 2)},
        {"freeze_at": 6},
        {"layers": (3, 4, 6)},
        {"norm": "GN"},
    ],
)
def test_bad_options_are_errors(kwargs):
    with pytest.raises(ValueError):
        create_model("se_resnet50", **kwargs)


def test_unknown_model_and_argument_are_errors():
    with pytest.raises(KeyError, match="Did you mean: se_resnet50"):
        create_model("se_resnet5")
    with pytest.raises(TypeError, match="stride_in_1x"):
        create_model("se_resnet50", stride_in_1x=True)
