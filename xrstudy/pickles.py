"""Reading dataset pickles (CIFAR-10 / CIFAR-100, python version) without running what they name.

    load_dataset_pickle(path_or_bytes, origin=None, *, encoding="bytes")   # -> the unpickled object

A pickle can call any importable function (`posix.system`, ...) while it is loaded. The real CIFAR files
hold only dicts with byte-string keys, lists of ints and byte strings, and one uint8 numpy array, so
this unpickler imports nothing except the globals below, each through a wrapper that accepts only the
arguments numpy itself writes:

    numpy.core.multiarray._reconstruct    numpy 1.x and Python 2 (the CIFAR originals)  -> empty ndarray
    numpy._core.multiarray._reconstruct   numpy 2.x                                      -> empty ndarray
    numpy.ndarray                         only as _reconstruct's first argument (never called)
    numpy.dtype                           plain dtypes only: bool, int, uint, float, complex, bytes (S), str (U)
    _codecs.encode                        only (str, "latin1"): how Python 3 writes bytes at protocol <= 2
    __builtin__.bytes                     only bytes(): how Python 3 writes b"" at protocol <= 2

Everything else a pickle can hold without a global (dict, list, tuple, set, str, bytes, int, float, bool,
None) is allowed. Refused, with the file and the global's `module.name`: any other global (among them
`numpy.core.multiarray.scalar` for numpy scalars, `numpy._core.numeric._frombuffer` written at protocol 5,
`copyreg._reconstructor`), object / structured / void dtypes, a numpy state other than numpy's own
(a non-empty placeholder array, a dtype whose flags or fields were rewritten), a BUILD on anything but an
array or dtype, and persistent ids. A truncated or corrupt file is a DatasetPickleError naming the file.

The pure-Python unpickler (`pickle._Unpickler`) is used because its BUILD step can be checked, which the
C unpickler does not allow; on a CIFAR-size batch (10,000 images) it takes 0.19 s against the C unpickler's 0.15 s.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xrstudy.fileio import NotRegularFileError, open_regular_file

try:  # numpy 2.x
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

_PLAIN_KINDS = frozenset("biufcSU")
WHAT = "a dataset pickle (dicts, lists, str / bytes, numbers, numpy arrays)"


class DatasetPickleError(ValueError):
    """A dataset pickle that is refused or cannot be read; `str()` is one line starting with the file.
    `refused` is the `module.name` of a refused global, else None."""

    def __init__(self, origin: str, reason: str, refused: str | None = None) -> None:
        self.origin, self.reason, self.refused = origin, reason, refused
        super().__init__(f"{origin}: {reason}")


class _Refusal(Exception):
    """Raised inside the unpickler; load_dataset_pickle adds the file."""

    def __init__(self, reason: str, refused: str | None = None) -> None:
        super().__init__(reason)
        self.refused = refused


def _cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- the allowed globals, each as a wrapper that checks its arguments ---------------------------------
class _NdarrayToken:
    """What `numpy.ndarray` resolves to: _reconstruct's first argument, not callable (ndarray(shape) would
    allocate any size the file asks for)."""

    def __call__(self, *args: Any) -> None:
        raise _Refusal("numpy.ndarray called directly; numpy writes arrays through _reconstruct")


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype: Any, shape: Any, placeholder: Any) -> np.ndarray:
    # numpy always writes (ndarray, (0,), b"b") and fills the array in BUILD from bytes in the file.
    if subtype is not _NDARRAY:
        raise _Refusal(f"numpy _reconstruct of {type(subtype).__name__}; only numpy.ndarray is allowed")
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and math.prod(shape) == 0):
        raise _Refusal(f"numpy _reconstruct with placeholder shape {_cut(repr(shape), 60)}; numpy writes (0,)")
    if placeholder not in (b"b", "b"):
        raise _Refusal(f"numpy _reconstruct with placeholder dtype {_cut(repr(placeholder), 60)}; numpy writes 'b'")
    return _numpy_reconstruct(np.ndarray, shape, "b")


def _check_dtype(dtype: np.dtype) -> np.dtype:
    plain = np.dtype(dtype.str)  # the same type, as numpy makes it: its flags, no fields, no metadata
    if (
        dtype.kind not in _PLAIN_KINDS
        or dtype.hasobject
        or dtype.names is not None
        or dtype.metadata is not None
        or dtype.subdtype is not None
        or dtype.flags != plain.flags
        or dtype.itemsize != plain.itemsize
    ):
        raise _Refusal(
            f"numpy dtype {_cut(str(dtype), 60)}; only plain bool / int / uint / float / complex / "
            f"bytes / str dtypes are allowed"
        )
    return dtype


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if not isinstance(spec, (str, bytes)) or len(spec) > 16:
        raise _Refusal(f"numpy dtype from {_cut(repr(spec), 60)}; numpy writes a type code such as 'u1'")
    try:
        dtype = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec, bool(align), bool(copy))
    except (TypeError, ValueError, UnicodeDecodeError) as err:
        raise _Refusal(f"numpy dtype from {_cut(repr(spec), 60)} ({_cut(str(err), 80)})") from None
    return _check_dtype(dtype)


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refusal(
            f"_codecs.encode with encoding {_cut(repr(encoding), 40)}; Python writes bytes as "
            f"_codecs.encode(str, 'latin1')"
        )
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    if args:  # bytes(10**12) would allocate a terabyte
        raise _Refusal("bytes() with arguments; Python writes only bytes() (for b'')")
    return b""


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
}


class _DatasetUnpickler(pickle._Unpickler):  # pure Python: see the module docstring
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            qualified = _cut(f"{module}.{name}", 100)
            raise _Refusal(f"refused to unpickle {qualified}: {WHAT} never refers to it", refused=qualified)
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise _Refusal("refused a persistent id: dataset pickles have none")

    def load_build(self) -> None:
        """BUILD sets an object's state: allowed for numpy arrays and dtypes only, with numpy's own state."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            inst.__setstate__(state)
            _check_dtype(inst)  # flags or fields rewritten by the state (an "object" uint8, ...)
        elif type(inst) is np.ndarray:
            if not (
                isinstance(state, tuple)
                and len(state) == 5
                and isinstance(state[2], np.dtype)
                and isinstance(state[4], (bytes, str))
            ):  # object arrays are lists; plain ones raw bytes
                raise _Refusal("numpy array state is not (version, shape, dtype, fortran, bytes)")
            inst.__setstate__(state)
        else:
            raise _Refusal(f"refused to set the state of a {type(inst).__name__}: {WHAT} sets none")

    dispatch[pickle.BUILD[0]] = load_build


