"""Detection task: SE backbones in Faster R-CNN + FPN, torchvision's (on our engine) or detectron2's (on its engine,
optional), both built by ``backbone.py`` from one weights file; COCO evaluation with pycocotools."""
