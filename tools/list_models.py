"""The registered models, filtered by family, name pattern and SE (see se_transfer.cli.tools.list_models_main)."""

import sys

from se_transfer.cli import list_models_main

if __name__ == "__main__":
    sys.exit(list_models_main())
