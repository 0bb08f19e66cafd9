#!/usr/bin/env python
"""Excitation statistics and plots (the SENet paper's Fig. 6) of a trained SE classifier."""

import sys

from se_transfer.cli import analyze_excitation_main

if __name__ == "__main__":
    sys.exit(analyze_excitation_main())
