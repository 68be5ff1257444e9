"""Dataset pickles (issue item 1): only what CIFAR's files hold is unpickled; anything that would run code
is refused naming the file and the global; truncated or corrupt files are one clear error."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import cli_error

from xrstudy import cli
from xrstudy.pickles import ALLOWED_GLOBALS, DatasetPickleError, load_dataset_pickle

try:
    from numpy._core.multiarray import _reconstruct as RECONSTRUCT
except ImportError:
    from numpy.core.multiarray import _reconstruct as RECONSTRUCT


def _batch(n: int = 3, seed: int = 0) -> dict:
    """A CIFAR-10 python batch as xrstudy.layouts.natural writes it (bytes keys, N x 3072 uint8)."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"cat_s_{i:06d}.png".encode() for i in range(n)],
    }


META = {b"num_cases_per_batch": 10000, b"label_names": [b"airplane", b"cat"], b"num_vis": 3072}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


class _Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for CIFAR (protocol 2): byte strings as SHORT_BINSTRING /
    BINSTRING (a Python 2 str, no _codecs), numpy 1.x's `numpy.core.multiarray _reconstruct`, dtype args
    ('u1', 0, 1) with a str endian in the state."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):
            state = obj.__reduce__()[2]
            return np.dtype, (obj.str[1:].encode(), 0, 1), (state[0], state[1].encode(), *state[2:])
        return NotImplemented


def _python2_pickle(value) -> bytes:
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(value)
    return out.getvalue()


# ---- the real formats load exactly as pickle.load reads them --------------------------------------
@pytest.mark.parametrize(
    "value",
    [_batch(), _batch(0), META, {b"fine_labels": [3, 1], b"coarse_labels": [0, 0], b"data": _batch(2)[b"data"]}],
    ids=["batch", "empty-batch", "meta", "cifar100"],
)
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_python3_pickles_load_as_pickle_load_does(tmp_path, value, protocol):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=protocol)  # protocol 2: xrstudy.layouts.natural._dump
    with open(path, "rb") as handle:
        expected = pickle.load(handle, encoding="bytes")
    assert _same(load_dataset_pickle(path), expected)


@pytest.mark.parametrize("encoding", ["bytes", "latin1"])
def test_python2_pickles_load_as_pickle_load_does(encoding):
    for value in (_batch(5), _batch(0), META):
        data = _python2_pickle(value)
        assert b"_codecs" not in data and pickle.SHORT_BINSTRING + b"\x0b" in data  # b"batch_label", b"label_names"
        if b"data" in value:
            assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
        loaded = load_dataset_pickle(data, "data_batch_1", encoding=encoding)
        assert _same(loaded, pickle.loads(data, encoding=encoding))
    assert load_dataset_pickle(_python2_pickle(_batch(2)), "b")[b"data"].dtype == np.uint8


def test_the_layout_writer_files_load_as_pickle_load_does(tmp_path):
    from xrstudy.data.layouts import natural
    from xrstudy.data.layouts.records import Record

    image = np.zeros((8, 8, 3), np.uint8)
    records = [
        Record(
            patient=i,
            study=i,
            view="OTHER",
            sex="",
            age=0,
            findings={},
            image=image + i,
            split=("train", "valid", "test")[i % 3],
            label=("cat", "dog")[i % 2],
        )
        for i in range(12)
    ]
    natural.write_cifar10(tmp_path / "c10", records)
    natural.write_cifar100(tmp_path / "c100", records)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 7 + 3
    for path in files:
        with open(path, "rb") as handle:
            assert _same(load_dataset_pickle(path), pickle.load(handle, encoding="bytes")), path


def test_the_allowed_globals_are_exactly_what_the_real_formats_reference():
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for value in (_batch(), _batch(0), META):
        for data in [pickle.dumps(value, protocol=p) for p in range(5)] + [_python2_pickle(value)]:
            Recorder(io.BytesIO(data), encoding="bytes").load()
    numpy_name = RECONSTRUCT.__module__  # numpy._core.multiarray (2.x) / numpy.core.multiarray (1.x)
    both = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
    assert seen | both == set(ALLOWED_GLOBALS) and (numpy_name, "_reconstruct") in seen


# ---- what would run code is refused, and nothing runs ---------------------------------------------
class _Calls:
    """Pickles as a call of `function(*args)`, as a crafted file would."""

    def __init__(self, function, *args) -> None:
        self.call = function, args

    def __reduce__(self):
        return self.call


