"""The pre-resized uint8 image cache (each image decoded by `xrstudy.pixels.decoding.prepare_image`).

Study preprocessing: grayscale scaled to [0, 1] (8-bit / 255, 16-bit / 65535, DICOM by BitsStored),
centre crop to a square (the X-ray pipeline: torchxrayvision's XRayCenterCrop), antialiased resize.
Modes "L:squash" / "RGB:squash" resize the whole image to the square instead (aspect not kept): the
BiT pipeline's evaluation view (`Resize((crop, crop))` in the authors' build_transforms), from which
training takes aspect-true random crops with the original sizes (`original_sizes`). Training reads
the result from a memory-mapped uint8 cache so that each image is decoded once per (path set, size,
mode), not once per epoch.

Cache layout, under ``cache_dir/{key[:16]}/``:

- ``images.u8``       N x size x size (x 3) uint8, ``np.memmap``-able, in ``paths.txt`` order
- ``paths.txt``       one path per line
- ``done.npy``        bool per index: the slot holds a finished image
- ``checksums.npy``   uint32 per index: CRC-32 of the slot's bytes as built (a done slot without one is
                      decoded again, so a cache from before checksums were recorded is rebuilt once)
- ``quarantine.json`` {path: reason} of unreadable files (their slots stay zeros)
- ``meta.json``       key, size, mode, shape, format version
- ``sizes.npy``       original (height, width) per index, written by the first reader that asks

Writers hold an exclusive lock (``xrstudy.fileio.file_lock``: flock, dropped by the OS if the holder
dies) on ``cache_dir/{key[:16]}.lock``; readers of a finished cache take no lock, because a finished
cache is never written again. Every small file is written atomically (``xrstudy.fileio``). Before the
pixels are written through the memory map, the free space is checked (``check_free_space``, also
callable by the training path before it builds) and ``images.u8``'s blocks are reserved, so a full
disk is an error naming the path and the sizes, never a SIGBUS.

Pixels are verified where they are used: `ImageCache.check_rows(rows)` compares each row's CRC-32 with
the one recorded at build time, the first time this process reads it (loaders.Split calls it before
every gather), so a slot overwritten or zeroed after the build -- the done bitmap cannot tell -- stops
the cell with CacheCorruptError naming the cache folder, before a result is computed from it.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import itertools
import json
import math
import multiprocessing
import operator
import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from xrstudy.fileio import DiskFullError, atomic_path, atomic_write_text, check_free_space, file_lock, is_disk_full

# The build looks prepare_image up in this module (tests count decodes by patching images.prepare_image).
from xrstudy.pixels.decoding import MODES, ImageError, original_size, prepare_image

FORMAT_VERSION = 1  # bump when the stored pixels would change (decoding, resampling, layout)


# ---- cache files ------------------------------------------------------------------------------
def cache_key(paths: Iterable[str], size: int, mode: str) -> str:
    """sha256 over (sorted unique paths, size, mode, format version)."""
    return _key(sorted_unique(paths), size, mode)


def sorted_unique(paths: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    """The paths as str, sorted and without repeats: the order of a cache's rows. A sequence that is
    already strictly increasing (a StudyData universe) is taken as it is, in one C-level pass."""
    listed = list(map(str, paths))
    if all(map(operator.lt, listed, itertools.islice(listed, 1, None))):
        return tuple(listed)
    return tuple(sorted(set(listed)))


_JSON_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')  # bytes json.dumps (ensure_ascii) keeps


def _key(unique: Sequence[str], size: int, mode: str) -> str:
    """cache_key of sorted unique paths: sha256 of the JSON text {"format", "size", "mode", "paths"}.
    Paths of printable ASCII without quote or backslash (the usual case) are their own JSON strings, so
    the text is joined in C instead of encoded path by path (the same bytes, ~5x faster)."""
    spec = {"format": FORMAT_VERSION, "size": int(size), "mode": mode}
    joined = '","'.join(unique).encode("utf-8", "surrogatepass")  # the separators hold the only quotes...
    if joined.translate(None, _JSON_PLAIN + b'"') or joined.count(b'"') != 2 * max(len(unique) - 1, 0):
        return hashlib.sha256(json.dumps({**spec, "paths": list(unique)}, separators=(",", ":")).encode()).hexdigest()
    head = json.dumps({**spec, "paths": []}, separators=(",", ":")).encode()  # ...else: {...,"paths":[]}
    digest = hashlib.sha256(head[:-3])
    for part in (b'["', joined, b'"]') if unique else (b"[]",):
        digest.update(part)
    digest.update(head[-1:])
    return digest.hexdigest()


def _image_shape(count: int, size: int, mode: str) -> tuple[int, ...]:
    return (count, size, size) if mode.partition(":")[0] == "L" else (count, size, size, 3)


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True))


def _write_done(path: Path, done: np.ndarray) -> None:
    with atomic_path(path) as temp, open(temp, "wb") as handle:  # a handle: np.save would add ".npy" to a name
        np.save(handle, done)


def _read_done(path: Path, count: int) -> np.ndarray:
    """The done bitmap; all False when missing or unreadable (its slots are then decoded again)."""
    try:
        done = np.load(path)
    except (OSError, ValueError, EOFError):
        return np.zeros(count, dtype=bool)
    if done.shape != (count,) or done.dtype != bool:
        return np.zeros(count, dtype=bool)
    return done


def _write_checksums(path: Path, checksums: np.ndarray) -> None:
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.save(handle, checksums)


def _read_checksums(path: Path, count: int) -> np.ndarray | None:
    """The recorded CRC-32 per slot; None when missing or unreadable (done slots are then decoded again)."""
    try:
        checksums = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    return checksums if checksums.shape == (count,) and checksums.dtype == np.uint32 else None


def slot_checksum(slot: np.ndarray) -> int:
    """CRC-32 of one cache slot's bytes (zlib: ~2.5 GB/s here, and it releases the GIL on large buffers)."""
    return zlib.crc32(np.ascontiguousarray(slot))


