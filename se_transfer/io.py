"""One way to write a file so that a crash never leaves half of it: a temporary file beside the target, written,
given the mode any new file gets (some writers create theirs 0600), flushed to disk, then renamed over the target.

A temporary file is named ``.NAME.tmpPID``; ``engine.output_dir`` removes those whose writer process is gone."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary name ``atomic_write`` uses for ``path`` in this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to write the file at the temporary path, then make it ``path`` atomically; returns ``path``.

    The parent folder is created; on any failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
