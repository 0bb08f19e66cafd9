"""The trainer and its hooks on tiny models (no data sets, no subprocesses): order, periods, the LR schedule as a
hook, checkpoints only of finite states."""

import pytest
import torch
from torch import nn

from se_transfer.engine import Checkpointer, build_lr_scheduler
from se_transfer.engine.trainer import CheckpointHook, EvalHook, HookBase, LRSchedulerHook, NonFiniteLossError, Trainer


def _batches(start):
    g = torch.Generator().manual_seed(start)
    while True:
        x = torch.randn(4, 3, generator=g)
        yield x, x.sum(1, keepdim=True)


def _mse(model, batch):
    x, y = batch
    return {"loss": ((model(x) - y) ** 2).mean()}


def _trainer(max_iter=6, loss_fn=_mse, lr=0.1):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = build_lr_scheduler(opt, max_iter=max_iter, scheduler="multistep", steps=[3], gamma=0.1)
    return Trainer(model, opt, _batches, loss_fn, max_iter=max_iter), sched


class _Record(HookBase):
    def __init__(self, log):
        self.log = log

    def before_train(self):
        self.log.append("before")

    def after_step(self):
        self.log.append((self.trainer.iter, self.trainer.optimizer.param_groups[0]["lr"]))

    def after_train(self):
        self.log.append("after")


def test_hooks_run_in_order_and_the_lr_schedule_is_a_hook():
    trainer, sched = _trainer()
    log = []
    trainer.register_hooks([LRSchedulerHook(sched), None, _Record(log)])
    trainer.train()
    assert log[0] == "before" and log[-1] == "after" and trainer.iter == 6
    # the LR each hook sees after step i is the one of step i + 1: 0.1 for steps 1-3, 0.01 from step 4 on
    assert [round(lr, 6) for _, lr in log[1:-1]] == [0.1, 0.1, 0.01, 0.01, 0.01, 0.01]


def test_training_from_a_start_iteration_stops_at_stop_iter():
    trainer, sched = _trainer(max_iter=10)
    trainer.stop_iter = 7
    log = []
    trainer.register_hooks([LRSchedulerHook(sched), _Record(log)])
    trainer.train(start_iter=4)
    assert [i for i, _ in log[1:-1]] == [5, 6, 7]


def test_checkpoints_and_evaluations_come_at_their_periods(tmp_path):
    trainer, sched = _trainer(max_iter=6)
    ckpt = Checkpointer(tmp_path, trainer.model, optimizer=trainer.optimizer, scheduler=sched)
    evals = []
    trainer.register_hooks([LRSchedulerHook(sched), CheckpointHook(ckpt, 2),
                            EvalHook(4, lambda: evals.append(trainer.iter) or {"top1": 1.0}, None)])  # fmt: skip
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000002.pth", "model_0000004.pth", "model_final.pth",
    ]  # fmt: skip
    assert evals == [4, 6] and trainer.last_eval == {"top1": 1.0}
    saved = torch.load(tmp_path / "model_0000004.pth", weights_only=True)
    assert saved["iteration"] == 4 and saved["scheduler"]["last_epoch"] == 4


def test_a_nan_loss_stops_the_run_and_no_checkpoint_holds_it(tmp_path):
    def loss(model, batch):
        out = _mse(model, batch)
        if trainer.iter >= 3:  # the fourth step goes wrong
            out["loss"] = out["loss"] * float("nan")
        return out

    trainer, sched = _trainer(max_iter=8, loss_fn=loss)
    ckpt = Checkpointer(tmp_path, trainer.model, optimizer=trainer.optimizer, scheduler=sched)
    trainer.register_hooks([LRSchedulerHook(sched), CheckpointHook(ckpt, 2)])
    with pytest.raises(NonFiniteLossError, match="non-finite loss between iterations 3 and 4"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000002.pth"]
    assert isinstance(trainer.failed, NonFiniteLossError)


def test_the_task_says_which_parameters_are_its_head():
    from se_transfer.engine import build_optimizer

    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = build_optimizer(model, "SGD", 0.1, backbone_lr_multiplier=0.5, is_head=lambda n: n.startswith("1."))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    with pytest.raises(ValueError, match="does not say which parameters are its head"):
        build_optimizer(model, "SGD", 0.1, backbone_lr_multiplier=0.5)
