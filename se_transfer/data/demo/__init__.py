"""Writers of small generated data sets in the official on-disk formats, for demos and tests."""

from .cifar import write_fake_cifar
from .coco import write_demo_coco
from .places365 import write_fake_places365

__all__ = ["write_demo_coco", "write_fake_cifar", "write_fake_places365"]