class CacheCorruptError(RuntimeError):
    """Pixels of a finished cache that differ from the checksums recorded when they were written."""


def _read_quarantine(path: Path) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}  # missing (deleted by the user to ask for a retry) or damaged: retry those files


@dataclass
class ImageCache:
    """A finished cache: ``cache[i]`` is a read-only uint8 view; ``index_of(path)`` gives i."""

    folder: Path
    key: str
    paths: tuple[str, ...]
    size: int
    mode: str
    images: np.ndarray
    quarantined: dict[str, str]
    built: int = 0
    reused: int = 0
    checksums: np.ndarray | None = field(default=None, repr=False)  # CRC-32 per row as built (None: not checked)
    _index: Any = field(default=None, repr=False)  # `paths` as an Arrow array, built on first lookup
    _verified: Any = field(default=None, repr=False)  # rows this process has checked (bool per row)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.images[index]

    def rows_of(self, paths: Sequence[str] | Any) -> np.ndarray:
        """Cache rows (int64) of `paths` (a sequence or a pandas Series of str), in their order; a path
        outside the cache is a KeyError. One hash lookup in Arrow (~4x faster than pandas' on 200k)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            if self._index is None:
                self._index = pa.array(self.paths, type=pa.string())
            found = pc.index_in(pa.array(paths, type=pa.string()), value_set=self._index)
        except (UnicodeError, pa.ArrowException):  # paths Arrow cannot hold (lone surrogates): pandas
            import pandas as pd

            rows = pd.Index(self.paths, dtype=object).get_indexer(list(map(str, paths)))
        else:
            rows = found.fill_null(-1).to_numpy(zero_copy_only=False)
        if (rows < 0).any():
            missing = [str(p) for p, r in zip(paths, rows) if r < 0]
            raise KeyError(f"{len(missing)} paths are not in the image cache {self.folder}, e.g. {missing[:3]}")
        return rows.astype(np.int64)

    def index_of(self, path: str | os.PathLike[str]) -> int:
        try:
            return int(self.rows_of([str(path)])[0])
        except KeyError:
            raise KeyError(f"{path} is not in the image cache {self.folder}") from None

    def original_sizes(self) -> np.ndarray:
        """Original (height, width) per cache row, int32, read from the image headers once and kept
        in ``sizes.npy`` beside the cache (atomically written; every reader computes the same)."""
        from xrstudy.fileio import atomic_path

        path = self.folder / "sizes.npy"
        try:
            sizes = np.load(path)
            if sizes.shape == (len(self.paths), 2):
                return sizes
        except (OSError, ValueError, EOFError):
            pass
        sizes = np.array([original_size(p) for p in self.paths], dtype=np.int32).reshape(len(self.paths), 2)
        with atomic_path(path) as temp, open(temp, "wb") as handle:
            np.save(handle, sizes)
        return sizes

    def check_rows(self, rows: np.ndarray) -> None:
        """Compare `rows` not yet checked by this process with the checksums recorded at build time; a
        CacheCorruptError names the cache folder, the count and the first damaged row. Each row is hashed
        once per process (the first epoch pays it: benchmarks/bench_cache.py measures the ratio)."""
        if self.checksums is None:
            return
        if self._verified is None:
            self._verified = np.zeros(len(self.paths), dtype=bool)  # benign race: two threads may hash a row twice
        rows = np.asarray(rows, dtype=np.int64)
        new = np.unique(rows[~self._verified[rows]])
        if len(new) == 0:
            return
        pixels = self.images.view(np.ndarray)  # rows of a plain view: no memmap object per row (~5 us each)
        bad = [int(r) for r in new if slot_checksum(pixels[r]) != int(self.checksums[r])]
        if bad:
            raise CacheCorruptError(
                f"image cache {self.folder}: {len(bad)} of the {len(new)} images just read differ from the "
                f"checksums recorded when the cache was built (first: row {bad[0]}, {self.paths[bad[0]]}); "
                f"its images.u8 was damaged after the build. Delete {self.folder} and run again: it is rebuilt "
                f"from the image files"
            )
        self._verified[new] = True

    @property
    def content_key(self) -> str:
        """`key` plus a digest of the pixels as built (the slots' checksums): what is computed from the pixels
        (a probe's features) is keyed by this, so a slot rebuilt under the same key (a quarantined file
        repaired and retried, a cache deleted after its images changed) is never answered from before."""
        if self.checksums is None:
            return self.key
        return f"{self.key}:{hashlib.sha256(np.ascontiguousarray(self.checksums).tobytes()).hexdigest()[:16]}"

    @property
    def quarantine_file(self) -> Path:
        return self.folder / "quarantine.json"

    def report(self) -> str:
        return (
            f"image cache {self.folder} ({len(self)} images, {self.size}px {self.mode}): "
            f"built {self.built}, reused {self.reused}, quarantined {len(self.quarantined)}"
            f" (see {self.quarantine_file})"
        )


class _CacheFiles:
    """The files of one cache folder; every write happens under the build lock."""

    def __init__(self, folder: Path, key: str, paths: Sequence[str], size: int, mode: str, what: str = "") -> None:
        self.folder, self.key, self.paths, self.size, self.mode = folder, key, tuple(paths), size, mode
        self.what = what or f"the image cache ({len(self.paths)} images at {size}px {mode})"  # in a full-disk error
        self.shape = _image_shape(len(paths), size, mode)
        self.images_path = folder / "images.u8"
        self.done_path = folder / "done.npy"
        self.checksums_path = folder / "checksums.npy"
        self.quarantine_path = folder / "quarantine.json"

    def state(self) -> tuple[np.ndarray, dict[str, str]]:
        """(done bitmap, quarantine), both as last flushed. A slot counts as done only with its checksum:
        without checksums.npy (a cache built before they were recorded, or the file lost) nothing is."""
        done = _read_done(self.done_path, len(self.paths))
        if done.any() and self.checksums() is None:
            done[:] = False
        return done, _read_quarantine(self.quarantine_path)

    def checksums(self) -> np.ndarray | None:
        return _read_checksums(self.checksums_path, len(self.paths))

    def pending(self, done: np.ndarray, quarantine: dict[str, str]) -> np.ndarray:
        """Indices neither finished nor quarantined."""
        failed = np.zeros(len(self.paths), dtype=bool)
        failed[[i for i in map(self.row, quarantine) if i >= 0]] = True
        return np.flatnonzero(~done & ~failed)

    def row(self, path: str) -> int:
        """Index of `path` in the sorted `paths` (binary search), -1 when it is not there."""
        i = bisect.bisect_left(self.paths, path)
        return i if i < len(self.paths) and self.paths[i] == path else -1

    def missing_bytes(self) -> int:
        """Bytes of images.u8 not allocated on disk yet (0 for a complete file)."""
        allocated = self.images_path.stat().st_blocks * 512 if self.images_path.exists() else 0  # sparse file
        return max(0, int(np.prod(self.shape)) - allocated)

    def finished(self) -> bool:
        """Every slot done or quarantined, and the quarantine on disk (deleting it asks for a retry)."""
        expected = int(np.prod(self.shape))
        if not self.images_path.exists() or self.images_path.stat().st_size != expected:
            return False
        if not self.quarantine_path.exists():
            return False
        return len(self.pending(*self.state())) == 0

    def prepare(self) -> None:
        """Create or check the folder; a missing or wrong-sized images.u8 resets all progress."""
        self.folder.mkdir(parents=True, exist_ok=True)
        paths_file = self.folder / "paths.txt"
        listed = "".join(f"{path}\n" for path in self.paths)
        if paths_file.exists() and paths_file.read_text() != listed:
            raise RuntimeError(f"{paths_file} lists other paths than key {self.key} (a 64-bit prefix collision?)")
        expected = int(np.prod(self.shape))
        fresh = not self.images_path.exists() or self.images_path.stat().st_size != expected
        allocated = 0 if fresh else self.images_path.stat().st_blocks * 512
        # The pixels are written through a memory map, where a full disk is a SIGBUS, not an error:
        # check the space first, then reserve the file's blocks (ENOSPC here, with the path).
        small_files = 2 * len(listed.encode()) + 4 * len(self.paths) + 2**20  # paths, done, quarantine, meta
        check_free_space(self.folder, max(0, expected - allocated) + small_files, self.what)
        if fresh:
            self.done_path.unlink(missing_ok=True)
            self.checksums_path.unlink(missing_ok=True)
            with atomic_path(self.images_path) as temp, open(temp, "r+b") as handle:
                handle.truncate(expected)  # untouched slots read as zeros
                _reserve(handle.fileno(), expected)
        elif allocated < expected:  # resuming a cache begun as a sparse file (or before the disk filled)
            with open(self.images_path, "r+b") as handle:
                try:
                    _reserve(handle.fileno(), expected)
                except OSError as err:
                    raise (DiskFullError(self.images_path) if is_disk_full(err) else err) from err
        if not paths_file.exists():
            atomic_write_text(paths_file, listed)
        meta = {
            "format": FORMAT_VERSION,
            "key": self.key,
            "size": self.size,
            "mode": self.mode,
            "count": len(self.paths),
            "shape": list(self.shape),
            "dtype": "uint8",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if not (self.folder / "meta.json").exists():
            _write_json(self.folder / "meta.json", meta)

    def open(self, writable: bool) -> np.ndarray:
        if self.shape[0] == 0:  # mmap cannot map an empty file
            return np.zeros(self.shape, dtype=np.uint8)
        return np.memmap(self.images_path, dtype=np.uint8, mode="r+" if writable else "r", shape=self.shape)


def _reserve(fd: int, size: int) -> None:
    """Allocate the blocks of a file of `size` bytes now (its bytes stay as they are), so that writing
    through a memory map can no longer run out of space. File systems without fallocate rely on the
    free-space check alone."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None or size == 0:
        return
    try:
        fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


# ---- building ---------------------------------------------------------------------------------
Outcome = tuple[int, "str | None", int]  # (index, reason it failed or None, CRC-32 of the slot as written)


def _fill(images: np.ndarray, size: int, mode: str, items: Sequence[tuple[int, str]]) -> list[Outcome]:
    """Decode items into their slots, flush them, and say which failed (index, reason) or not (None),
    with each written slot's checksum."""
    outcome: list[Outcome] = []
    for index, path in items:
        try:
            images[index] = prepare_image(path, size, mode)
            outcome.append((index, None, slot_checksum(images[index])))
        except ImageError as error:
            outcome.append((index, error.reason, 0))
        except Exception as error:  # noqa: BLE001 - one odd file must not kill a 400k-image build
            outcome.append((index, f"unexpected {type(error).__name__}: {error}", 0))
    if isinstance(images, np.memmap):
        images.flush()  # pixels reach the file before the main process marks them done
    return outcome


_WORKER: tuple[np.ndarray, int, str] | None = None  # (writable memmap, size, mode) of a pool worker


def _init_worker(images_path: str, shape: tuple[int, ...], size: int, mode: str) -> None:
    global _WORKER
    _WORKER = (np.memmap(images_path, dtype=np.uint8, mode="r+", shape=shape), size, mode)


def _worker_fill(items: Sequence[tuple[int, str]]) -> list[Outcome]:
    assert _WORKER is not None, "pool worker started without _init_worker"
    return _fill(*_WORKER, items)


def _chunks(indices: np.ndarray, paths: Sequence[str], chunk_size: int) -> list[list[tuple[int, str]]]:
    items = [(int(i), paths[i]) for i in indices]
    return [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]


def _default_chunk_size(pending: int, workers: int) -> int:
    # Small enough that a kill loses little and the bar moves; large enough that rewriting done.npy
    # (one byte per image) after each chunk stays cheap next to decoding it.
    return max(16, min(512, math.ceil(pending / (8 * max(workers, 1)))))


def _show_progress() -> bool:
    # Not in logs, notebooks or SLURM output files: a bar there is just noise.
    is_tty = getattr(sys.stderr, "isatty", lambda: False)()
    return bool(is_tty) and os.environ.get("XRSTUDY_NO_PROGRESS") != "1"


def _run_chunks(files: _CacheFiles, chunks: list[list[tuple[int, str]]], workers: int) -> Iterator[list[Outcome]]:
    """Outcome of each chunk, as it finishes, from this process or a pool of workers."""
    if workers <= 1 or len(chunks) <= 1:
        images = files.open(writable=True)
        for chunk in chunks:
            yield _fill(images, files.size, files.mode, chunk)
        return
    # fork where there is one (as torch's DataLoader does): spawn/forkserver re-import __main__, which
    # fails for code run from stdin and re-runs unguarded scripts. Workers only use PIL and numpy.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    init = (str(files.images_path), files.shape, files.size, files.mode)
    with context.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=init) as pool:
        yield from pool.imap_unordered(_worker_fill, chunks)