def test_a_batches_meta_that_runs_a_shell_command_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    meta = tmp_path / "batches.meta"
    crafted = {b"label_names": [b"cat"], b"num_vis": _Calls(os.system, f"touch {marker}")}
    meta.write_bytes(pickle.dumps(crafted, protocol=2))
    with pytest.raises(DatasetPickleError) as err:
        load_dataset_pickle(meta)
    assert not marker.exists()
    assert str(err.value) == (
        f"{meta}: refused to unpickle posix.system: a dataset pickle (dicts, lists, str / bytes, "
        f"numbers, numpy arrays) never refers to it"
    )
    assert err.value.refused == "posix.system" and isinstance(err.value, ValueError)
    pickle.loads(meta.read_bytes())  # what `pickle.load` did with the same file
    assert marker.exists()


@pytest.mark.parametrize(
    "data, refused",
    [
        (b"cos\nsystem\n(S'true'\ntR.", "os.system"),
        (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R.", "builtins.eval"),
        (pickle.dumps(_Calls(exec, "pass"), protocol=4), "builtins.exec"),
        (b"ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nNNtR.", "copy_reg._reconstructor"),
        (b"cnumpy.core.multiarray\nscalar\n(tR.", "numpy.core.multiarray.scalar"),
        (pickle.dumps(np.zeros(2), protocol=5), "numpy._core.numeric._frombuffer"),
    ],
    ids=["os.system", "eval", "stack-global-exec", "copyreg", "numpy-scalar", "protocol-5"],
)
def test_other_globals_are_refused_by_name(data, refused):
    if refused.endswith("_frombuffer") and RECONSTRUCT.__module__ == "numpy.core.multiarray":
        refused = "numpy.core.numeric._frombuffer"
    with pytest.raises(DatasetPickleError) as err:
        load_dataset_pickle(data, "cifar-10-batches-py/batches.meta")
    assert str(err.value).startswith(f"cifar-10-batches-py/batches.meta: refused to unpickle {refused}: ")
    assert err.value.refused == refused


class _Reducing(pickle.Pickler):
    def __init__(self, out, replace):
        super().__init__(out, protocol=2)
        self.replace = replace

    def reducer_override(self, obj):
        return self.replace(obj)


def _crafted(value, replace) -> bytes:
    out = io.BytesIO()
    _Reducing(out, replace).dump(value)
    return out.getvalue()


def _flagged_dtype(obj):  # a uint64 whose state claims it holds Python objects
    return (
        (np.dtype, ("u8", False, True), (3, "<", None, None, None, -1, -1, 1))
        if isinstance(obj, np.dtype)
        else NotImplemented
    )


def _huge_placeholder(obj):
    return (RECONSTRUCT, (np.ndarray, (10**6, 10**6), b"b")) if isinstance(obj, np.ndarray) else NotImplemented


@pytest.mark.parametrize(
    "data, reason",
    [
        (pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "numpy dtype object; only plain"),
        (pickle.dumps(np.zeros(2, dtype=[("a", "u1")]), protocol=2), "numpy dtype |V1; only plain"),
        (_crafted(np.zeros(2, np.uint64), _flagged_dtype), "numpy dtype uint64; only plain"),
        (_crafted(np.zeros(2), _huge_placeholder), "numpy _reconstruct with placeholder shape (1000000, 1000000)"),
        (b"cnumpy\nndarray\n((I1000000\nI1000000\nttR.", "numpy.ndarray called directly"),
        (b"c__builtin__\nbytes\n(I1000000000000\ntR.", "bytes() with arguments"),
        (b"c_codecs\nencode\n(Vx\nVzlib\ntR.", "_codecs.encode with encoding 'zlib'"),
        (b"\x80\x02}}b.", "refused to set the state of a dict"),
        (b"\x80\x02X\x01\x00\x00\x00aQ.", "refused a persistent id"),
    ],
    ids=[
        "object-dtype",
        "structured-dtype",
        "flags-rewritten",
        "huge-placeholder",
        "ndarray-call",
        "bytes-size",
        "other-codec",
        "build-on-dict",
        "persistent-id",
    ],
)
def test_numpy_and_builtin_wrappers_accept_only_what_numpy_and_python_write(data, reason):
    with pytest.raises(DatasetPickleError) as err:
        load_dataset_pickle(data, "test_batch")
    assert str(err.value).startswith(f"test_batch: {reason}"), str(err.value)


# ---- truncated, corrupt, missing or special files ----------------------------------------------------
def test_every_truncation_of_a_batch_is_one_clear_error(tmp_path):
    for data in (pickle.dumps(_batch(2), protocol=2), _python2_pickle(_batch(2)), pickle.dumps(_batch(2), protocol=4)):
        for size in range(len(data)):
            with pytest.raises(DatasetPickleError) as err:
                load_dataset_pickle(data[:size], "data_batch_1")
            assert str(err.value) == (
                "data_batch_1: the pickle ends early (a truncated file?); expected a dataset "
                "pickle (dicts, lists, str / bytes, numbers, numpy arrays)"
            ), size
    path = tmp_path / "data_batch_2"
    path.write_bytes(pickle.dumps(_batch(), protocol=2)[:-100])
    with pytest.raises(DatasetPickleError, match=rf"^{path}: the pickle ends early"):
        load_dataset_pickle(path)


def test_corrupt_missing_and_special_files_name_the_file(tmp_path):
    corrupt = tmp_path / "test_batch"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # a JPEG
    with pytest.raises(DatasetPickleError) as err:
        load_dataset_pickle(corrupt)
    assert str(err.value) == (
        f"{corrupt}: not a readable pickle (unknown opcode 0xff); expected a dataset pickle "
        f"(dicts, lists, str / bytes, numbers, numpy arrays)"
    )
    with pytest.raises(DatasetPickleError, match=rf"^{tmp_path / 'absent'}: cannot read \(No such file or directory\)"):
        load_dataset_pickle(tmp_path / "absent")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DatasetPickleError, match=r"fifo: not a regular file; expected a dataset pickle"):
        load_dataset_pickle(tmp_path / "fifo")
    with pytest.raises(DatasetPickleError, match=r"^data_batch_1: not a readable pickle"):
        load_dataset_pickle(b"\x80\x02}q\x00(" + b"K\x01" * 3 + b"s.", "data_batch_1")  # odd SETITEMS


