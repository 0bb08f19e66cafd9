"""se_transfer: Squeeze-and-Excitation backbones transferred to COCO detection, Places365 and CIFAR."""

__version__ = "0.1.0"
