"""The detectron2 path: the backbone it builds is the network the weights came from, for every public layout.

Features of the backbone that detectron2 builds (``build_se_transfer_fpn_backbone``'s bottom-up) must equal the source
implementation's (timm, torchvision) stage outputs, and detectron2's own ``build_resnet_fpn_backbone`` on the same
torchvision / Caffe2 weights; the torchvision-based detector must compute the same backbone and the same normalised
input. Every weight file has non-trivial BN statistics.
"""

import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from se_transfer.detection.backbone import BackboneConfigError, resolve_backbone
from se_transfer.detection.model import build_faster_rcnn
from se_transfer.models import create_model, save_detectron2, save_weights
from se_transfer.models.info import CAFFE_BGR
from se_transfer.models.layouts import to_detectron2
from tests.helpers import randomize_batchnorm

timm = pytest.importorskip("timm")
D2_MISSING = (
    "detectron2 is not installed: pip install ../shared/third_party/detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    " (see README, 'detectron2')"
)
STAGES = ("res2", "res3", "res4", "res5")
REPO = Path(__file__).resolve().parents[2]


def _source(lib, name):
    model = timm.create_model(name) if lib == "timm" else getattr(torchvision.models, name)()
    randomize_batchnorm(model)
    return model.eval()


def _stage_outputs(model, x):
    """layer1..layer4 outputs of a timm / torchvision ResNet, by forward hooks."""
    out = {}
    hooks = [
        getattr(model, f"layer{i + 1}").register_forward_hook(lambda m, a, y, n=n: out.__setitem__(n, y))
        for i, n in enumerate(STAGES)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in STAGES)


def _rel_diff(a, b):
    """Largest difference of each stage relative to the stage's largest value (random nets reach ~200 at res5, where
    float32 rounding alone gives 1e-3 absolute); a wrong flavour gives O(1)."""
    return max((a[k] - b[k]).abs().max().item() / b[k].abs().max().item() for k in STAGES)


# ------------------------------------------------------------------------------------- without detectron2


def test_config_that_contradicts_the_weights_is_an_error_naming_both(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(_source("timm", "legacy_seresnet50").state_dict(), path)
    spec = resolve_backbone(path)  # the architecture comes from the file when the config names none
    assert spec.arch == "se_resnet50" and spec.kwargs["stride_in_1x1"] is True and spec.kwargs["stem_pool"] == "caffe"
    with pytest.raises(BackboneConfigError, match=r"MODEL\.ARCH='resnet101' contradicts MODEL\.WEIGHTS: .*legacy"):
        resolve_backbone(path, "resnet101")
    with pytest.raises(BackboneConfigError, match=r"MODEL\.KWARGS contradicts MODEL\.WEIGHTS.*stride_in_1x1=False"):
        resolve_backbone(path, "se_resnet50", {"stride_in_1x1": False})
    with pytest.raises(BackboneConfigError, match=r"set by the detector"):
        resolve_backbone(path, "se_resnet50", {"freeze_at": 0})


def test_torchvision_detector_checkpoint_rebuilds_the_flavour(tmp_path):
    """A detector trained from torchvision-layout weights (stride in the 3x3) is rebuilt so, not as the defaults."""
    path = tmp_path / "tv.pth"
    torch.save(_source("torchvision", "resnet50").state_dict(), path)
    det = build_faster_rcnn("resnet50", num_classes=3, weights=path, min_size=64, max_size=96)
    from se_transfer.detection.backbone import BACKBONE_META_KEY
    from se_transfer.models.weights import checkpoint_metadata

    ckpt = tmp_path / "model_final.pth"
    torch.save({"model": det.state_dict(), BACKBONE_META_KEY: checkpoint_metadata(det.backbone.body)}, ckpt)
    again = build_faster_rcnn("resnet50", num_classes=3, weights=ckpt, min_size=64, max_size=96)
    assert again.backbone.body.layer2[0].conv2.stride == (2, 2) and again.backbone.body.stem.pool.padding == 1
    x = torch.randn(1, 3, 67, 83)
    with torch.no_grad():
        a, b = det.backbone.body.eval()(x), again.backbone.body.eval()(x)
    assert _max_diff(a, b) == 0.0


# ----------------------------------------------------------------------------------------- with detectron2


@pytest.fixture(scope="module")
def d2():
    d2 = pytest.importorskip("detectron2", reason=D2_MISSING)
    from se_transfer.detection.d2 import register

    register()
    return d2


def _cfg(weights, **keys):
    from detectron2.config import get_cfg

    from se_transfer.detection.d2 import add_se_transfer_config, merge_config_file

    cfg = get_cfg()
    add_se_transfer_config(cfg)
    merge_config_file(cfg, REPO / "configs/detectron2/Base-SE-RCNN-FPN.yaml")
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = "cpu"
    for k, v in keys.items():
        node = cfg
        *parents, leaf = k.split("__")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, v)
    return cfg


