#!/usr/bin/env python
"""Train a baseline and its SE twin with the same seed and recipe; print their errors beside the paper's."""

import sys

from se_transfer.cli import compare_main

if __name__ == "__main__":
    sys.exit(compare_main())
