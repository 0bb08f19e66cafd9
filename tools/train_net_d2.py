#!/usr/bin/env python
"""Train or evaluate Faster R-CNN + FPN on an SE backbone with detectron2's own engine (needs detectron2).

detectron2's tools/train_net.py contract: --config-file, --resume, --eval-only, --num-gpus, --num-machines,
--machine-rank, --dist-url, and trailing KEY VALUE overrides. See README, "detectron2".
"""

import sys

from se_transfer.detection.d2_train import train_net_d2_main

if __name__ == "__main__":
    sys.exit(train_net_d2_main())
