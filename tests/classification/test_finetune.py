"""Fine-tuning policies: head re-initialisation, backbone LR multiplier, frozen stages."""

import logging

import pytest
import torch

from se_transfer.classification.model import attach_input_normalization, build_classifier, is_classifier_head
from se_transfer.config import ConfigError, load_config
from se_transfer.engine import build_optimizer
from se_transfer.models import CAFFE_BGR, create_model, normalize_input, save_weights
from tests.helpers import randomize_batchnorm


@pytest.fixture
def imagenet_weights(tmp_path):
    src = create_model("se_resnet18")
    randomize_batchnorm(src)
    return save_weights(src, tmp_path / "imagenet.pth"), src


def _step(model, optimizer):
    model.train()
    loss = model(torch.randn(4, 3, 64, 64)).logsumexp(1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_head_is_reinitialised_and_the_trunk_keeps_the_weights(imagenet_weights, caplog):
    path, src = imagenet_weights
    cfg = load_config(None, ["MODEL.ARCH", "se_resnet18", "MODEL.WEIGHTS", str(path)])
    with caplog.at_level(logging.WARNING):
        model = build_classifier(cfg, 365)
    assert "classifier head re-initialised" in caplog.text
    assert model.fc.out_features == 365
    torch.testing.assert_close(model.layer4[1].se.fc1.weight, src.layer4[1].se.fc1.weight)


def test_backbone_lr_multiplier_and_frozen_stages(imagenet_weights):
    path, _ = imagenet_weights
    cfg = load_config(None, ["MODEL.ARCH", "se_resnet18", "MODEL.WEIGHTS", str(path), "MODEL.BACKBONE.FREEZE_AT", "2"])
    model = build_classifier(cfg, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(
        model, "SGD", lr=0.5, weight_decay=0.0, backbone_lr_multiplier=0.0, is_head=is_classifier_head
    )
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.0]
    assert len(opt.param_groups[0]["params"]) == 2  # fc.weight, fc.bias
    _step(model, opt)
    after = model.state_dict()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        if k.startswith("fc."):
            assert moved, k
        elif k.startswith(("stem.", "layer1.")):
            assert not moved, f"frozen {k} moved"  # weights and BN statistics alike
        elif "running" not in k and "num_batches" not in k:
            assert not moved, f"{k} moved with a zero LR multiplier"
    opt = build_optimizer(
        model, "SGD", lr=0.5, weight_decay=0.0, backbone_lr_multiplier=0.1, is_head=is_classifier_head
    )
    assert [g["lr"] for g in opt.param_groups] == [0.5, pytest.approx(0.05)]
    w = model.layer3[0].conv1.weight.detach().clone()
    _step(model, opt)
    assert not torch.equal(w, model.layer3[0].conv1.weight)
    assert all(not p.requires_grad for p in model.layer1.parameters())


def test_freezing_a_cifar_model_is_refused():
    cfg = load_config(None, ["MODEL.ARCH", "resnet20", "MODEL.BACKBONE.FREEZE_AT", "2"])
    with pytest.raises(ConfigError, match="ImageNet-family"):
        build_classifier(cfg, 10)


def test_input_normalisation_follows_the_weights():
    model = create_model("resnet18", num_classes=3).eval()
    model.info.input_norm = dict(CAFFE_BGR)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(normalize_input(x, CAFFE_BGR))
        attach_input_normalization(model)
        torch.testing.assert_close(model(x), expected)
