"""One run per output folder: the OS lock, refusing to mix with an earlier run, stale temporaries, CHECKPOINT_KEEP."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from se_transfer.cli import train_main
from se_transfer.data.demo import write_fake_cifar
from se_transfer.engine.checkpoint import Checkpointer
from se_transfer.engine.output_dir import OutputDirError, claim_output_dir, remove_stale_temporaries

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10", num_train=256, num_test=100, seed=0)
    return root


def _train(root, out, *flags, **keys):
    opts = {
        "MODEL.DEVICE": "cpu", "MODEL.ARCH": "se_resnet20", "MODEL.KWARGS.depth": 8, "DATA.ROOT": str(root),
        "OUTPUT_DIR": str(out), "SOLVER.IMS_PER_BATCH": 64, "SOLVER.EPOCHS": 0, "SOLVER.MAX_ITER": 8,
        "SOLVER.CHECKPOINT_PERIOD": 2, "SOLVER.CHECKPOINT_KEEP": 2, "SOLVER.WARMUP_ITERS": 0, "TEST.IMS_PER_BATCH": 100,
        **keys,
    }  # fmt: skip
    argv = ["--config-file", str(REPO / "configs/cifar/se_resnet110_cifar10.yaml"), *flags]
    for k, v in opts.items():
        argv += [k, str(v)]
    return train_main(argv)


def _holder(folder):
    """A process that holds ``folder`` until killed; returns it once the lock is taken."""
    code = textwrap.dedent(f"""
        import sys, time
        from se_transfer.engine.output_dir import claim_output_dir
        with claim_output_dir({str(folder)!r}, training=False):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_folder_in_use_is_refused_and_the_lock_dies_with_its_process(cifar_root, tmp_path, capsys):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        assert _train(cifar_root, out) == 2
        err = capsys.readouterr().err
        assert f"OUTPUT_DIR {out} is in use by process {holder.pid}" in err and err.count("\n") == 1
        assert not (out / "metrics.jsonl").exists()  # nothing of the refused run was written
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    assert _train(cifar_root, out) == 0
    capsys.readouterr()


def test_a_new_run_on_a_finished_one_is_refused_unless_asked_to_start_over(cifar_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(cifar_root, out) == 0
    # SOLVER.CHECKPOINT_KEEP 2: of the periodic checkpoints at 2, 4 and 6 the newest two remain, and the final one
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000004.pth",
        "model_0000006.pth",
        "model_final.pth",
    ]
    first = (out / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert _train(cifar_root, out) == 2
    err = capsys.readouterr().err
    assert f"OUTPUT_DIR {out} holds an earlier run" in err and "--resume" in err and "--fresh" in err
    assert (out / "metrics.jsonl").read_text() == first  # refused before anything was touched

    assert _train(cifar_root, out, "--fresh", **{"SOLVER.MAX_ITER": 4}) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iteration"] for r in rows) == 4  # only the new run's rows
    assert not (out / "model_0000006.pth").exists()
    capsys.readouterr()

    # evaluation is not a new training run: it may use a folder that holds one
    weights = out / "model_final.pth"
    assert _train(cifar_root, out, "--eval-only", **{"MODEL.WEIGHTS": weights}) == 0


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model_0000004.pth.tmp{dead_pid}"
    live = tmp_path / f".last_checkpoint.tmp{os.getpid()}"
    keep = tmp_path / "model_0000004.pth"
    for p in (stale, live, keep):
        p.write_bytes(b"x")
    with claim_output_dir(tmp_path, training=False):
        pass
    assert not stale.exists() and live.exists() and keep.exists()
    assert remove_stale_temporaries(tmp_path) == []


def test_checkpoint_keep_never_deletes_what_last_checkpoint_names_or_the_final(tmp_path):
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path, model, keep=2)
    for i in range(1, 5):
        ck.save(f"model_{i:07d}", i)
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000003.pth", "model_0000004.pth"]
    ck.save("model_final", 5)
    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")  # e.g. a run resumed from an older checkpoint
    ck.keep = 1
    assert ck.prune() == []  # model_0000003 is named by last_checkpoint, model_0000004 is the newest
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    assert [p.name for p in ck.prune()] == ["model_0000003.pth"]
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000004.pth", "model_final.pth"]
    assert Checkpointer(tmp_path, model, keep=0).prune() == []


