#!/usr/bin/env python
"""Places365 input-pipeline images/s per worker count vs. a model's training step (see se_transfer.classification)."""

import sys

from se_transfer.cli import benchmark_places_main

if __name__ == "__main__":
    sys.exit(benchmark_places_main())
