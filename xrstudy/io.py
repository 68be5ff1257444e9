"""Shared file rules: atomic writes, file locks and a full disk, used by every module that writes the study's files.

    atomic_write_bytes(path, data) / atomic_write_text / atomic_write_json
    with atomic_path(path) as tmp: torch.save(obj, tmp)      # any writer that wants a file name
    with file_lock(path): ...                                   # `filelock` (flock; released if the holder dies)
    check_free_space(folder, needed_bytes, what)                # before a large write (the image cache)

Atomic means: the data goes to a uniquely named temporary file in the same folder, is flushed and
fsync'd, then `os.replace`d over the target, so a reader sees the old file or the new one, never a
half-written one, and a crash leaves at most a `.{name}.*.tmp` file behind (removed on failure).

A full disk (ENOSPC, or EDQUOT for a quota) while writing becomes `DiskFullError`, one line naming the
file being written and the space left, instead of an errno without a path; `xrstudy.cli` prints it as is.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

TEMP_SUFFIX = ".tmp"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """No space left where a file is (to be) written; the message names the path and the sizes."""

    def __init__(self, path: str | os.PathLike[str], message: str = "") -> None:
        self.path = Path(path)
        self.message = message or (f"no space left on device writing {self.path} ({format_bytes(free_bytes(self.path.parent))} "
                                   f"free there); free some space and run the same command again")
        super().__init__(errno.ENOSPC, self.message, str(self.path))

    def __str__(self) -> str:
        return self.message


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes a non-root writer may still use on the file system of `folder` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_free_space(folder: str | os.PathLike[str], needed_bytes: int, what: str = "these files") -> None:
    """Raise DiskFullError before writing `needed_bytes` under `folder` if the file system has less free."""
    free = free_bytes(folder)
    if needed_bytes > free:
        raise DiskFullError(folder, f"not enough free space in {folder} for {what}: needs {format_bytes(needed_bytes)}, "
                                    f"{format_bytes(free)} free on that file system; free some space or choose "
                                    f"another folder")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsync'd and replaces `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path) from err
        raise
    temp_path = Path(temp)
    try:
        yield temp_path
        with open(temp_path, "rb+") as handle:
            os.fsync(handle.fileno())  # a delayed allocation failure shows up here, as ENOSPC
        os.replace(temp_path, path)
    except BaseException as err:
        temp_path.unlink(missing_ok=True)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path) from err
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any, **dump_options: Any) -> Path:
    options = {"indent": 1, "sort_keys": True, **dump_options}
    return atomic_write_text(path, json.dumps(value, **options) + "\n")


def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> FileLock:
    """An exclusive lock on `path` (created if needed); use as a context manager. The OS drops it
    when the holding process dies, so a `kill -9` never leaves a stale lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "file_lock",
           "check_free_space", "free_bytes", "format_bytes", "is_disk_full", "DiskFullError", "DISK_FULL_ERRNOS"]
