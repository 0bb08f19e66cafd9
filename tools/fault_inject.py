#!/usr/bin/env python
"""kill -9 short training runs at random moments, resume them, and compare with uninterrupted runs (see README)."""

import sys

from se_transfer.cli import fault_inject_main

if __name__ == "__main__":
    sys.exit(fault_inject_main())
