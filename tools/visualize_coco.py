#!/usr/bin/env python
"""Draw ground-truth boxes (green) and detections (red) of COCO images into PNG files."""

import sys

from se_transfer.cli import visualize_main

if __name__ == "__main__":
    sys.exit(visualize_main())
