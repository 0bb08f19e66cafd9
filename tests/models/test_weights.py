import logging
import os
import pickle

import pytest
import torch
import torchvision

from se_transfer.models import (
    CAFFE_BGR,
    IMAGENET_RGB,
    WeightsError,
    create_model,
    inspect_weights,
    normalize_input,
    save_detectron2,
    save_weights,
)
from tests.helpers import randomize_batchnorm

timm = pytest.importorskip("timm")

# (source library, source model, our model): the required parity cases, then more public layouts.
PARITY = [
    ("timm", "legacy_seresnet50", "se_resnet50"),
    ("timm", "legacy_seresnext50_32x4d", "se_resnext50_32x4d"),
    ("timm", "legacy_senet154", "senet154"),
    ("timm", "seresnet50", "se_resnet50"),
    ("timm", "resnet50", "resnet50"),
    ("torchvision", "resnet50", "resnet50"),
    ("torchvision", "resnext50_32x4d", "resnext50_32x4d"),
    ("timm", "legacy_seresnet18", "se_resnet18"),  # basic block with timm's extra ReLU
    ("timm", "seresnet18", "se_resnet18"),  # SE widths rounded to multiples of 8
    ("timm", "seresnext50_32x4d", "se_resnext50_32x4d"),
    ("torchvision", "resnet18", "resnet18"),
]


def _source(lib, name):
    model = timm.create_model(name) if lib == "timm" else getattr(torchvision.models, name)()
    randomize_batchnorm(model)
    return model.eval()


@pytest.mark.parametrize("lib,src,ours", PARITY, ids=[f"{a}-{b}" for a, b, _ in PARITY])
def test_logits_equal_the_source_model(lib, src, ours, tmp_path):
    ref = _source(lib, src)
    path = tmp_path / "weights.pth"
    torch.save(ref.state_dict(), path)
    model = create_model(ours, pretrained=path).eval()
    x = torch.randn(2, 3, 97, 113)  # odd sizes: the stem pool flavour matters
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    assert diff < 1e-4
    assert model.info.input_norm == IMAGENET_RGB


def test_flavour_is_read_from_the_layout(tmp_path):
    torch.save(_source("timm", "legacy_seresnet50").state_dict(), tmp_path / "legacy.pth")
    torch.save(_source("timm", "seresnet50").state_dict(), tmp_path / "timm.pth")
    legacy = create_model("se_resnet50", pretrained=tmp_path / "legacy.pth")
    tm = create_model("se_resnet50", pretrained=tmp_path / "timm.pth")
    assert legacy.layer2[0].conv1.stride == (2, 2) and legacy.stem.pool.ceil_mode
    assert tm.layer2[0].conv2.stride == (2, 2) and tm.stem.pool.padding == 1
    assert inspect_weights(tmp_path / "legacy.pth").layout == "cadene"
    assert inspect_weights(tmp_path / "timm.pth").model_name == "se_resnet50"


def test_wrapped_and_safetensors_checkpoints(tmp_path):
    from safetensors.torch import save_file

    ref = _source("timm", "seresnet50")
    state = ref.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, tmp_path / "train.pth.tar")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        for f in ("train.pth.tar", "model.safetensors"):
            model = create_model("se_resnet50", pretrained=tmp_path / f).eval()
            assert (model(x) - expected).abs().max() < 1e-4, f


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_our_format_round_trips_architecture_and_normalisation(tmp_path, suffix):
    model = create_model("se_resnet18", num_classes=10, se_variant="post", stride_in_1x1=False).eval()
    randomize_batchnorm(model)
    model.info.input_norm = dict(CAFFE_BGR)
    path = save_weights(model, tmp_path / f"w{suffix}")
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file, then renamed
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any other output, whatever the writer's default
    loaded = create_model("se_resnet18", num_classes=10, pretrained=path).eval()
    assert loaded.layer1[0].se_variant == "post"
    assert loaded.info.input_norm == CAFFE_BGR
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_bare_state_dict_of_ours_keeps_the_requested_defaults(tmp_path, caplog):
    model = create_model("se_resnet50").eval()
    randomize_batchnorm(model)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with caplog.at_level(logging.WARNING):
        loaded = create_model("se_resnet50", pretrained=tmp_path / "bare.pth").eval()
    assert "without metadata" in caplog.text
    assert loaded.layer2[0].conv1.stride == (2, 2) and loaded.stem.pool.ceil_mode
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_head_of_another_size_is_reinitialised_and_said(tmp_path, caplog):
    ref = _source("timm", "legacy_seresnet50")
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING):
        model = create_model("se_resnet50", num_classes=365, pretrained=tmp_path / "w.pth")
    assert "classifier head re-initialised" in caplog.text and "1000 classes" in caplog.text
    assert model.fc.out_features == 365
    torch.testing.assert_close(model.layer4[2].se.fc2.weight, ref.layer4[2].se_module.fc2.weight)
    backbone = create_model("se_resnet50", pretrained=tmp_path / "w.pth", features_only=True, freeze_at=2)
    torch.testing.assert_close(backbone.stem.bn1.running_mean, ref.layer0.bn1.running_mean)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # FrozenBatchNorm2d folds the statistics into a scale and shift: equal up to float rounding.
        torch.testing.assert_close(backbone.eval()(x)["res5"], ref.forward_features(x), rtol=1e-3, atol=1e-3)


