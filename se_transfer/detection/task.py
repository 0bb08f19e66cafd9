"""COCO detection: backbone -> FPN -> Faster R-CNN, trained with the engine, evaluated with pycocotools."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import CfgNode, ConfigError, config_key
from ..data.build import build_detection_loader, per_rank_batch, resumable_batches, workers_stopped_after
from ..data.catalog import resolve_coco_datasets
from ..data.coco import CocoDetection
from ..data.demo import write_demo_coco
from ..data.transforms import DetectionTransform
from ..engine import default_setup, get_rank, get_world_size, is_main_process
from ..engine.distributed import synchronize
from ..engine.events import progress
from ..engine.runner import CheckpointContent, Schedule, TrainingTask, evaluate_only, run_training
from ..engine.summary import print_summary, summary_rows
from ..models.weights import check_fit, checkpoint_metadata
from .backbone import BACKBONE_META_KEY
from .evaluation import COCOEvaluator, format_results_table
from .model import build_faster_rcnn

logger = logging.getLogger(__name__)

# Paper Table 7 (Faster R-CNN + FPN, Detectron 2x schedule, COCO minival), by backbone.
PAPER_AP = {
    "resnet50": {"AP50": 57.9, "AP": 38.0},
    "se_resnet50": {"AP50": 61.0, "AP": 40.4},
    "resnet101": {"AP50": 60.1, "AP": 39.9},
    "se_resnet101": {"AP50": 62.7, "AP": 41.9},
}


def _datasets(cfg: CfgNode, names: tuple[str, ...], train: bool) -> CocoDetection:
    root = Path(cfg.DATA.ROOT)
    if cfg.DATA.GENERATE_DEMO and is_main_process() and not (root / "annotations").is_dir():
        logger.info("DATA.GENERATE_DEMO: writing a generated COCO-format shapes set to %s", root)
        write_demo_coco(root, seed=cfg.SEED)
    synchronize()
    with config_key("DATA.ROOT", root):
        entries = resolve_coco_datasets(root, names)
    if len(entries) != 1:
        raise ValueError(
            f"DATASETS.{'TRAIN' if train else 'TEST'}: one data set (or the minival pair) is supported, got {names}"
        )
    image_dir, ann_file = entries[0]
    i = cfg.INPUT
    transform = DetectionTransform(
        min_sizes=tuple(i.MIN_SIZE_TRAIN) if train else (i.MIN_SIZE_TEST,),
        max_size=i.MAX_SIZE_TRAIN if train else i.MAX_SIZE_TEST,
        flip_prob=i.FLIP_PROB if train else 0.0,
        train=train,
    )
    with config_key("DATA.ROOT", root):
        return CocoDetection(
            image_dir,
            ann_file,
            transforms=transform,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS if train else False,
            skip_missing=cfg.DATALOADER.SKIP_MISSING_IMAGES,
        )


def build_model(cfg: CfgNode, num_classes: int) -> nn.Module:
    """Faster R-CNN + FPN on MODEL.ARCH as the config says."""
    m, i = cfg.MODEL, cfg.INPUT
    return build_faster_rcnn(
        m.ARCH,
        num_classes=m.NUM_CLASSES or num_classes,
        weights=m.WEIGHTS or None,
        freeze_at=m.BACKBONE.FREEZE_AT,
        norm=m.BACKBONE.NORM,
        fpn_channels=m.FPN.OUT_CHANNELS,
        # the data pipeline resizes (INPUT.*); the model only normalises and batches
        min_size=i.MIN_SIZE_TEST,
        max_size=i.MAX_SIZE_TEST,
        resize_inputs=False,
        backbone_kwargs=dict(m.KWARGS),
        se_impl=m.SE_IMPL,
        rpn_pre_nms_top_n_train=m.RPN.PRE_NMS_TOPK_TRAIN,
        rpn_post_nms_top_n_train=m.RPN.POST_NMS_TOPK_TRAIN,
        rpn_pre_nms_top_n_test=m.RPN.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_test=m.RPN.POST_NMS_TOPK_TEST,
        rpn_batch_size_per_image=m.RPN.BATCH_SIZE_PER_IMAGE,
        box_batch_size_per_image=m.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
        box_score_thresh=m.ROI_HEADS.SCORE_THRESH_TEST,
        box_nms_thresh=m.ROI_HEADS.NMS_THRESH_TEST,
        box_detections_per_img=m.ROI_HEADS.DETECTIONS_PER_IMAGE,
    )


def _to_device(batch: tuple[list, list], device: torch.device) -> tuple[list, list]:
    images, targets = batch
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    return images, targets


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, evaluator: COCOEvaluator, device: torch.device) -> dict[str, float]:
    """Detections for every test image (all processes), then COCO AP, AP50, ... in %."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    for batch in progress(loader, total=len(loader), desc="evaluating"):
        images, targets = _to_device(batch, device)
        outputs = model(images)
        # Boxes back to the original image size: the data pipeline resized the images before the model.
        for out, t, im in zip(outputs, targets, images):
            h0, w0 = (int(x) for x in t["orig_size"])
            sy, sx = h0 / im.shape[-2], w0 / im.shape[-1]
            out["boxes"] = out["boxes"] * torch.tensor([sx, sy, sx, sy], device=out["boxes"].device)
        evaluator.process(targets, [{k: v.cpu() for k, v in o.items()} for o in outputs])
    model.train(was_training)
    results = evaluator.evaluate()
    synchronize()
    return results


