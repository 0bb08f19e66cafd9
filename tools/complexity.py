#!/usr/bin/env python
"""Parameters and multiply-adds of se_transfer models (see se_transfer.cli.complexity_main)."""

import sys

from se_transfer.cli import complexity_main

if __name__ == "__main__":
    sys.exit(complexity_main())