def test_pixel_normalisation_helper():
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(
        normalize_input(x),
        (x - torch.tensor(IMAGENET_RGB["mean"]).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_RGB["std"]).view(1, 3, 1, 1),
    )
    caffe = normalize_input(x, CAFFE_BGR)
    torch.testing.assert_close(caffe[:, 0], x[:, 2] * 255 - 104.0)  # B first, 0..255, mean-subtracted


# --------------------------------------------------------------------------------------------- bad input


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("se_resnet50", pretrained=tmp_path / "nope.pth")


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="notes.pth"):
        create_model("se_resnet50", pretrained=bad)
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match="broken.safetensors"):
        create_model("se_resnet50", pretrained=bad_st)


class _Payload:  # an arbitrary object: weights_only loading must refuse it
    pass


def test_a_pickle_of_objects_is_refused(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        create_model("se_resnet50", pretrained=path)


def test_unrecognised_layout_is_named(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(1), "blocks.0.attn.qkv.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="unrecognised weight layout.*patch_embed"):
        create_model("se_resnet50", pretrained=path)


def test_checkpoint_of_another_architecture(tmp_path):
    torch.save(_source("torchvision", "resnet101").state_dict(), tmp_path / "r101.pth")
    with pytest.raises(WeightsError, match=r"r101.pth.*blocks \[3, 4, 23, 3\].*'resnet101'.*'se_resnet50'"):
        create_model("se_resnet50", pretrained=tmp_path / "r101.pth")
    torch.save(_source("torchvision", "resnet50").state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError, match="no SE.*'resnet50' is 'se_resnet50' without SE"):
        create_model("se_resnet50", pretrained=tmp_path / "r50.pth")


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    state = _source("timm", "legacy_seresnet50").state_dict()
    broken = dict(state)
    del broken["layer3.2.conv2.weight"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing tensors: layer3\.2\.conv2\.weight"):
        create_model("se_resnet50", pretrained=tmp_path / "missing.pth")
    broken = dict(state)
    broken["layer1.0.se_module.fc1.weight"] = torch.zeros(8, 256, 1, 1)  # one odd block in the stage
    torch.save(broken, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"mis-shaped tensors: layer1\.0\.se\.fc1\.weight: checkpoint \(8, 256"):
        create_model("se_resnet50", pretrained=tmp_path / "shape.pth")
    broken = dict(state)
    broken["layer2.0.extra.weight"] = torch.zeros(3)
    torch.save(broken, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected tensors: layer2\.0\.extra\.weight"):
        create_model("se_resnet50", pretrained=tmp_path / "extra.pth")


# --------------------------------------------------------------------------------------------- detectron2


def test_detectron2_pkl_names_and_values(tmp_path):
    model = create_model("se_resnet50")
    randomize_batchnorm(model)
    path = save_detectron2(model, tmp_path / "se_r50.pkl")
    with open(path, "rb") as f:  # our own file, written by the line above
        data = pickle.load(f)
    assert data["__author__"] == "se_transfer" and data["matching_heuristics"] is True
    weights = data["model"]
    sd = model.state_dict()
    pairs = {
        "stem.conv1.weight": "stem.conv1.weight",
        "stem.conv1.norm.running_var": "stem.bn1.running_var",
        "res2.0.conv1.norm.weight": "layer1.0.bn1.weight",
        "res3.0.shortcut.weight": "layer2.0.downsample.0.weight",
        "res3.0.shortcut.norm.bias": "layer2.0.downsample.1.bias",
        "res5.2.se.fc2.bias": "layer4.2.se.fc2.bias",
        "res4.5.conv3.weight": "layer3.5.conv3.weight",
        "linear.weight": "fc.weight",
    }
    for d2, ours in pairs.items():
        assert (weights[d2] == sd[ours].numpy()).all(), d2
    assert not any(k.endswith("num_batches_tracked") for k in weights)
    assert len(weights) == sum(1 for k in sd if not k.endswith("num_batches_tracked"))
    assert data["se_transfer"]["arch_kwargs"]["stride_in_1x1"] is True


def test_a_file_of_ours_of_another_architecture_is_named_by_its_metadata(tmp_path):
    path = save_weights(create_model("se_resnet50", se_stages=(2, 3, 4)), tmp_path / "custom.pth")
    with pytest.raises(
        WeightsError, match=r"saved as 'se_resnet50' with \{'se_stages': \[2, 3, 4\]\}\), which does not"
    ):
        create_model("se_resnet50", pretrained=path)
    assert create_model("se_resnet50", pretrained=path, se_stages=(2, 3, 4)).layer4[0].se_variant is None
    path = save_weights(create_model("se_resnet101"), tmp_path / "r101.pth")
    with pytest.raises(WeightsError, match=r"saved as 'se_resnet101'\), which does not match the requested 'se_resn"):
        create_model("se_resnet50", pretrained=path)