def run(
    cfg: CfgNode, eval_only: bool = False, resume: bool = False, allow_config_change: bool = False
) -> dict[str, Any]:
    """Train (or with ``eval_only`` just evaluate) Faster R-CNN as ``cfg`` says; return the final COCO metrics."""
    cfg, device = default_setup(cfg, resume and not eval_only, allow_config_change)
    test_set = _datasets(cfg, tuple(cfg.DATASETS.TEST), train=False)
    num_classes = len(test_set.class_names) - 1
    with config_key("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS):
        model = build_model(cfg, num_classes).to(device)
    world, rank = get_world_size(), get_rank()
    test_loader = build_detection_loader(
        test_set,
        per_rank_batch("TEST.IMS_PER_BATCH", cfg.TEST.IMS_PER_BATCH, world),
        False,
        cfg.DATALOADER.NUM_WORKERS,
        cfg.SEED,
        rank,
        world,
    )
    evaluator = COCOEvaluator(test_set.coco, test_set.contiguous_to_coco, cfg.OUTPUT_DIR)
    paper = PAPER_AP.get(cfg.MODEL.ARCH)

    if eval_only:
        if model.info.weights_source != "detector":
            raise ConfigError(
                f"--eval-only: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS or '(empty)'} holds no trained detector (backbone "
                "weights only, or none), so randomly initialised RPN and box heads would be evaluated; pass a "
                "detector checkpoint (OUTPUT_DIR/model_final.pth of a training run)"
            )
        with workers_stopped_after(test_loader):
            results = evaluate_only(cfg.OUTPUT_DIR, lambda: evaluate(model, test_loader, evaluator, device))
        _print_summary(cfg, test_set, results, paper, eval_only=True)
        return results

    train_set = _datasets(cfg, tuple(cfg.DATASETS.TRAIN), train=True)
    if train_set.contiguous_to_coco != test_set.contiguous_to_coco:
        raise ValueError("DATASETS.TRAIN and DATASETS.TEST have different category sets")
    if cfg.SOLVER.EPOCHS > 0:
        raise ValueError("detection schedules are in iterations: set SOLVER.MAX_ITER and SOLVER.STEPS, not EPOCHS")
    train_loader = build_detection_loader(
        train_set,
        per_rank_batch("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH, world),
        True,
        cfg.DATALOADER.NUM_WORKERS,
        cfg.SEED,
        rank,
        world,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
    )
    ipe = len(train_loader)

    def batches(start_iter: int) -> Iterator[tuple[list, list]]:
        for batch in resumable_batches(train_loader, start_iter):
            yield _to_device(batch, device)

    def loss_fn(m: nn.Module, batch: tuple[list, list]) -> dict[str, torch.Tensor]:
        images, targets = batch
        return m(images, targets)

    task = TrainingTask(
        batches,
        loss_fn,
        lambda: evaluate(model, test_loader, evaluator, device),
        # model_final.pth rebuilds the backbone the weights were trained as (eval-only, fine-tuning)
        checkpoint=CheckpointContent({BACKBONE_META_KEY: checkpoint_metadata(model.backbone.body)}, check_fit),
        # SOLVER.BACKBONE_LR_MULTIPLIER scales the ImageNet backbone; FPN, RPN and box head train at BASE_LR
        is_head=lambda name: not name.startswith("backbone.body."),
    )
    schedule = Schedule(cfg.SOLVER.MAX_ITER, cfg.SOLVER.MAX_ITER, list(cfg.SOLVER.STEPS), ipe)
    with workers_stopped_after(train_loader, test_loader):
        _, results = run_training(cfg, model, task, schedule, device, resume)
    _print_summary(cfg, test_set, results, paper, eval_only=False)
    return results


def _print_summary(
    cfg: CfgNode, test_set: CocoDetection, results: dict[str, Any], paper: dict | None, eval_only: bool
) -> None:
    if not is_main_process():
        return
    print(format_results_table({k: v for k, v in results.items() if isinstance(v, float)}, paper), flush=True)
    metrics = [("AP / AP50 / AP75 (%)", " / ".join(f"{results.get(k, float('nan')):.2f}" for k in ("AP", "AP50",
                "AP75")))]  # fmt: skip
    if paper:
        metrics.append(("paper AP / AP50 (%)", f"{paper['AP']:.1f} / {paper['AP50']:.1f} (Table 7, COCO minival)"))
    data = f"{', '.join(cfg.DATASETS.TEST)} ({len(test_set)} images)"
    files = [("detections", Path(cfg.OUTPUT_DIR).resolve() / "inference" / "coco_instances_results.json")]
    rows = summary_rows(cfg, results, data=data, metrics=metrics, files=files, eval_only=eval_only)
    print_summary(f"\nFaster R-CNN + FPN, {cfg.MODEL.ARCH} backbone", rows)
