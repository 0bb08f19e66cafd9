"""The detectron2 adapter: its layout equals the .pkl that convert_weights writes; registration where detectron2 is."""

import pytest
import torch

from se_transfer.detection.d2 import d2_layout, d2_state_shapes
from se_transfer.models import create_model
from se_transfer.models.weights import detectron2_name


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("se_resnet50", {}),
        ("resnet50", {"stride_in_1x1": False}),
        ("se_resnext50_32x4d", {}),
        ("senet154", {}),
        ("se_resnet18", {"basic_relu_before_se": True}),
        ("se_resnet50", {"se_stages": (2, 3, 4), "se_channels": (8, 32, 64, 128)}),
    ],
)
def test_adapter_layout_equals_the_converted_pkl(name, kwargs):
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    names = {detectron2_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    pkl = {k: v for k, v in names.items() if k is not None and not k.startswith("linear.")}
    stem, stages = d2_layout(name, **kwargs)
    assert d2_state_shapes(stem, stages) == pkl
    first = stages[1][0]
    assert first.stride == 2
    if first.bottleneck:  # where the stride sits is part of the layout the weights were trained with
        assert first.stride_in_1x1 == (model.layer2[0].conv1.stride == (2, 2))


def test_adapter_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="standard SE block"):
        d2_layout("se_resnet50", se_variant="post")
    with pytest.raises(ValueError, match="not an ImageNet-family"):
        d2_layout("se_resnet110")


def test_registration_with_detectron2():
    d2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (it cannot be, on our build machines)")
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    from se_transfer.detection.d2 import add_se_transfer_config, register

    register()
    cfg = get_cfg()
    add_se_transfer_config(cfg)
    cfg.MODEL.SE_TRANSFER.ARCH = "se_resnet50"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = BACKBONE_REGISTRY.get("build_se_transfer_fpn_backbone")(cfg, ShapeSpec(channels=3))
    out = backbone(torch.randn(1, 3, 128, 128))
    assert [out[k].shape[-1] for k in ("p2", "p3", "p4", "p5", "p6")] == [32, 16, 8, 4, 2]
    assert d2 is not None