def _d2_backbone(cfg):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    from se_transfer.detection.d2 import resolve_config

    resolve_config(cfg)
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3)).eval()


def _features(backbone, x):
    with torch.no_grad():
        return backbone.bottom_up(x)


def _pkl(path, payload):
    with open(path, "wb") as f:
        pickle.dump(payload, f)
    return path


# (source library, model, how the file is written): every layout the loader reads.
LAYOUTS = [
    ("timm", "legacy_seresnet50", "pth"),  # Cadene / timm legacy: stride in the 1x1, Caffe stem pool
    ("timm", "legacy_seresnext50_32x4d", "pth"),
    ("timm", "legacy_seresnet18", "pth"),  # basic block with timm's extra ReLU before the SE
    ("timm", "seresnet50", "pth"),  # timm current: stride in the 3x3, SE widths rounded to 8
    ("torchvision", "resnet50", "pth"),
    ("torchvision", "resnext50_32x4d", "pth"),
    ("timm", "legacy_seresnet50", "ours.pth"),  # our own files, converted from the source
    ("timm", "seresnet50", "ours.safetensors"),
    ("timm", "legacy_seresnet50", "ours.pkl"),  # our detectron2 .pkl (tools/convert_weights.py X.pkl)
    ("torchvision", "resnet50", "d2.pkl"),  # detectron2's convert-torchvision-to-d2.py output
]


@pytest.mark.parametrize("lib,name,kind", LAYOUTS, ids=[f"{a}-{b}-{c}" for a, b, c in LAYOUTS])
def test_d2_backbone_equals_the_source_model(d2, lib, name, kind, tmp_path):
    ref = _source(lib, name)
    if kind == "pth":
        path = tmp_path / "w.pth"
        torch.save(ref.state_dict(), path)
    else:
        torch.save(ref.state_dict(), tmp_path / "src.pth")
        ours = create_model(
            {"legacy_seresnet50": "se_resnet50", "seresnet50": "se_resnet50", "resnet50": "resnet50"}[name],
            pretrained=tmp_path / "src.pth",
        )
        if kind == "ours.pth":
            path = save_weights(ours, tmp_path / "w.pth")
        elif kind == "ours.safetensors":
            path = save_weights(ours, tmp_path / "w.safetensors")
        elif kind == "ours.pkl":
            path = save_detectron2(ours, tmp_path / "w.pkl")
        else:  # detectron2's names, from torchvision, without our metadata
            path = _pkl(tmp_path / "w.pkl", {"model": to_detectron2(ours.state_dict()), "__author__": "torchvision",
                                             "matching_heuristics": True})  # fmt: skip
    cfg = _cfg(path)
    backbone = _d2_backbone(cfg)
    x = torch.randn(2, 3, 97, 113)  # odd sizes: the stem pool flavour matters
    diff = _rel_diff(_features(backbone, x), _stage_outputs(ref, x))
    assert diff < 1e-5, diff
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    frozen = [n for n, p in backbone.bottom_up.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("body.stem.", "body.layer1.")) for n in frozen)  # FREEZE_AT 2


def _d2_resnet_on(weights_pkl, stride_in_1x1, x):
    """detectron2's own build_resnet_fpn_backbone R-50 (its ResNet, FrozenBN), loaded by its own checkpointer."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
    cfg.MODEL.FPN.IN_FEATURES = list(STAGES)
    backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    holder = torch.nn.Module()
    holder.backbone = backbone
    DetectionCheckpointer(holder).load(str(weights_pkl))  # matching heuristics map res2.0.conv1 -> bottom_up...
    return _features(backbone, x)


def test_equals_detectron2s_own_resnet50_on_torchvision_weights(d2, tmp_path):
    ref = _source("torchvision", "resnet50")
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = create_model("resnet50", pretrained=tmp_path / "tv.pth")
    d2_pkl = _pkl(tmp_path / "tv_d2.pkl", {"model": to_detectron2(ours.state_dict()), "__author__": "torchvision",
                                           "matching_heuristics": True})  # fmt: skip
    x = torch.randn(1, 3, 97, 113)
    theirs = _d2_resnet_on(d2_pkl, stride_in_1x1=False, x=x)
    assert _rel_diff(_features(_d2_backbone(_cfg(tmp_path / "tv.pth")), x), theirs) < 1e-5
    assert _rel_diff(_features(_d2_backbone(_cfg(d2_pkl)), x), theirs) < 1e-5


def _caffe2_names(d2_state):
    """detectron2 ResNet names -> the Caffe2 / Detectron model-zoo names of MSRA's R-50.pkl (affine-only norms)."""
    import re

    out = {}
    for k, v in d2_state.items():
        if k.endswith(("running_mean", "running_var")):
            continue
        k = re.sub(r"^stem\.conv1\.weight$", "conv1_w", k)
        k = re.sub(r"^stem\.conv1\.norm\.(weight|bias)$", lambda m: "res_conv1_bn_" + "sb"[m[1] == "bias"], k)
        k = re.sub(r"^linear\.(weight|bias)$", lambda m: "fc1000_" + "wb"[m[1] == "bias"], k)
        k = re.sub(r"^res(\d)\.(\d+)\.shortcut\.", r"res\1_\2_branch1.", k)
        k = re.sub(r"^res(\d)\.(\d+)\.conv(\d)\.", lambda m: f"res{m[1]}_{m[2]}_branch2{'abc'[int(m[3]) - 1]}.", k)
        k = k.replace(".norm.weight", "_bn_s").replace(".norm.bias", "_bn_b").replace(".weight", "_w")
        out[k] = v
    return out


