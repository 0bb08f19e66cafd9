import pytest

from se_transfer.config import ConfigError, get_cfg, load_config

ROOT_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def test_every_default_key_is_documented():
    text = (ROOT_CONFIGS.parent / "se_transfer" / "config" / "defaults.py").read_text().splitlines()
    for i, line in enumerate(text):
        if line.startswith("_C.") and " = " in line and "CN(" not in line:
            above = text[i - 1].strip()
            assert above.startswith("#") or text[i - 1].startswith("_C."), f"undocumented key: {line}"


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n  STEPS: [10, 20]\nSEED: 3\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.2\nMODEL:\n  ARCH: resnet110\n")
    cfg = load_config(
        tmp_path / "child.yaml", ["SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(5, 7)", "MODEL.KWARGS.reduction", "8"]
    )
    assert cfg.SOLVER.BASE_LR == 0.2 and cfg.SEED == 3 and cfg.MODEL.ARCH == "resnet110"
    assert cfg.SOLVER.MAX_ITER == 100 and cfg.SOLVER.STEPS == (5, 7) and cfg.MODEL.KWARGS.reduction == 8
    assert cfg.is_frozen()
    assert get_cfg().SOLVER.BASE_LR == 0.1  # defaults untouched


@pytest.mark.parametrize(
    "yaml_text,opts,match",
    [
        ("SOLVER:\n  BASE_LRR: 0.1\n", [], "unknown config key 'SOLVER.BASE_LRR'; did you mean SOLVER.BASE_LR"),
        ("", ["SOLVER.BASE_LRR", "0.1"], "unknown config key 'SOLVER.BASE_LRR'"),
        ("", ["MODLE.ARCH", "x"], "unknown config key 'MODLE.ARCH'; did you mean MODEL.ARCH"),
        ("", ["SOLVER.MAX_ITER", "ten"], "SOLVER.MAX_ITER must be of type int"),
        ("SOLVER: 3\n", [], "SOLVER is a group of keys"),
        ("", ["SOLVER.MAX_ITER"], "KEY VALUE pairs"),
        ("[1, 2]\n", [], "must be a mapping"),
        ("_BASE_: missing.yaml\n", [], "config file not found"),
    ],
)
def test_bad_configs_are_named_errors(tmp_path, yaml_text, opts, match):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_config(f, opts)


def test_yaml_is_loaded_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("SEED: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_shipped_cifar_configs_load_with_their_recipes():
    configs = sorted((ROOT_CONFIGS / "cifar").glob("[!_]*.yaml"))
    assert len(configs) == 16
    for f in configs:
        cfg = load_config(f)
        assert f.stem.startswith(cfg.MODEL.ARCH) and f.stem.endswith(cfg.DATA.DATASET)
    r110 = load_config(ROOT_CONFIGS / "cifar" / "se_resnet110_cifar10.yaml")
    assert (r110.SOLVER.BASE_LR, r110.SOLVER.WEIGHT_DECAY, r110.SOLVER.EPOCHS, r110.SOLVER.STEPS) == (
        0.1,
        1e-4,
        164,
        (81, 122),
    )
    wrn = load_config(ROOT_CONFIGS / "cifar" / "wrn16_8_cifar100.yaml")
    assert wrn.SOLVER.NESTEROV and wrn.SOLVER.GAMMA == 0.2 and wrn.SOLVER.STEPS == (60, 120, 160)
    se = load_config(ROOT_CONFIGS / "cifar" / "se_shake_even29_2x4x64d_cifar100.yaml")
    assert (se.SOLVER.IMS_PER_BATCH, se.SOLVER.BASE_LR, se.DATA.CUTOUT, se.SOLVER.LR_SCHEDULER) == (
        32,
        0.025,
        8,
        "cosine",
    )


def test_shipped_coco_configs_hold_the_detectron_2x_schedule():
    names = ["resnet50", "se_resnet50", "resnet101", "se_resnet101"]
    for name in names:
        cfg = load_config(ROOT_CONFIGS / "coco" / f"faster_rcnn_{name}_fpn_2x.yaml")
        s = cfg.SOLVER
        assert cfg.TASK == "detection" and cfg.MODEL.ARCH == name and cfg.MODEL.WEIGHTS == ""
        assert (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, s.STEPS) == (16, 0.02, 180000, (120000, 160000))
        assert (s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WEIGHT_DECAY, s.MOMENTUM) == (500, pytest.approx(1 / 3), 1e-4, 0.9)
        assert (cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST) == ((800,), 1333, 800)
        assert cfg.DATASETS.TRAIN == ("coco_2014_train", "coco_2014_valminusminival")
        assert cfg.DATASETS.TEST == ("coco_2014_minival",)
        assert (cfg.MODEL.BACKBONE.FREEZE_AT, cfg.MODEL.BACKBONE.NORM) == (2, "FrozenBN")
        one_x = load_config(ROOT_CONFIGS / "coco" / f"faster_rcnn_{name}_fpn_1x.yaml")
        assert (one_x.SOLVER.MAX_ITER, one_x.SOLVER.STEPS) == (90000, (60000, 80000))


def test_shipped_places365_configs():
    for name in ("resnet152", "se_resnet152"):
        ft = load_config(ROOT_CONFIGS / "places365" / f"{name}_finetune.yaml")
        assert (ft.MODEL.ARCH, ft.DATA.DATASET, ft.MODEL.WEIGHTS, ft.DATA.TRAIN_SPLIT) == (
            name,
            "places365",
            "",
            "train-standard",
        )
        assert ft.SOLVER.BACKBONE_LR_MULTIPLIER < 1.0
        sc = load_config(ROOT_CONFIGS / "places365" / f"{name}_scratch_challenge.yaml")
        assert (sc.DATA.TRAIN_SPLIT, sc.SOLVER.BASE_LR, sc.SOLVER.IMS_PER_BATCH, sc.SOLVER.STEPS) == (
            "train-challenge",
            0.6,
            1024,
            (30, 60, 90),
        )


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: gone_base.yaml\nSEED: 1\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone_base\.yaml \(the _BASE_ of .*child\.yaml\)"):
        load_config(str(child), [])