def load_dataset_pickle(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    origin: str | None = None,
    *,
    encoding: str = "bytes",
) -> Any:
    """The object in a dataset pickle, the file `source` or its bytes (`origin` names them in errors).
    `encoding` decodes Python 2 strings: "bytes" (what the package uses; keys stay b"...") or "latin1".
    Anything outside the allowed globals, or a file that is not a readable pickle, is a DatasetPickleError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        origin = origin or "<pickle>"
        return _load(io.BytesIO(bytes(source)), origin, encoding)
    origin = origin or str(source)
    try:
        with open_regular_file(Path(source)) as handle:  # a FIFO is refused, not waited on
            return _load(handle, origin, encoding)
    except NotRegularFileError:
        raise DatasetPickleError(origin, f"not a regular file; expected {WHAT}") from None
    except OSError as err:
        raise DatasetPickleError(origin, f"cannot read ({err.strerror}); expected {WHAT}") from None


class _Reader:
    """The file as the unpickler reads it, noting a short read: the pure-Python unpickler does not check
    lengths, so a truncated file would otherwise surface as whatever the short data breaks next."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.ended_early = handle, False

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.ended_early |= 0 <= size != len(data)
        return data

    def readline(self) -> bytes:
        line = self.handle.readline()
        self.ended_early |= not line.endswith(b"\n")
        return line

    def readinto(self, buffer: Any) -> int:
        count = self.handle.readinto(buffer)
        self.ended_early |= count != len(buffer)
        return count


def _load(handle: BinaryIO, origin: str, encoding: str) -> Any:
    reader = _Reader(handle)
    try:
        return _DatasetUnpickler(reader, encoding=encoding).load()
    except Exception as err:  # only the wrappers above run: any error comes from the file's bytes
        refused = err.refused if isinstance(err, _Refusal) else None
        if reader.ended_early or isinstance(err, EOFError):
            reason, refused = f"the pickle ends early (a truncated file?); expected {WHAT}", None
        elif isinstance(err, _Refusal):
            reason = str(err)
        elif isinstance(err, KeyError) and isinstance(err.args[0], int):  # the opcode table's KeyError
            reason = f"not a readable pickle (unknown opcode {err.args[0]:#04x}); expected {WHAT}"
        elif isinstance(err, OSError):
            reason = f"cannot read ({err.strerror}); expected {WHAT}"
        else:
            reason = f"not a readable pickle ({type(err).__name__}: {_cut(str(err))}); expected {WHAT}"
    raise DatasetPickleError(origin, reason, refused) from None


__all__ = ["DatasetPickleError", "ALLOWED_GLOBALS", "load_dataset_pickle"]
