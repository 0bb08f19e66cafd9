#!/usr/bin/env python
"""Accuracy of a trained SE classifier with the SE blocks of chosen stages switched off (gate = 1)."""

import sys

from se_transfer.cli import ablate_se_main

if __name__ == "__main__":
    sys.exit(ablate_se_main())
