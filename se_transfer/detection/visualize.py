"""Pictures of detections: ground-truth boxes (green, dashed) and detections (red, 'name score'), with matplotlib."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import load_coco_gt, load_detections

logger = logging.getLogger("se_transfer.detection")

PathLike = str | os.PathLike
GT_COLOR = "#00e000"  # ground truth: bright green, dashed
DET_COLOR = "#ff1010"  # detections: red, solid


def _load_image(image: np.ndarray | PathLike) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image must be HxW or HxWx{{3,4}}, got shape {image.shape}")
    return image


def _as_boxes(boxes: Any) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4))
    if hasattr(boxes, "detach"):  # a torch tensor
        boxes = boxes.detach().cpu().numpy()
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _as_list(values: Any, n: int, what: str) -> list[Any]:
    if values is None:
        return [None] * n
    if hasattr(values, "detach"):
        values = values.detach().cpu().tolist()
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{n} boxes but {len(values)} {what}")
    return values


def draw_detections(
    image: np.ndarray | PathLike,
    gt_boxes: Any,
    gt_labels: Sequence[str] | None,
    det_boxes: Any,
    det_scores: Any,
    det_labels: Sequence[str] | None,
    out_path: PathLike,
    score_threshold: float = 0.5,
) -> Path:
    """Draw xyxy ground truth (green, dashed) and detections >= threshold (red) into a PNG of the image's size.

    Every line has a thin black outline, so boxes stay visible on light and dark images alike, and every label sits
    on an opaque box of its colour (white text), so it reads on any background."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patheffects as pe
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    img = _load_image(image)
    height, width = img.shape[:2]
    gt_boxes = _as_boxes(gt_boxes)
    gt_labels = _as_list(gt_labels, len(gt_boxes), "ground-truth labels")
    det_boxes = _as_boxes(det_boxes)
    det_scores = [float(s) for s in _as_list(det_scores, len(det_boxes), "detection scores")]
    det_labels = _as_list(det_labels, len(det_boxes), "detection labels")

    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    line_width = max(1.5, min(height, width) / 250)
    font_size = max(7.0, min(height, width) / 45)
    outline = [pe.Stroke(linewidth=line_width + 1.5, foreground="black"), pe.Normal()]

    for (x1, y1, x2, y2), name in zip(gt_boxes, gt_labels):
        box = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=GT_COLOR, linewidth=line_width, ls="--")
        box.set_path_effects(outline)
        ax.add_patch(box)
        if name is not None:
            ax.text(
                x1,
                y2,
                str(name),
                color="black",
                fontsize=font_size * 0.85,
                va="top" if y2 < height - font_size * 1.5 else "bottom",
                ha="left",
                clip_on=True,
                bbox={"facecolor": GT_COLOR, "edgecolor": "black", "linewidth": 0.5, "alpha": 0.9, "pad": 1},
            )

    order = np.argsort([-s for s in det_scores], kind="stable")
    for i in order[::-1]:  # the best detection is drawn last, on top
        score = det_scores[i]
        if score < score_threshold:
            continue
        x1, y1, x2, y2 = det_boxes[i]
        box = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=DET_COLOR, linewidth=line_width)
        box.set_path_effects(outline)
        ax.add_patch(box)
        text = f"{score:.2f}" if det_labels[i] is None else f"{det_labels[i]} {score:.2f}"
        ax.text(
            x1,
            y1,
            text,
            color="white",
            fontsize=font_size,
            va="bottom" if y1 > font_size * 1.5 else "top",
            ha="left",
            clip_on=True,
            bbox={"facecolor": DET_COLOR, "edgecolor": "black", "linewidth": 0.5, "alpha": 0.9, "pad": 1},
        )

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=dpi, format="png")
    plt.close(fig)
    return out_path


def visualize_coco(
    gt_json: PathLike,
    dets_json: PathLike | Sequence[dict[str, Any]],
    image_dir: PathLike,
    out_dir: PathLike,
    image_ids: Sequence[int] | None = None,
    max_images: int = 20,
    score_threshold: float = 0.5,
) -> list[Path]:
    """Draw ground truth and detections of COCO images (the first ``max_images`` of ``image_ids`` or of the GT)."""
    coco = load_coco_gt(gt_json)
    dets = load_detections(dets_json)
    names = {c["id"]: c.get("name", str(c["id"])) for c in coco.dataset["categories"]}
    if image_ids is None:
        image_ids = sorted(coco.getImgIds())
    else:
        unknown = [i for i in image_ids if i not in coco.imgs]
        if unknown:
            raise ValueError(f"image id {unknown[0]} is not in the ground truth {gt_json}")
    image_ids = list(image_ids)[: max(0, max_images)]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)

    written = []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        path = Path(image_dir) / info["file_name"]
        if not path.is_file():
            logger.warning("image %d: file %s not found, skipped", image_id, path)
            continue
        anns = coco.imgToAnns.get(image_id, [])
        gt_boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        gt_labels = [names.get(a["category_id"], str(a["category_id"])) for a in anns]
        image_dets = by_image.get(image_id, [])
        det_boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in image_dets)]
        det_scores = [d["score"] for d in image_dets]
        det_labels = [names.get(d["category_id"], str(d["category_id"])) for d in image_dets]
        out_path = Path(out_dir) / f"{Path(info['file_name']).stem}.png"
        written.append(
            draw_detections(
                path, gt_boxes, gt_labels, det_boxes, det_scores, det_labels, out_path, score_threshold=score_threshold
            )
        )
    return written


def visualize_command(args: Any) -> int:
    """The body of tools/visualize_coco.py on its parsed arguments (see se_transfer.cli.tools)."""
    if not Path(args.image_dir).is_dir():
        raise FileNotFoundError(f"--image-dir: image folder not found: {args.image_dir}")
    written = visualize_coco(
        args.gt,
        args.dets,
        args.image_dir,
        args.out,
        image_ids=args.image_ids,
        max_images=args.max_images,
        score_threshold=args.score_threshold,
    )
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0