def test_an_output_dir_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputDirError, match=r"OUTPUT_DIR .*file/run: cannot be created or written"):
        with claim_output_dir(blocker / "run", training=True):
            pass


def test_resume_with_a_changed_config_is_refused_then_applied_when_meant(cifar_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(cifar_root, out, **{"SOLVER.BASE_LR": 0.1, "LOG_PERIOD": 1}) == 0
    capsys.readouterr()
    changed = {"SOLVER.BASE_LR": 0.05, "SOLVER.MAX_ITER": 12, "LOG_PERIOD": 1}
    assert _train(cifar_root, out, "--resume", **changed) == 2
    err = capsys.readouterr().err
    assert "--resume: the config differs from the one this run started with" in err
    assert "SOLVER.BASE_LR: 0.1 -> 0.05" in err and "SOLVER.MAX_ITER: 8 -> 12" in err and "--allow-config-change" in err
    # keys that only say where and how often (here LOG_PERIOD, TEST.*) may change without the flag
    assert _train(cifar_root, out, "--resume", **{"SOLVER.BASE_LR": 0.1, "TEST.IMS_PER_BATCH": 50}) == 0

    assert _train(cifar_root, out, "--resume", "--allow-config-change", **changed) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["iteration"]: r["lr"] for r in rows if "lr" in r}
    assert lrs[8] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.05) and lrs[12] == pytest.approx(0.05)
    from se_transfer.config import load_config

    ran = load_config(str(out / "config.yaml"), [])
    assert ran.SOLVER.BASE_LR == 0.05 and ran.SOLVER.MAX_ITER == 12  # config.yaml is the config that ran


def test_resume_errors_name_the_file_in_one_line(cifar_root, tmp_path, capsys):
    out, other = tmp_path / "run", tmp_path / "other"
    assert _train(cifar_root, out) == 0
    assert _train(cifar_root, other, **{"MODEL.KWARGS.depth": 14}) == 0
    capsys.readouterr()
    final = out / "model_final.pth"
    cases = [
        (b"", "the file is empty (0 bytes)"),
        (b": 101\n", "not a checkpoint written by torch.save (UnpicklingError"),
        (
            (other / "model_final.pth").read_bytes(),
            "does not fit the model this run builds: the file holds [2, 2, 2] "
            "blocks per stage with SE, the model this run builds has [1, 1, 1] blocks per stage with SE (unexpected "
            "tensors: ",
        ),
    ]
    for content, message in cases:
        final.write_bytes(content)
        assert _train(cifar_root, out, "--resume") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: cannot resume") and str(final) in err[0], err
        assert message in err[0], err
    assert "Traceback" in (out / "log.txt").read_text()  # the traceback went to log.txt


def test_an_expected_error_in_ddp_workers_is_one_line(cifar_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(cifar_root, out) == 0
    capsys.readouterr()
    assert _train(cifar_root, out, "--resume", "--num-gpus", "2", **{"SOLVER.BASE_LR": 0.5}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --resume: the config differs"), err


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    import errno

    import se_transfer.engine.checkpoint as ckmod

    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path, model)
    ck.save("model_0000001", 1)
    before = (tmp_path / "model_0000001.pth").read_bytes()
    real_save = torch.save

    def disk_full(obj, f):
        real_save(obj, f)
        with open(f, "r+b") as partial:  # a partial file, then the disk is full
            partial.truncate(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckmod.torch, "save", disk_full)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        ck.save("model_0000002", 2)
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert not (tmp_path / "model_0000002.pth").exists() and not list(tmp_path.glob(".*.tmp*"))
    assert ck.resume() == 1  # resumable from the last good one