def _build(files: _CacheFiles, workers: int, chunk_size: int | None) -> tuple[int, int]:
    """Decode the pending slots; returns (built, reused). Caller holds the lock."""
    files.prepare()
    done, quarantine = files.state()
    pending = files.pending(done, quarantine)
    reused = int(done.sum())
    checksums = files.checksums() if reused else None
    checksums = np.zeros(len(files.paths), dtype=np.uint32) if checksums is None else checksums.copy()
    if len(pending) == 0:
        _write_json(files.quarantine_path, quarantine)
        return 0, reused
    from tqdm import tqdm

    chunks = _chunks(pending, files.paths, chunk_size or _default_chunk_size(len(pending), workers))
    built = 0
    with tqdm(
        total=len(pending), desc=f"caching images at {files.size}px", unit="img", disable=not _show_progress()
    ) as bar:
        for outcome in _run_chunks(files, chunks, workers):
            for index, reason, checksum in outcome:
                if reason is None:
                    done[index] = True
                    checksums[index] = checksum
                    built += 1
                else:
                    quarantine[files.paths[index]] = reason
            # Quarantine and checksums before done: a kill in between only re-decodes good images, never
            # loses a failure, and no slot is ever done without its checksum.
            _write_json(files.quarantine_path, quarantine)
            _write_checksums(files.checksums_path, checksums)
            _write_done(files.done_path, done)
            bar.update(len(outcome))
    return built, reused


