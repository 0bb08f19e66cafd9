#!/usr/bin/env python
"""Train or evaluate a model from a config (see se_transfer.cli.train_main and README.md)."""

import sys

from se_transfer.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
