"""Detection task: SE backbones in torchvision's Faster R-CNN + FPN, COCO evaluation."""
