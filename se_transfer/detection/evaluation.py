"""COCO box evaluation with pycocotools: a JSON-level function, a distributed evaluator and the ``eval_coco`` CLI.

Numbers are reported in percent (pycocotools' stats times 100), as detectron2 and the SENet paper's Table 8 do.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..engine.distributed import all_gather_object, is_main_process
from ..engine.events import format_table
from ..io import atomic_write_text

logger = logging.getLogger("se_transfer.detection")

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
TABLE_STAT_NAMES = COCO_STAT_NAMES[:6]
RESULTS_FILE = Path("inference") / "coco_instances_results.json"

PathLike = str | os.PathLike


def _snippet(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path: PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from e


def load_coco_gt(path: PathLike) -> COCO:
    """A pycocotools COCO object for a ground-truth annotation file, with clear errors for missing or bad files."""
    data = _read_json(path, "ground-truth")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"ground-truth file {path} is not a COCO annotation file: it lacks {missing}")
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_detection(det: Any) -> str | None:
    """Why ``det`` is not a COCO box result, or None when it is one."""
    if not isinstance(det, Mapping):
        return "not an object"
    missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
    if missing:
        return f"missing {missing}"
    if not _is_int(det["image_id"]):
        return "image_id is not an integer"
    if not _is_int(det["category_id"]):
        return "category_id is not an integer"
    bbox = det["bbox"]
    if not isinstance(bbox, Sequence | np.ndarray) or isinstance(bbox, str) or len(bbox) != 4:
        return "bbox is not 4 finite numbers [x, y, width, height]"
    if not all(map(_is_number, bbox)):
        return "bbox is not 4 finite numbers [x, y, width, height]"
    if bbox[2] < 0 or bbox[3] < 0:
        return "bbox has a negative width or height"
    if not _is_number(det["score"]):
        return "score is not a finite number"
    return None


def load_detections(dets: Sequence[Mapping[str, Any]] | PathLike) -> list[dict[str, Any]]:
    """Validated copies of COCO box results {image_id, category_id, bbox (xywh), score}, from a list or a JSON file."""
    if isinstance(dets, (str, os.PathLike)):
        source = f"detections file {dets}"
        dets = _read_json(dets, "detections")
    else:
        source = "detections list"
    if not isinstance(dets, list | tuple):
        raise ValueError(f"{source} is not a JSON list of {{image_id, category_id, bbox, score}} objects")
    out = []
    for i, det in enumerate(dets):
        reason = _check_detection(det)
        if reason is not None:
            raise ValueError(f"{source}: entry {i} is not a COCO box result ({reason}): {_snippet(det)}")
        out.append(
            {
                "image_id": int(det["image_id"]),
                "category_id": int(det["category_id"]),
                "bbox": [float(v) for v in det["bbox"]],
                "score": float(det["score"]),
            }
        )
    return out


def _zero_stats() -> dict[str, float]:
    return dict.fromkeys(COCO_STAT_NAMES, 0.0)


def evaluate_coco_json(
    gt: COCO | PathLike,
    dets: Sequence[Mapping[str, Any]] | PathLike,
    img_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """The 12 COCO box stats in percent of detections against ground truth (prints pycocotools' summary).

    ``img_ids`` restricts the evaluation to those images (default: every ground-truth image). An empty detection
    list gives 0.0 for every stat (with a warning), since pycocotools cannot load one; a stat pycocotools cannot
    compute (-1: no ground truth in that area range) is NaN. Detections on images absent from the ground truth
    raise ValueError.
    """
    coco_gt = gt if isinstance(gt, COCO) else load_coco_gt(gt)
    results = load_detections(dets)
    gt_img_ids = set(coco_gt.getImgIds())
    unknown = sorted({d["image_id"] for d in results} - gt_img_ids)
    if unknown:
        raise ValueError(
            f"{len(unknown)} image id(s) of the detections are not in the ground truth, e.g. image_id={unknown[0]}"
        )
    if img_ids is not None:
        img_ids = sorted({int(i) for i in img_ids})
        unknown = [i for i in img_ids if i not in gt_img_ids]
        if unknown:
            raise ValueError(f"image id {unknown[0]} to evaluate is not in the ground truth")
    gt_cat_ids = set(coco_gt.getCatIds())
    stray = sorted({d["category_id"] for d in results} - gt_cat_ids)
    if stray:
        logger.warning(
            "%d detection category id(s) are not ground-truth categories and are ignored, e.g. %d "
            "(contiguous labels instead of COCO category ids?)",
            len(stray),
            stray[0],
        )
    if not results or img_ids == []:
        logger.warning("no detections to evaluate: every COCO stat is reported as 0.0")
        return _zero_stats()

    coco_dt = coco_gt.loadRes(results)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return {name: float(v) * 100.0 if v >= 0 else float("nan") for name, v in zip(COCO_STAT_NAMES, coco_eval.stats)}


def _write_json_atomic(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj))


class COCOEvaluator:
    """Collects torchvision detection outputs as COCO results, gathers them over ranks and evaluates on rank 0."""

    def __init__(
        self, coco_gt: COCO | PathLike, contiguous_to_coco: Mapping[int, int], output_dir: PathLike | None = None
    ) -> None:
        self.coco_gt = coco_gt if isinstance(coco_gt, COCO) else load_coco_gt(coco_gt)
        self.contiguous_to_coco = {int(k): int(v) for k, v in contiguous_to_coco.items()}
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._predictions: dict[int, list[dict[str, Any]]] = {}

    @property
    def results_path(self) -> Path | None:
        """Where ``evaluate`` writes the gathered results (None without an output directory)."""
        return self.output_dir / RESULTS_FILE if self.output_dir is not None else None

    def reset(self) -> None:
        """Forget every processed image."""
        self._predictions = {}

    def process(self, targets_or_image_ids: Sequence[Any], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch: targets (dicts with 'image_id') or image ids, and outputs with xyxy boxes, scores, labels."""
        if len(targets_or_image_ids) != len(outputs):
            raise ValueError(f"{len(targets_or_image_ids)} targets/image ids but {len(outputs)} outputs")
        for target, output in zip(targets_or_image_ids, outputs):
            image_id = int(target["image_id"] if isinstance(target, Mapping) else target)
            boxes = torch.as_tensor(output["boxes"]).detach().to("cpu", torch.float32).reshape(-1, 4)
            scores = torch.as_tensor(output["scores"]).detach().to("cpu", torch.float32).reshape(-1)
            labels = torch.as_tensor(output["labels"]).detach().to("cpu", torch.int64).reshape(-1)
            if not len(boxes) == len(scores) == len(labels):
                raise ValueError(
                    f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels differ"
                )
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
            results = []
            for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
                if label not in self.contiguous_to_coco:
                    raise ValueError(f"image {image_id}: label {label} has no COCO category id in contiguous_to_coco")
                results.append(
                    {"image_id": image_id, "category_id": self.contiguous_to_coco[label], "bbox": box, "score": score}
                )
            self._predictions.setdefault(image_id, results)

    def evaluate(self) -> dict[str, float]:
        """Gather every rank's results; on the main process write the results JSON and return the stats, else {}."""
        gathered = all_gather_object(self._predictions)
        if not is_main_process():
            return {}
        merged: dict[int, list[dict[str, Any]]] = {}
        for part in gathered:  # an image seen twice (a padded distributed sampler) counts once
            for image_id, results in part.items():
                merged.setdefault(image_id, results)
        results = [r for image_id in sorted(merged) for r in merged[image_id]]
        if self.results_path is not None:
            _write_json_atomic(results, self.results_path)
            logger.info("wrote %d detections on %d images to %s", len(results), len(merged), self.results_path)
        if not merged:
            logger.warning("COCOEvaluator.evaluate called before any image was processed")
            return _zero_stats()
        return evaluate_coco_json(self.coco_gt, results, img_ids=merged.keys())


def _fmt(v: Any, digits: int) -> str:
    return f"{v:.{digits}f}" if _is_number(v) else "-"


def format_results_table(
    stats: Mapping[str, float], paper: Mapping[str, float] | None = None, name: str = "ours"
) -> str:
    """A table of AP, AP50, AP75, APs, APm, APl (percent), with a 'paper' row when paper numbers are given."""
    rows = [[name, *(_fmt(stats.get(k), 2) for k in TABLE_STAT_NAMES)]]
    if paper is not None:
        rows.append(["paper", *(_fmt(paper.get(k), 1) for k in TABLE_STAT_NAMES)])
    return format_table(["", *TABLE_STAT_NAMES], rows)


def eval_coco_command(args: Any) -> int:
    """The body of tools/eval_coco.py on its parsed arguments (see se_transfer.cli.tools)."""
    coco_gt = load_coco_gt(args.gt)
    dets = load_detections(args.dets)
    stats = evaluate_coco_json(coco_gt, dets)
    print()
    print(format_results_table(stats))
    if args.json:
        print(json.dumps({k: (None if math.isnan(stats[k]) else stats[k]) for k in TABLE_STAT_NAMES}))
    return 0
