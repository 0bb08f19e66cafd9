"""Pieces the data sets share: the loader generator's seed, and the colours of the generated (fake) data sets."""

from __future__ import annotations

import numpy as np
import torch

# Ten well-separated foreground colours (R, G, B) for generated images.
FAKE_COLOURS = np.array(
    [
        [230, 40, 40],
        [40, 200, 40],
        [50, 80, 240],
        [240, 220, 40],
        [220, 50, 220],
        [40, 220, 220],
        [250, 140, 20],
        [130, 60, 200],
        [240, 240, 240],
        [140, 100, 60],
    ],
    dtype=np.float32,
)


def loader_generator(seed: int, rank: int) -> torch.Generator:
    """A DataLoader generator seeded from (``seed``, ``rank``): a different stream per rank, the same on every run.

    The DataLoader draws each worker's base seed from it; torch then seeds the worker's torch, ``random`` and numpy
    generators from that, so augmentation in workers is reproducible without a ``worker_init_fn``.
    """
    generator = torch.Generator()
    generator.manual_seed(int(np.random.default_rng([seed, rank]).integers(0, 2**62)))
    return generator
