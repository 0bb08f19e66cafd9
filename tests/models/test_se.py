import pytest
import torch

from se_transfer.models import SEModule, create_model


def _manual_se(x, m, squeeze="avg", gate=torch.sigmoid):
    z = x.mean((2, 3)) if squeeze == "avg" else x.amax((2, 3))
    w1, w2 = m.fc1.weight.flatten(1), m.fc2.weight.flatten(1)
    h = z @ w1.t() + (m.fc1.bias if m.fc1.bias is not None else 0)
    s = torch.relu(h) @ w2.t() + (m.fc2.bias if m.fc2.bias is not None else 0)
    return x * gate(s)[:, :, None, None]


@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_se_matches_the_paper_formula(squeeze, gate, bias):
    m = SEModule(64, reduction=16, squeeze=squeeze, gate=gate, bias=bias)
    x = torch.randn(3, 64, 7, 5)
    ref = _manual_se(x, m, squeeze, {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[gate])
    torch.testing.assert_close(m(x), ref)
    assert m.fc1.weight.shape == (4, 64, 1, 1) and m.fc2.weight.shape == (64, 4, 1, 1)
    assert (m.fc1.bias is not None) == bias


def test_se_reduction_and_explicit_width():
    assert SEModule(256, reduction=8).fc1.out_channels == 32
    assert SEModule(256, reduction=16).fc1.out_channels == 16
    assert SEModule(256, hidden_channels=24).fc1.out_channels == 24
    assert SEModule(8, reduction=16).fc1.out_channels == 1  # never zero channels


def test_nosqueeze_gate_varies_over_space():
    m = SEModule(32, reduction=4, no_squeeze=True)
    x = torch.randn(2, 32, 6, 6)
    s = m.excitation(x)
    assert s.shape == x.shape
    assert s.std(dim=(2, 3)).mean() > 0  # a spatial gate, unlike the squeezed one
    w1, w2 = m.fc1.weight.flatten(1), m.fc2.weight.flatten(1)
    h = torch.relu(torch.einsum("oc,nchw->nohw", w1, x) + m.fc1.bias[:, None, None])
    ref = torch.sigmoid(torch.einsum("oc,nchw->nohw", w2, h) + m.fc2.bias[:, None, None])
    torch.testing.assert_close(s, ref)


@pytest.mark.parametrize("kwargs", [{"squeeze": "median"}, {"gate": "softmax"}, {"reduction": 0}])
def test_se_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        SEModule(64, **kwargs)


def test_extra_parameters_follow_the_papers_formula():
    # (2/r) * sum_s N_s * C_s^2 plus the FC biases (C/r + C per block), paper section 4.
    with torch.device("meta"):
        base = sum(p.numel() for p in create_model("resnet50").parameters())
        se = sum(p.numel() for p in create_model("se_resnet50").parameters())
    blocks, channels = (3, 4, 6, 3), (256, 512, 1024, 2048)
    expected = sum(n * (2 * c * (c // 16) + c // 16 + c) for n, c in zip(blocks, channels))
    assert se - base == expected
    assert 2.4e6 < expected < 2.6e6
