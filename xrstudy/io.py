"""Shared file rules: atomic writes and file locks, used by every module that writes the study's files.

    atomic_write_bytes(path, data) / atomic_write_text / atomic_write_json
    with atomic_path(path) as tmp: torch.save(obj, tmp)      # any writer that wants a file name
    with file_lock(path): ...                                   # `filelock` (flock; released if the holder dies)

Atomic means: the data goes to a uniquely named temporary file in the same folder, is flushed and
fsync'd, then `os.replace`d over the target, so a reader sees the old file or the new one, never a
half-written one, and a crash leaves at most a `.{name}.*.tmp` file behind (removed on failure).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsync'd and replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    temp_path = Path(temp)
    try:
        yield temp_path
        with open(temp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
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


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "file_lock"]
