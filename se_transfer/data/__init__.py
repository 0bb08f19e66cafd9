"""Data sets in their official on-disk layouts (CIFAR-10/100 pickles, COCO json + images, Places365 file lists), their
loaders and samplers (resumable, per-sample seeded augmentation), and writers of small generated sets in the same
formats for demos and tests."""

from .build import (
    benchmark_input_pipeline,
    build_classification_loader,
    build_detection_loader,
    collate_detection,
    per_rank_batch,
    resumable_batches,
)
from .catalog import COCO_2014_TRAIN_PAIR, COCO_DATASETS, resolve_coco_dataset, resolve_coco_datasets
from .cifar import CIFAR_MEAN, CIFAR_STD, CifarData, CifarInput, CifarLoader, load_cifar
from .coco import CocoDetection
from .common import DatasetError
from .decode import read_rgb_image, read_rgb_tensor
from .demo import write_demo_coco, write_fake_cifar, write_fake_places365
from .places365 import PLACES365_NUM_CLASSES, PLACES365_SPLITS, Places365, read_places365_categories
from .samplers import AspectRatioGroupedBatchSampler, InferenceBatchSampler, ResumableDistributedSampler
from .transforms import (
    ClassificationTransform,
    CropFlipParams,
    CutoutParams,
    DetectionTransform,
    apply_crop_flip,
    apply_cutout,
    cutout,
    normalize,
    random_crop_flip,
    resize_shortest_edge_size,
    sample_crop_flip,
    sample_cutout,
)

__all__ = [
    "COCO_2014_TRAIN_PAIR",
    "COCO_DATASETS",
    "AspectRatioGroupedBatchSampler",
    "CocoDetection",
    "DetectionTransform",
    "InferenceBatchSampler",
    "build_detection_loader",
    "collate_detection",
    "per_rank_batch",
    "resumable_batches",
    "read_rgb_image",
    "resolve_coco_dataset",
    "resolve_coco_datasets",
    "write_demo_coco",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CifarData",
    "CifarInput",
    "CifarLoader",
    "CropFlipParams",
    "CutoutParams",
    "DatasetError",
    "apply_crop_flip",
    "apply_cutout",
    "cutout",
    "load_cifar",
    "normalize",
    "random_crop_flip",
    "resize_shortest_edge_size",
    "sample_crop_flip",
    "sample_cutout",
    "write_fake_cifar",
    "PLACES365_NUM_CLASSES",
    "PLACES365_SPLITS",
    "ClassificationTransform",
    "Places365",
    "ResumableDistributedSampler",
    "benchmark_input_pipeline",
    "build_classification_loader",
    "read_places365_categories",
    "read_rgb_tensor",
    "write_fake_places365",
]
