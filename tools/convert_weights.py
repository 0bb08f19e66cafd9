#!/usr/bin/env python
"""Convert weights of any known layout to se_transfer's format or detectron2's (see se_transfer.cli)."""

import sys

from se_transfer.cli import convert_weights_main

if __name__ == "__main__":
    sys.exit(convert_weights_main())
