#!/usr/bin/env python
"""CIFAR training images/s of models side by side (see se_transfer.classification.benchmark)."""

import sys

from se_transfer.cli import benchmark_cifar_main

if __name__ == "__main__":
    sys.exit(benchmark_cifar_main())
