"""One resumable iterator for every loader: resumed at iteration N it yields what a full run yields after N."""

import pytest
import torch
from torch.utils.data import Dataset

from se_transfer.data import CifarLoader, build_detection_loader, load_cifar, resumable_batches, write_fake_cifar


class _Boxes(Dataset):
    """Item i is (its index as an image, a target naming it); a third of the images are portrait."""

    def __len__(self):
        return 17

    def aspect_ratios(self):
        return [0.5 if i % 3 == 0 else 2.0 for i in range(17)]

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), {"image_id": int(i)}


def _ids(batch):
    return [t["image_id"] for t in batch[1]]


@pytest.mark.parametrize("start", [0, 1, 4, 5, 11])
def test_detection_batches_resume_at_any_iteration(start):
    def loader():
        return build_detection_loader(_Boxes(), 2, train=True, num_workers=0, seed=3, rank=0, world_size=1)

    full = resumable_batches(loader())
    expected = [_ids(next(full)) for _ in range(14)]
    assert len({tuple(b) for b in expected[:7]}) == 7  # different batches within an epoch
    resumed = resumable_batches(loader(), start)
    assert [_ids(next(resumed)) for _ in range(14 - start)] == expected[start:]


def test_cifar_batches_resume_at_any_iteration(tmp_path):
    write_fake_cifar(tmp_path, "cifar10", num_train=40, num_test=10)
    data = load_cifar(tmp_path, "cifar10", "train")

    def loader():
        return CifarLoader(data, 16, True, seed=2)

    full = resumable_batches(loader())
    expected = [next(full)[1].tolist() for _ in range(5)]
    for start in (1, 2, 3):
        resumed = resumable_batches(loader(), start)
        assert [next(resumed)[1].tolist() for _ in range(5 - start)] == expected[start:]
    with pytest.raises(ValueError, match="start_iter must be >= 0"):
        next(resumable_batches(loader(), -1))


def test_workers_stopped_after_ends_persistent_workers_at_once():
    import time

    from se_transfer.data.build import build_classification_loader, workers_stopped_after

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), i % 2

    loader = build_classification_loader(Images(), 4, True, num_workers=2, seed=0)
    with workers_stopped_after(loader):
        batches = resumable_batches(loader, 0)
        for _ in range(3):  # mid-epoch, as a run that ends at MAX_ITER: the workers are still prefetching
            next(batches)
        workers = list(loader._iterator._workers)
        assert all(w.is_alive() for w in workers)
        start = time.perf_counter()
    assert time.perf_counter() - start < 4  # a worker waited for would take 5 s
    assert not any(w.is_alive() for w in workers) and loader._iterator is None
