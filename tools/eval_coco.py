#!/usr/bin/env python
"""Evaluate a COCO box results JSON against ground truth with pycocotools; print the 12 stats and an AP table."""

import sys

from se_transfer.cli import eval_coco_main

if __name__ == "__main__":
    sys.exit(eval_coco_main())
