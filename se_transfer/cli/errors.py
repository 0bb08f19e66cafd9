"""How every command fails: an expected failure (config, data, weights, checkpoint, folder, file system, usage) is one
``error: ...`` line on stderr and exit status 2, its traceback only in the run's log.txt; DDP workers hand their line
to the launching process."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


class UsageError(ValueError):
    """A command-line value that cannot work (e.g. --device cuda without a GPU); reported as one ``error:`` line."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """The failures a user can cause and fix (config, data, weights, checkpoints, files, folders): one line, exit 2."""
    from ..config import ConfigError
    from ..data.common import DatasetError
    from ..engine.checkpoint import CheckpointError
    from ..engine.output_dir import OutputDirError
    from ..engine.trainer import NonFiniteLossError
    from ..models.layouts import WeightsError
    from ..models.registry import UnknownArgumentError
    from ..registry import RegistryError

    return (
        ConfigError, DatasetError, WeightsError, NonFiniteLossError, RegistryError, UnknownArgumentError,
        OutputDirError, CheckpointError, OSError, ValueError,
    )  # fmt: skip


# Where worker processes leave their one-line error for train_main (a folder it makes for each launch).
ERROR_DIR_ENV = "SE_TRANSFER_ERROR_DIR"


def error_line(error: BaseException) -> str:
    """An expected failure as one line (OSErrors as 'FILE: reason')."""
    message = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename:
        message = f"{error.filename}: {error.strerror or error}"
    return "error: " + " ".join(message.split())


class WorkerError(Exception):
    """A worker process ended with an expected failure; the message is its one ``error:`` line."""


@contextlib.contextmanager
def collect_worker_errors() -> Iterator[None]:
    """Around a launch: workers that fail as expected leave their one line in a folder made here (see
    ``report_error``) and exit with status 2; that becomes one WorkerError carrying the lowest rank's line."""
    import shutil
    import tempfile

    from torch.multiprocessing import ProcessExitedException

    error_dir = tempfile.mkdtemp(prefix="se_transfer_errors_")
    os.environ[ERROR_DIR_ENV] = error_dir  # spawned workers inherit it
    try:
        yield
    except ProcessExitedException as e:
        lines = [p.read_text() for p in sorted(Path(error_dir).glob("rank*.txt"))]
        if e.exit_code == 2 and lines:
            raise WorkerError(lines[0]) from None
        raise
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)
        os.environ.pop(ERROR_DIR_ENV, None)


def _is_log_file(handler: logging.Handler) -> bool:
    """Whether ``handler`` writes to an open log.txt (ours is a FileHandler; detectron2's a StreamHandler on it)."""
    stream = getattr(handler, "stream", None)
    if stream is None or getattr(stream, "closed", False):
        return False
    return isinstance(handler, logging.FileHandler) or Path(str(getattr(stream, "name", ""))).name.startswith("log.txt")


def report_error(error: BaseException, rank: int | None = None) -> None:
    """The traceback to the run's log file only (log.txt); the one line on stderr, or, from a worker process
    (``rank`` given), to the launch's error folder, whence the launching process prints the lowest rank's line."""
    files = [h for h in logging.getLogger("se_transfer").handlers if _is_log_file(h)]
    if files:
        record = logging.LogRecord("se_transfer", logging.ERROR, __file__, 0, "run failed: %s", (error,), None)
        record.exc_info = (type(error), error, error.__traceback__)
        for h in files:
            h.handle(record)
    folder = os.environ.get(ERROR_DIR_ENV)
    if rank is not None and folder:
        (Path(folder) / f"rank{rank:05d}.txt").write_text(error_line(error))
    else:
        print(error_line(error), file=sys.stderr, flush=True)


def command(main: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """Run a command's body on its parsed arguments; an expected failure becomes one ``error:`` line and status 2."""

    @functools.wraps(main)
    def run(args: argparse.Namespace) -> int:
        try:
            status = main(args)
        except expected_errors() as e:
            report_error(e)
            return 2
        return 0 if status is None else int(status)

    return run
