"""Shared file rules: atomic writes, file locks and a full disk, used by every module that writes the study's files.

    atomic_write_bytes(path, data) / atomic_write_text / atomic_write_json
    atomic_write_table(frame, path)                             # a DataFrame as CSV (.gz, ...) or Parquet
    with atomic_path(path, needed_bytes=n) as tmp: torch.save(obj, tmp)   # any writer that wants a file name
    with file_lock(path): ...                                   # `filelock` (flock; released if the holder dies)
    check_free_space(folder, needed_bytes, what)                # before a large write (the image cache)
    sha256_file(path)                                           # the hash a checkpoint / split file is known by
    read_regular_file(path) / entry_kind(path)                  # a FIFO or folder where a file belongs: named
    require_regular_file(path)                                  # the same check before a reader that opens by name

Atomic means: the data goes to a uniquely named temporary file in the same folder, is flushed and
fsync'd, then `os.replace`d over the target, so a reader sees the old file or the new one, never a
half-written one, and a crash leaves at most a `.{name}.*.tmp` file behind (removed on failure).

A full disk (ENOSPC, or EDQUOT for a quota) while writing becomes `DiskFullError`, one line naming the
file being written and the space left, instead of an errno without a path; `xrstudy.cli` prints it as is.
Some writers report a full disk without an errno (torch.save to a file name raises RuntimeError
"file write failed" / "unexpected pos"): given `needed_bytes`, `atomic_path` calls such an error a full
disk when less than that is free once its temporary file is gone.

Every atomic write of the study goes through here (results, checkpoints, split files, tables, YAML,
the image cache's small files, sweep files); nothing else writes a temporary file and renames it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

TEMP_SUFFIX = ".tmp"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """No space left where a file is (to be) written; the message names the path and the sizes."""

    def __init__(self, path: str | os.PathLike[str], message: str = "") -> None:
        self.path = Path(path)
        self.message = message or (
            f"no space left on device writing {self.path} ({format_bytes(free_bytes(self.path.parent))} "
            f"free there); free some space and run the same command again"
        )
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
        raise DiskFullError(
            folder,
            f"not enough free space in {folder} for {what}: needs {format_bytes(needed_bytes)}, "
            f"{format_bytes(free)} free on that file system; free some space or choose "
            f"another folder",
        )


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, needed_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsync'd and replaces `path`.
    `needed_bytes` (about what the writer writes) lets an error without an errno count as a full disk."""
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
        if isinstance(err, DiskFullError):
            raise
        if is_disk_full(err):
            raise DiskFullError(path) from err
        free = free_bytes(path.parent) if needed_bytes and isinstance(err, RuntimeError) else None
        if free is not None and free < needed_bytes:
            raise DiskFullError(
                path,
                f"no space left on device writing {path} ({format_bytes(free)} free there, "
                f"about {format_bytes(needed_bytes)} to write; the writer said: {err}); free "
                f"some space and run the same command again",
            ) from err
        raise


# ---- what is at a path: regular files are read; anything else is named, never opened blocking -----------
_SPECIAL_KINDS = {
    stat.S_IFDIR: "directory",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class NotRegularFileError(OSError):
    """Something other than a regular file where one is read (`kind` says what: "directory", ...)."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        self.kind = kind
        super().__init__(errno.EINVAL, f"is a {kind}, not a regular file", str(path))


def file_kind(mode: int) -> str:
    """ "file" for a regular file, else what the stat `mode` says it is ("directory", "FIFO (named pipe)", ...)."""
    return "file" if stat.S_ISREG(mode) else _SPECIAL_KINDS.get(stat.S_IFMT(mode), "special file")


def entry_kind(path: str | os.PathLike[str]) -> str:
    """ "file", "absent", or what else is at `path` (a directory, a FIFO, a broken link, ...), from stat
    alone: never opened (opening a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "absent"
    except OSError as err:
        return f"path that cannot be examined ({err.strerror})"
    return file_kind(mode)


@contextmanager
def open_regular_file(path: str | os.PathLike[str]) -> Iterator[Any]:
    """`path` opened for reading (binary) if it is a regular file (symlinks followed), else
    NotRegularFileError. Opened non-blocking and checked on the open descriptor, so a FIFO is refused
    instead of waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind != "file":
            raise NotRegularFileError(path, kind)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            yield handle
    finally:
        os.close(fd)


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of `path` if it is a regular file (`open_regular_file`)."""
    with open_regular_file(path) as handle:
        return handle.read()


def require_regular_file(path: str | os.PathLike[str]) -> Path:
    """`path` when it is a regular file (symlinks followed); else FileNotFoundError, or NotRegularFileError
    naming what is there. The check before a reader that opens a file by name (torch.load, safetensors,
    scipy): on a FIFO such a reader would wait for a writer forever."""
    kind = entry_kind(path)
    if kind == "absent":
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
    if kind != "file":
        raise NotRegularFileError(path, kind)
    return Path(path)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks (checkpoints are GBs). Opened non-blocking and
    checked on the descriptor: a FIFO is NotRegularFileError, not waited on."""
    digest = hashlib.sha256()
    with open_regular_file(path) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any, **dump_options: Any) -> Path:
    options = {"indent": 1, "sort_keys": True, **dump_options}
    return atomic_write_text(path, json.dumps(value, **options) + "\n")


# pandas infers a CSV's compression from the file name; the temporary name hides it, so it is said here.
_CSV_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zip": "zip"}
TABLE_FORMATS = ("csv", "parquet")


def atomic_write_table(frame: Any, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """A pandas DataFrame (no index) as CSV or Parquet (`fmt`, or by the name: .parquet, else CSV, compressed
    when the name ends .gz / .bz2 / .xz / .zst / .zip). Parquet needs pyarrow (ImportError otherwise)."""
    path = Path(path)
    fmt = fmt or ("parquet" if path.suffix == ".parquet" else "csv")
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {fmt!r} for {path}; expected one of {list(TABLE_FORMATS)}")
    with atomic_path(path) as temp:
        if fmt == "parquet":
            frame.to_parquet(temp, index=False)
        else:
            method = _CSV_COMPRESSION.get(path.suffix.lower())
            # a zip archive names its member after the file: the target's name, not the temporary one
            compression = {"method": method, "archive_name": path.stem} if method == "zip" else method
            frame.to_csv(temp, index=False, compression=compression)
    return path


def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> FileLock:
    """An exclusive lock on `path` (created if needed); use as a context manager. The OS drops it
    when the holding process dies, so a `kill -9` never leaves a stale lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout)


__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_table",
    "TABLE_FORMATS",
    "sha256_file",
    "file_kind",
    "entry_kind",
    "open_regular_file",
    "read_regular_file",
    "require_regular_file",
    "NotRegularFileError",
    "file_lock",
    "check_free_space",
    "free_bytes",
    "format_bytes",
    "is_disk_full",
    "DiskFullError",
    "DISK_FULL_ERRNOS",
]