def test_caffe2_msra_pkl_equals_detectron2s_own_resnet(d2, tmp_path):
    """An MSRA-style R-50.pkl (Caffe2 names, AffineChannel norms): MSRA flavour and BGR normalisation, read safely."""
    model = create_model("resnet50", stem_pool="pytorch")  # the MSRA flavour: stride in the 1x1
    randomize_batchnorm(model)
    for m in model.modules():  # AffineChannel: statistics 0 / 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    blobs = _caffe2_names(to_detectron2(model.state_dict()))
    path = _pkl(tmp_path / "R-50.pkl", {"blobs": blobs})
    x = torch.randn(1, 3, 97, 113)
    cfg = _cfg(path)
    ours = _features(_d2_backbone(cfg), x)
    assert _rel_diff(ours, _d2_resnet_on(path, stride_in_1x1=True, x=x)) < 1e-5
    assert cfg.INPUT.FORMAT == "BGR" and list(cfg.MODEL.PIXEL_MEAN) == [103.53, 116.28, 123.675]
    assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]


def test_a_pkl_that_pickles_objects_is_refused(d2, tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import sys; sys.exit(13)",))

    path = _pkl(tmp_path / "evil.pkl", {"model": {"stem.conv1.weight": Evil()}, "__author__": "x"})
    from se_transfer.detection.d2 import checkpointer_class

    with pytest.raises(BackboneConfigError, match=r"refusing to unpickle builtins\.exec"):
        _d2_backbone(_cfg(path))
    holder = torch.nn.Module()
    with pytest.raises(ValueError, match="refusing to unpickle"):
        checkpointer_class()(holder).load(str(path))


def test_d2_config_that_contradicts_the_weights_is_an_error_naming_both(d2, tmp_path):
    from se_transfer.detection.d2 import resolve_config

    path = tmp_path / "legacy.pth"
    torch.save(_source("timm", "legacy_seresnet50").state_dict(), path)
    cases = [
        ({"MODEL__SE_TRANSFER__ARCH": "resnet50"}, r"MODEL\.SE_TRANSFER\.ARCH='resnet50' contradicts MODEL\.WEIGHTS"),
        ({"INPUT__FORMAT": "BGR"}, r"INPUT\.FORMAT='BGR' but .*legacy\.pth expects 'RGB'"),
        ({"MODEL__PIXEL_MEAN": [103.53, 116.28, 123.675]}, r"MODEL\.PIXEL_MEAN=\[103\.53.* expects \[123\.675"),
        ({"MODEL__PIXEL_STD": [1.0, 1.0, 1.0]}, r"MODEL\.PIXEL_STD=\[1\.0.* expects \[58\.395"),
    ]
    for keys, message in cases:
        with pytest.raises(BackboneConfigError, match=message):
            resolve_config(_cfg(path, **keys))
    cfg = _cfg(path)
    cfg.MODEL.SE_TRANSFER.KWARGS.stride_in_1x1 = False
    with pytest.raises(BackboneConfigError, match=r"MODEL\.SE_TRANSFER\.KWARGS contradicts MODEL\.WEIGHTS"):
        resolve_config(cfg)
    # values equal to the file's (within rounding) are accepted
    resolve_config(_cfg(path, MODEL__PIXEL_MEAN=[123.7, 116.3, 103.5], INPUT__FORMAT="RGB"))
    # building without resolving the input keys is refused, not silently defaulted
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    with pytest.raises(BackboneConfigError, match=r"call se_transfer\.detection\.d2\.resolve_config"):
        BACKBONE_REGISTRY.get("build_se_transfer_fpn_backbone")(_cfg(path), ShapeSpec(channels=3))


@pytest.mark.parametrize("bgr", [False, True], ids=["rgb-weights", "caffe-bgr-weights"])
def test_both_detectors_compute_the_same_backbone_and_input(d2, bgr, tmp_path):
    from detectron2.modeling import build_model

    from se_transfer.detection.d2 import resolve_config

    src = tmp_path / "legacy.pth"
    torch.save(_source("timm", "legacy_seresnet50").state_dict(), src)
    path = src
    if bgr:  # our own file that says its weights want Caffe's BGR 0..255 input
        model = create_model("se_resnet50", pretrained=src)
        model.info.input_norm = dict(CAFFE_BGR)
        path = save_weights(model, tmp_path / "bgr.pth")
    tv = build_faster_rcnn("se_resnet50", num_classes=80, weights=path, min_size=64, max_size=96).eval()
    cfg = _cfg(path)
    resolve_config(cfg)
    d2_model = build_model(cfg).eval()
    x = torch.randn(2, 3, 97, 113)
    with torch.no_grad():
        assert _max_diff(tv.backbone.body(x), d2_model.backbone.bottom_up(x)) == 0.0
    # The same RGB image, as each detector normalises it: torchvision's gets RGB in [0, 1], detectron2's 0..255 pixels
    # in INPUT.FORMAT order.
    rgb = torch.randint(0, 256, (3, 40, 56)).float()
    ours = tv.transform.normalize(rgb / 255.0)
    d2_in = rgb.flip(0) if cfg.INPUT.FORMAT == "BGR" else rgb
    theirs = (d2_in - d2_model.pixel_mean) / d2_model.pixel_std
    assert cfg.INPUT.FORMAT == ("BGR" if bgr else "RGB")
    assert (ours - theirs).abs().max().item() < 1e-4


def test_train_net_d2_usage_errors_are_one_line(d2, tmp_path, capsys, monkeypatch):
    from se_transfer.detection.d2_train import train_net_d2_main

    monkeypatch.chdir(tmp_path)  # detectron2's builtin data sets resolve under ./datasets: absent here
    monkeypatch.syspath_prepend(str(REPO))

    path = tmp_path / "legacy.pth"
    torch.save(_source("timm", "legacy_seresnet18").state_dict(), path)
    config = str(REPO / "configs/detectron2/faster_rcnn_se_resnet50_fpn_2x.yaml")
    cases = [
        (["--eval-only"], ["MODEL.WEIGHTS", str(path), "MODEL.SE_TRANSFER.ARCH", ""], "holds no trained detector"),
        ([], ["MODEL.WEIGHTS", str(path)], "MODEL.SE_TRANSFER.ARCH='se_resnet50' contradicts MODEL.WEIGHTS"),
        ([], ["MODEL.WEIGHTS", str(tmp_path / "nope.pth")], "MODEL.WEIGHTS: file not found"),
        ([], ["MODEL.SE_TRANSFER.ARHC", "x"], "unknown config key MODEL.SE_TRANSFER.ARHC; did you mean MODEL.SE_TRAN"),
        ([], ["DATASETS.TEST", "('coco_2017_vall',)"], "DATASETS.TRAIN: coco_2014_train: json_file "),
        ([], ["DATASETS.TRAIN", "('coco_2017_vall',)"], "no data set named 'coco_2017_vall' is registered"),
        ([], ["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD 0: detectron2's periodic checkpointer"),
    ]
    for flags, opts, message in cases:
        argv = ["--config-file", config, *flags, "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"), *opts]
        assert train_net_d2_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("train_net_d2: error: ") and message in err[0], err
    with pytest.raises(FileNotFoundError, match=r"config file not found: .*missing_base\.yaml \(the _BASE_ of "):
        bad = tmp_path / "bad.yaml"
        bad.write_text('_BASE_: "missing_base.yaml"\n')
        from se_transfer.detection.d2 import load_yaml_with_base

        load_yaml_with_base(bad)


def test_se_impl_and_norm_reach_the_d2_backbone(d2, tmp_path):
    from se_transfer.models.se import SEModule

    path = tmp_path / "legacy.pth"
    torch.save(_source("timm", "legacy_seresnet18").state_dict(), path)
    cfg = _cfg(path, MODEL__SE_TRANSFER__SE_IMPL="eager", MODEL__RESNETS__NORM="BN", MODEL__BACKBONE__FREEZE_AT=1)
    body = _d2_backbone(cfg).bottom_up.body
    ses = [m for m in body.modules() if isinstance(m, SEModule)]
    assert ses and all(m.impl == "eager" for m in ses)
    assert isinstance(body.layer1[0].bn1, torch.nn.BatchNorm2d) and body.layer1[0].conv1.weight.requires_grad
    assert not body.stem.conv1.weight.requires_grad  # FREEZE_AT 1: the stem only
    with pytest.raises(BackboneConfigError, match=r"MODEL\.RESNETS\.NORM='GN'"):
        _d2_backbone(_cfg(path, MODEL__RESNETS__NORM="GN"))
