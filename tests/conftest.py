import logging
import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

if not torch.cuda.is_available():
    # Triton's interpreter runs the fused kernels (se_transfer.ops) on the CPU; it must be set before they are jitted.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_se_transfer_logger():
    """Each test starts without the handlers an earlier run's setup_logger left (their streams may be closed)."""
    yield
    root = logging.getLogger("se_transfer")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
