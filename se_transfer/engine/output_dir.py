"""One run per output folder: an OS-level lock held for the whole run, no silent mixing with an earlier run.

``claim_output_dir`` is taken by the process that starts a run (before any worker is launched), for training and
evaluation alike:
- it holds an exclusive POSIX lock (``lockf``) on ``OUTPUT_DIR/.lock``; the kernel drops it when the process ends,
  however it ends (kill -9 included; forked children such as DataLoader workers do not inherit it), so a lock is
  never stale. A second run on the folder is refused with an error naming the
  folder and the process that holds it;
- a new training run (no ``--resume``) on a folder that holds an earlier run (checkpoints, metrics) is refused
  unless ``fresh`` says to start over, which first deletes that run's checkpoints, metrics, events and plots;
- temporary files left by writers that died mid-write (``.NAME.tmpPID`` with PID no longer alive) are removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# What an earlier run leaves in its folder (our engine's and detectron2's names).
RUN_FILES = ("last_checkpoint", "metrics.jsonl", "metrics.json")
RUN_GLOBS = (
    "model_*.pth",
    "events.out.tfevents.*",
    "*.png",
    "metrics.jsonl",
    "metrics.json",
    "last_checkpoint",
    "log.txt",
)
_TMP = re.compile(r"^\..+\.tmp(\d+)$")


class OutputDirError(RuntimeError):
    """The output folder is in use, holds another run, or cannot be written. One line, exit status 2."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.NAME.tmpPID`` files whose writer process is gone; return what was deleted."""
    removed = []
    for path in folder.iterdir():
        m = _TMP.match(path.name)
        if m and path.is_file() and not _alive(int(m.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed


def earlier_run(folder: Path) -> list[str]:
    """Names of the files in ``folder`` that an earlier run left (empty: the folder holds no run)."""
    found = [n for n in RUN_FILES if (folder / n).exists()]
    found += sorted(p.name for p in folder.glob("model_*.pth"))[:3]
    return found


def _start_over(folder: Path) -> None:
    for pattern in RUN_GLOBS:
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink()
    logger.warning("started over in %s: the earlier run's checkpoints, metrics, events and plots were deleted", folder)


@contextlib.contextmanager
def claim_output_dir(
    folder: str | os.PathLike, *, training: bool, resume: bool = False, fresh: bool = False, key: str = "OUTPUT_DIR"
) -> Iterator[Path]:
    """Hold ``folder`` for one run (see the module doc); ``training`` runs are checked against an earlier run."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
    except OSError as e:
        raise OutputDirError(f"{key} {folder}: cannot be created or written ({e.strerror or e})") from None
    try:
        try:
            # A POSIX record lock (lockf), not flock: it belongs to this process alone, so DataLoader workers forked
            # from it do not keep it alive after a kill -9 of the run.
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise OutputDirError(f"{key} {folder}: cannot lock {folder / LOCK_FILE} ({e.strerror or e})") from None
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputDirError(
                f"{key} {folder} is in use by {holder}; wait for that run to end, or give this one another {key}"
            ) from None
        handle.seek(0)
        handle.truncate()
        cmd = " ".join(sys.argv)[:300]
        handle.write(
            f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {cmd}"
        )
        handle.flush()
        remove_stale_temporaries(folder)
        if training and not resume:
            found = earlier_run(folder)
            if found and not fresh:
                raise OutputDirError(
                    f"{key} {folder} holds an earlier run ({', '.join(found)}): continue it with --resume, start over "
                    f"with --fresh (deletes its checkpoints and metrics), or give this run another {key}"
                )
            if found:
                _start_over(folder)
        yield folder
    finally:
        handle.close()  # releases the lock
