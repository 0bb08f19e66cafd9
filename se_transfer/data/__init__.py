"""Data sets and batched augmentations: CIFAR-10/100 reading, fake-data writing and a device-resident loader."""

from .cifar import CIFAR_MEAN, CIFAR_STD, CifarData, CifarLoader, DatasetError, load_cifar, write_fake_cifar
from .transforms import (
    CropFlipParams,
    CutoutParams,
    apply_crop_flip,
    apply_cutout,
    cutout,
    normalize,
    random_crop_flip,
    sample_crop_flip,
    sample_cutout,
)

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CifarData",
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
    "sample_crop_flip",
    "sample_cutout",
    "write_fake_cifar",
]
