import math
import os

import pytest
import torch

from se_transfer.engine import Checkpointer, atomic_torch_save, build_lr_scheduler, lr_factor


def test_multistep_with_warmup():
    kw = dict(max_iter=100, scheduler="multistep", steps=[50, 80], gamma=0.1, warmup_iters=10, warmup_factor=0.1)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(5, **kw) == pytest.approx(0.55)
    assert lr_factor(10, **kw) == 1.0 and lr_factor(49, **kw) == 1.0
    assert lr_factor(50, **kw) == pytest.approx(0.1) and lr_factor(80, **kw) == pytest.approx(0.01)


def test_cosine_and_scheduler_object():
    assert lr_factor(50, max_iter=100, scheduler="cosine") == pytest.approx(0.5)
    assert lr_factor(100, max_iter=100, scheduler="cosine") == pytest.approx(0.0)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = build_lr_scheduler(opt, max_iter=10, scheduler="cosine")
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[5] == pytest.approx(0.1)
    assert lrs[3] == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.3)))
    with pytest.raises(ValueError, match="LR_SCHEDULER"):
        lr_factor(0, max_iter=1, scheduler="poly")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "model_final.pth"
    atomic_torch_save({"w": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"w": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no temporary file left behind


def test_checkpointer_round_trip_restores_everything(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = build_lr_scheduler(opt, max_iter=10, scheduler="multistep", steps=[2])
    for _ in range(3):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    ck = Checkpointer(tmp_path, model, optimizer=opt, scheduler=sched)
    ck.save("model_0000003", 3)
    expected_next = torch.rand(3)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"

    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = build_lr_scheduler(opt2, max_iter=10, scheduler="multistep", steps=[2])
    assert Checkpointer(tmp_path, model2, optimizer=opt2, scheduler=sched2).resume() == 3
    assert torch.equal(model2.weight, model.weight)
    assert torch.equal(
        opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"]
    )
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.01)
    assert torch.equal(torch.rand(3), expected_next)  # the RNG continues where the saved run was


def test_resume_without_checkpoint_and_with_a_dangling_marker(tmp_path):
    model = torch.nn.Linear(1, 1)
    assert Checkpointer(tmp_path, model).resume() == 0
    (tmp_path / "last_checkpoint").write_text("model_0000100.pth")
    with pytest.raises(FileNotFoundError, match="model_0000100.pth"):
        Checkpointer(tmp_path, model).resume()


def test_linear_scaling_rule_is_applied_only_when_asked():
    from se_transfer.config import load_config
    from se_transfer.engine.setup import apply_linear_scaling

    opts = ["SOLVER.IMS_PER_BATCH", "16", "SOLVER.BASE_LR", "0.02", "SOLVER.MAX_ITER", "180000",
            "SOLVER.STEPS", "(120000, 160000)", "SOLVER.WARMUP_ITERS", "500"]  # fmt: skip
    cfg = load_config(None, opts)
    assert apply_linear_scaling(cfg, 2) is cfg  # no REFERENCE_WORLD_SIZE: nothing changes, silently by design
    scaled = apply_linear_scaling(load_config(None, opts + ["SOLVER.REFERENCE_WORLD_SIZE", "8"]), 2)
    s = scaled.SOLVER
    assert (s.IMS_PER_BATCH, s.MAX_ITER, s.STEPS, s.WARMUP_ITERS) == (4, 720000, (480000, 640000), 2000)
    assert s.BASE_LR == pytest.approx(0.005)
    with pytest.raises(ValueError, match="whole number"):
        apply_linear_scaling(load_config(None, opts + ["SOLVER.REFERENCE_WORLD_SIZE", "3"]), 2)
