"""A folder of images with one sub-folder per class (torchvision's ``ImageFolder`` layout) read as an evaluation
split, for the tools that look inside a trained model (``se_transfer.analysis``), e.g. ImageNet's validation images
sorted into their synset folders, read by an ImageNet-family model with its public weights.

Images are decoded as RGB, their shorter side resized to INPUT.RESIZE and centre-cropped to INPUT.CROP_SIZE; the
model normalises them as its weights expect. A label is the index of the image's folder in sorted order; it is the
model's class only when there is one folder per output in the model's order (ImageNet's synset folders, sorted, are
its standard class order), and only then is accuracy reported.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import CfgNode, config_key
from ..data.build import per_rank_batch
from ..data.common import DatasetError
from ..data.decode import read_rgb_image
from ..data.samplers import InferenceBatchSampler
from ..data.transforms import ClassificationTransform
from ..engine import get_rank, get_world_size
from ..models.weights import inspect_weights
from .model import EvalSetup, on_device, trained_classifier


def load_image_folder(folder: str | Path, cfg: CfgNode):  # noqa: ANN201 - a torchvision ImageFolder
    """The images under ``folder`` (``folder/<class>/<image>``), or a DatasetError naming the folder."""
    from torchvision.datasets import ImageFolder

    transform = ClassificationTransform(
        train=False, size=cfg.INPUT.CROP_SIZE, resize=cfg.INPUT.RESIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    if not Path(folder).is_dir():
        raise DatasetError(f"--image-folder {folder}: no such folder (expected {folder}/<class>/<image>.jpg)")
    try:
        return ImageFolder(str(folder), loader=read_rgb_image, transform=transform)
    except (FileNotFoundError, OSError) as e:
        raise DatasetError(f"--image-folder {folder}: {e} (expected {folder}/<class>/<image>.jpg)") from None


def eval_setup(cfg: CfgNode, device: torch.device, folder: str | Path) -> EvalSetup:
    """MODEL.ARCH with MODEL.WEIGHTS (its classes read off the file unless MODEL.NUM_CLASSES says) and this rank's
    share of the images under ``folder``."""
    dataset = load_image_folder(folder, cfg)
    with config_key("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS):
        num_classes = cfg.MODEL.NUM_CLASSES or inspect_weights(cfg.MODEL.WEIGHTS).num_classes
    model = trained_classifier(cfg, num_classes, device, normalize_input=True)
    world = get_world_size()
    sampler = InferenceBatchSampler(
        len(dataset), per_rank_batch("TEST.IMS_PER_BATCH", cfg.TEST.IMS_PER_BATCH, world), get_rank(), world
    )
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS)

    scored = len(dataset.classes) == num_classes
    batches = functools.partial(on_device, loader, device)
    return EvalSetup(model, batches, len(loader), sampler.batch_size, dataset.classes, None, scored)
