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
