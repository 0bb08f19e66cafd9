#!/usr/bin/env python
"""Images/s of a model beside its baseline, side by side in one process (see se_transfer.benchmark)."""

import sys

from se_transfer.cli import benchmark_main

if __name__ == "__main__":
    sys.exit(benchmark_main())