def test_a_huge_declared_length_allocates_nothing():
    data = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc."  # BINBYTES8 of 1 TiB, 4 bytes present
    with pytest.raises(DatasetPickleError, match="ends early|not a readable pickle"):
        load_dataset_pickle(data, "x")


class _Shell:
    """Pickles as `posix.system(command)`: what a crafted dataset file would run on load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def _cifar10(tmp_path: Path) -> Path:
    from xrstudy.data import layouts, phantoms
    from xrstudy.data.layouts.records import Record

    rng = np.random.default_rng(0)
    records = [
        Record(i + 1, 1, "OTHER", "", 0, {}, split, phantoms.draw_shape(phantoms.SHAPES[c], rng, size=8), label)
        for i, (split, c, label) in enumerate(
            (split, c, label) for split in ("train", "test") for c, label in enumerate(("cat", "dog")) for _ in "ab"
        )
    ]
    return layouts.write_layout("cifar10", tmp_path / "cifar", records) / "cifar-10-batches-py"


def _plant(path: Path, marker: Path, protocol: int = 2) -> None:
    with open(path, "wb") as handle:
        pickle.dump({b"label_names": [b"cat", b"dog"], b"x": _Shell(f"touch {marker}")}, handle, protocol=protocol)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_batches_meta_that_runs_a_command_is_refused_by_data_inspect_and_sweep_plan(tmp_path, capsys, protocol):
    folder = _cifar10(tmp_path)
    marker = tmp_path / "ran"
    _plant(folder / "batches.meta", marker, protocol)
    message = (
        f"{folder / 'batches.meta'}: refused to unpickle posix.system: a dataset pickle (dicts, lists, str / bytes, "
        f"numbers, numpy arrays) never refers to it; CIFAR's python pickles are dicts with keys ['label_names']"
    )
    assert cli_error(capsys, ["data", "inspect", "cifar10", "--root", str(folder)]) == f"xrstudy: error: {message}"
    spec = {"defaults": {"out_dir": str(tmp_path / "out")}, "transfer": [{"target": "cifar10", "init": "scratch"}]}
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    assert cli.main(["sweep", "plan", str(sweep), "--root", f"cifar10={folder}", "--metadata-only"]) != 0
    assert message in capsys.readouterr().err
    assert not marker.exists()  # nothing ran


def test_a_crafted_data_batch_is_refused_when_its_pixels_are_decoded(tmp_path):
    from xrstudy.pixels import decoding

    folder = _cifar10(tmp_path)
    marker = tmp_path / "ran"
    data = {b"labels": [0, 1], b"data": np.zeros((2, 3072), np.uint8), b"x": _Shell(f"touch {marker}")}
    with open(folder / "data_batch_5", "wb") as handle:
        pickle.dump(data, handle, protocol=2)
    with pytest.raises(decoding.ImageError) as err:
        decoding.prepare_image(f"{folder / 'data_batch_5'}#0", 8, "RGB")
    assert str(err.value) == (
        f"{folder / 'data_batch_5'}#0: expected a CIFAR python batch with key b'data': {folder / 'data_batch_5'}: "
        "refused to unpickle posix.system: a dataset pickle (dicts, lists, str / bytes, numbers, numpy arrays) "
        "never refers to it"
    )
    assert not marker.exists()
    # The honest files of the layout writer still decode.
    assert decoding.prepare_image(f"{folder / 'test_batch'}#0", 8, "RGB").shape == (8, 8, 3)