def build_cache(
    paths: Iterable[str | os.PathLike[str]],
    size: int,
    cache_dir: str | os.PathLike[str],
    mode: str = "L",
    workers: int = 1,
    *,
    chunk_size: int | None = None,
    what: str = "",
) -> ImageCache:
    """Open the uint8 cache of `paths` at size x size, decoding only what is not there yet.

    Resumable (progress is flushed after each chunk), safe when several processes build the same
    key (an exclusive lock), and unreadable files are quarantined rather than fatal. A build that
    cannot fit on its disk is refused before anything is written (DiskFullError naming `what`).
    Opening a finished cache costs one pass over the paths in C (sorted check, key), whatever its size.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    size = int(size)
    unique = sorted_unique(paths)
    key = _key(unique, size, mode)
    cache_dir = Path(cache_dir)
    files = _CacheFiles(cache_dir / key[:16], key, unique, size, mode, what)
    built = 0
    # A finished cache is only read: no lock, no decoding.
    if not files.finished():
        with file_lock(cache_dir / f"{key[:16]}.lock"):
            built, _ = _build(files, workers, chunk_size)  # re-checks under the lock: another may have finished
    done, quarantine = files.state()
    reused = int(done.sum()) - built
    quarantined = {path: quarantine[path] for path in sorted(quarantine) if files.row(path) >= 0}  # in row order
    return ImageCache(
        files.folder,
        key,
        files.paths,
        size,
        mode,
        files.open(writable=False),
        quarantined,
        built,
        reused,
        checksums=files.checksums() if done.any() else None,
    )


# ---- before a build: will it fit? ----------------------------------------------------------------
def bytes_to_build(
    paths: Iterable[str | os.PathLike[str]], size: int, cache_dir: str | os.PathLike[str], mode: str = "L"
) -> tuple[Path, int]:
    """(cache folder, bytes the build still has to allocate on its disk): 0 for a finished cache."""
    unique = sorted_unique(paths)
    key = _key(unique, size, mode)
    files = _CacheFiles(Path(cache_dir) / key[:16], key, unique, int(size), mode)
    return files.folder, 0 if files.finished() else files.missing_bytes()
