"""Decoding (8/16-bit, DICOM, CIFAR members), centre crop + resize, and the resumable uint8 cache."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from xrstudy import fileio
from xrstudy.pixels import imagecache
from xrstudy.pixels.decoding import ImageError, load_image, prepare_image
from xrstudy.pixels.imagecache import build_cache, cache_key


# ---- fixtures ---------------------------------------------------------------------------------
def _noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _save(array: np.ndarray, path: Path, **kwargs) -> str:
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def _sixteen_bit_gradient(path: Path, height: int = 64, width: int = 64) -> tuple[str, np.ndarray]:
    values = np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)
    return _save(values, path), values


def _truncated_jpeg(path: Path) -> str:
    full = path.with_name("full_" + path.name)
    _save(_noise(0, (64, 64, 3)), full, quality=90)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


@pytest.fixture(scope="session")
def rg1_uncr() -> str:
    """The real chest radiograph from the pydicom-data wheel, found without downloading."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data (RG1_UNCR.dcm) is not installed")
    return str(path)


@pytest.fixture
def jpegs(tmp_path: Path) -> list[str]:
    folder = tmp_path / "jpegs"
    folder.mkdir()
    return [_save(_noise(i, (30 + i % 7, 40, 3)), folder / f"{i:03d}.jpg") for i in range(24)]


_REAL_PREPARE = imagecache.prepare_image  # before any monkeypatch, so counters never wrap each other


class _Counter:
    """Stands in for prepare_image to count (and optionally interrupt) decodes."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls, self.stop_after = 0, stop_after

    def __call__(self, path, size, mode):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return _REAL_PREPARE(path, size, mode)


# ---- decoding ---------------------------------------------------------------------------------
def test_8bit_png_grey_is_scaled_by_255(tmp_path: Path) -> None:
    pixels = _noise(1, (20, 30))
    image = load_image(_save(pixels, tmp_path / "grey.png"))
    assert image.dtype == np.float32 and image.shape == (20, 30)
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-7)


def test_8bit_jpeg_rgb(tmp_path: Path) -> None:
    pixels = np.full((24, 32, 3), (200, 100, 50), dtype=np.uint8)
    image = load_image(_save(pixels, tmp_path / "colour.jpg", quality=95))
    assert image.shape == (24, 32, 3) and 0.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_allclose(image.mean(axis=(0, 1)), np.array([200, 100, 50]) / 255.0, atol=0.02)


def test_16bit_png_keeps_values_above_255(tmp_path: Path) -> None:
    path, values = _sixteen_bit_gradient(tmp_path / "padchest.png")
    assert Image.open(path).mode in ("I;16", "I")
    image = load_image(path)
    assert image.shape == values.shape
    np.testing.assert_allclose(image, values / 65535.0, atol=1e-6)
    assert len(np.unique(image)) > 256  # more levels than 8 bits can hold
    # Clipping to 8 bits first would saturate almost everything at 255; scaling keeps the gradient.
    prepared = prepare_image(path, 16, "L")
    assert prepared.min() < 20 and prepared.max() > 235
    assert np.all(np.diff(prepared.astype(int).ravel()) >= 0)


def test_rgb_source_as_l_is_luminance(tmp_path: Path) -> None:
    path = _save(np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8), tmp_path / "colour.png")
    grey = prepare_image(path, 4, "L")
    assert grey.shape == (4, 4) and grey.dtype == np.uint8
    assert np.all(np.abs(grey.astype(int) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1)


def test_grey_source_as_rgb_is_copied_to_3_channels(tmp_path: Path) -> None:
    path = _save(_noise(2, (16, 16)), tmp_path / "grey.png")
    colour = prepare_image(path, 8, "RGB")
    assert colour.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(colour[..., channel], prepare_image(path, 8, "L"))


def test_palette_and_rgba_sources_become_rgb(tmp_path: Path) -> None:
    rgb = _noise(3, (10, 10, 3))
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "palette.png")
    rgba = np.dstack([rgb, np.full((10, 10), 255, np.uint8)])
    assert load_image(tmp_path / "palette.png").shape == (10, 10, 3)
    np.testing.assert_allclose(load_image(_save(rgba, tmp_path / "rgba.png")), rgb / 255.0, atol=1e-7)


def test_dicom_chest_radiograph(rg1_uncr: str) -> None:
    import pydicom

    image = load_image(rg1_uncr)
    dataset = pydicom.dcmread(rg1_uncr)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    assert image.ndim == 2 and image.shape == (dataset.Rows, dataset.Columns)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.05 and image.max() - image.min() > 0.5  # a radiograph, not a flat field
    # MONOCHROME1: stored 0 is white, so the result is 1 - stored / (2**BitsStored - 1); no window.
    expected = 1.0 - dataset.pixel_array / (2.0**dataset.BitsStored - 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert prepare_image(rg1_uncr, 32, "L").shape == (32, 32)


def test_dicom_monochrome2_is_not_inverted(rg1_uncr: str, tmp_path: Path) -> None:
    import pydicom

    dataset = pydicom.dcmread(rg1_uncr)
    dataset.PhotometricInterpretation = "MONOCHROME2"
    copy = tmp_path / "flipped.dcm"
    dataset.save_as(copy)
    np.testing.assert_allclose(load_image(copy), 1.0 - load_image(rg1_uncr), atol=1e-6)


def test_cifar_batch_member(tmp_path: Path) -> None:
    data = _noise(4, (5, 3 * 32 * 32))
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3, 4]}, protocol=2))
    expected = data[2].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_allclose(load_image(f"{batch}#2"), expected / 255.0, atol=1e-7)
    np.testing.assert_array_equal(prepare_image(f"{batch}#2", 32, "RGB"), expected)
    with pytest.raises(ImageError, match="out of range"):
        load_image(f"{batch}#5")


def test_centre_crop_keeps_the_centre(tmp_path: Path) -> None:
    wide = np.zeros((40, 120), dtype=np.uint8)
    wide[:, 40:80] = 255  # the centre square is white, the sides black
    tall = wide.T.copy()
    for array, name in ((wide, "wide.png"), (tall, "tall.png")):
        path = _save(array, tmp_path / name)
        np.testing.assert_array_equal(prepare_image(path, 40, "L"), np.full((40, 40), 255, np.uint8))
        assert prepare_image(path, 10, "L").min() == 255


def _unreadable(folder: Path, kind: str) -> str:
    if kind == "truncated jpeg":
        return _truncated_jpeg(folder / "cut.jpg")
    path = folder / {"empty png": "empty.png", "missing": "nowhere.png", "not an image": "notes.png"}[kind]
    if kind == "empty png":
        path.write_bytes(b"")
    elif kind == "not an image":
        path.write_text("hello")
    return str(path)


@pytest.mark.parametrize("kind", ["truncated jpeg", "empty png", "missing", "not an image"])
def test_unreadable_input_raises_image_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = _unreadable(tmp_path, kind)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert isinstance(caught.value, ValueError) and caught.value.path == path
    assert path in str(caught.value) and "expected" in str(caught.value)


# ---- cache ------------------------------------------------------------------------------------
def test_cache_round_trip_equals_prepare_image(tmp_path: Path, jpegs: list[str]) -> None:
    grey, _ = _sixteen_bit_gradient(tmp_path / "grey16.png", 48, 64)
    paths = jpegs + [grey]
    for mode, shape in (("L", (12, 12)), ("RGB", (12, 12, 3))):
        cache = build_cache(paths, 12, tmp_path / "cache", mode, 1)
        assert len(cache) == len(paths) and sorted(cache.paths) == sorted(paths)
        folder = tmp_path / "cache" / cache.key[:16]
        assert {"images.u8", "paths.txt", "done.npy", "quarantine.json", "meta.json"} <= {
            p.name for p in folder.iterdir()
        }
        assert (folder / "paths.txt").read_text().splitlines() == list(cache.paths)
        for path in paths:
            array = np.asarray(cache[cache.index_of(path)])
            assert array.dtype == np.uint8 and array.shape == shape
            np.testing.assert_array_equal(array, prepare_image(path, 12, mode))
        assert cache.quarantined == {}


def test_parallel_build_equals_in_process_build(tmp_path: Path, jpegs: list[str]) -> None:
    serial = build_cache(jpegs, 10, tmp_path / "serial", "RGB", 1)
    parallel = build_cache(jpegs, 10, tmp_path / "parallel", "RGB", 2, chunk_size=4)
    assert parallel.key == serial.key and parallel.built == len(jpegs)
    np.testing.assert_array_equal(np.asarray(parallel.images), np.asarray(serial.images))


def test_cache_is_read_only_and_unknown_paths_are_named(tmp_path: Path, jpegs: list[str]) -> None:
    cache = build_cache(jpegs, 8, tmp_path / "cache", "L", 1)
    with pytest.raises(ValueError):
        cache[0][0, 0] = 1
    with pytest.raises(KeyError, match="nowhere.jpg"):
        cache.index_of("nowhere.jpg")


def test_key_changes_with_size_mode_and_path_set(jpegs: list[str]) -> None:
    key = cache_key(jpegs, 16, "L")
    assert cache_key(list(reversed(jpegs)) + jpegs[:3], 16, "L") == key  # sorted, unique
    assert len({key, cache_key(jpegs, 32, "L"), cache_key(jpegs, 16, "RGB"), cache_key(jpegs[1:], 16, "L")}) == 4


def test_fast_key_is_the_json_definition() -> None:
    """The key joined in C for plain paths is sha256 of the same JSON text as for any other path."""
    import hashlib
    import json

    def plain(paths, size, mode):
        spec = {"format": imagecache.FORMAT_VERSION, "size": size, "mode": mode, "paths": sorted(set(map(str, paths)))}
        return hashlib.sha256(json.dumps(spec, separators=(",", ":")).encode()).hexdigest()

    cases = [
        [],
        ["a.jpg"],
        ["b/2.png", "a/1.png", "a/1.png"],
        ['q"uote.jpg', "x.jpg"],
        ["back\\slash.jpg"],
        ["tab\there.jpg"],
        ["caf\u00e9.jpg", "z.jpg"],
        ["\u7eff.png"],
        [f"img{i:05d}.png" for i in range(500)],
    ]
    for paths in cases:
        assert cache_key(paths, 16, "L") == plain(paths, 16, "L"), paths


def test_reuse_does_no_decoding(tmp_path: Path, jpegs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_cache(jpegs, 8, tmp_path / "cache", "L", 1)
    counter = _Counter()
    monkeypatch.setattr(imagecache, "prepare_image", counter)
    again = build_cache(list(reversed(jpegs)), 8, tmp_path / "cache", "L", 1)
    assert counter.calls == 0 and again.built == 0 and again.reused == len(jpegs)
    assert "built 0, reused 24" in again.report()
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(first.images))


def test_empty_path_list(tmp_path: Path) -> None:
    cache = build_cache([], 8, tmp_path / "cache", "RGB", 2)
    assert len(cache) == 0 and np.asarray(cache.images).shape == (0, 8, 8, 3)


def test_unreadable_files_are_quarantined(tmp_path: Path, jpegs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    bad = [_truncated_jpeg(tmp_path / "cut.jpg"), str(tmp_path / "empty.png"), str(tmp_path / "gone.png")]
    (tmp_path / "empty.png").write_bytes(b"")
    cache = build_cache(jpegs + bad, 8, tmp_path / "cache", "L", 2, chunk_size=5)
    assert set(cache.quarantined) == set(bad)
    assert "truncated" in cache.quarantined[bad[0]] and "empty" in cache.quarantined[bad[1]]
    assert "not found" in cache.quarantined[bad[2]]
    report = cache.report()
    assert "quarantined 3" in report and str(cache.folder / "quarantine.json") in report
    assert json.loads((cache.folder / "quarantine.json").read_text()) == cache.quarantined
    for path in bad:
        assert not np.asarray(cache[cache.index_of(path)]).any()  # slot stays zeros
    for path in jpegs:
        np.testing.assert_array_equal(cache[cache.index_of(path)], prepare_image(path, 8, "L"))

    counter = _Counter()
    monkeypatch.setattr(imagecache, "prepare_image", counter)
    build_cache(jpegs + bad, 8, tmp_path / "cache", "L", 1)
    assert counter.calls == 0  # quarantined files are not retried on reuse ...
    (cache.folder / "quarantine.json").unlink()
    retried = build_cache(jpegs + bad, 8, tmp_path / "cache", "L", 1)
    assert counter.calls == 3 and set(retried.quarantined) == set(bad)  # ... unless the user asks


def test_interrupted_build_resumes_with_only_missing_images(
    tmp_path: Path, jpegs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = build_cache(jpegs, 8, tmp_path / "reference", "RGB", 1)
    monkeypatch.setattr(imagecache, "prepare_image", _Counter(stop_after=10))
    with pytest.raises(KeyboardInterrupt):
        build_cache(jpegs, 8, tmp_path / "cache", "RGB", 1, chunk_size=4)
    folder = tmp_path / "cache" / reference.key[:16]
    assert np.load(folder / "done.npy").sum() == 8  # two whole chunks flushed, the third lost

    counter = _Counter()
    monkeypatch.setattr(imagecache, "prepare_image", counter)
    resumed = build_cache(jpegs, 8, tmp_path / "cache", "RGB", 1, chunk_size=4)
    assert counter.calls == len(jpegs) - 8 and (resumed.built, resumed.reused) == (16, 8)
    np.testing.assert_array_equal(np.asarray(resumed.images), np.asarray(reference.images))


_BUILD_SCRIPT = """
import json, sys, time
from xrstudy.pixels import imagecache
real = imagecache.prepare_image
def slow(path, size, mode):
    time.sleep(float(sys.argv[3]))
    return real(path, size, mode)
imagecache.prepare_image = slow
cache = imagecache.build_cache(json.loads(open(sys.argv[1]).read()), 8, sys.argv[2], "L", 1, chunk_size=4)
print(json.dumps({"built": cache.built, "reused": cache.reused}))
"""


def _build_in_subprocess(paths_file: Path, cache_dir: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, XRSTUDY_NO_PROGRESS="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_BUILD_SCRIPT), str(paths_file), str(cache_dir), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _small_pngs(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    return [_save(_noise(i, (12, 12)), folder / f"{i:04d}.png") for i in range(count)]


@pytest.mark.slow
def test_kill_9_mid_build_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _small_pngs(tmp_path / "pngs", 300)
    paths_file = tmp_path / "paths.json"
    paths_file.write_text(json.dumps(paths))
    folder = tmp_path / "cache" / cache_key(paths, 8, "L")[:16]
    process = _build_in_subprocess(paths_file, tmp_path / "cache", delay=0.01)
    deadline = time.monotonic() + 60
    flushed = 0
    while flushed < 60 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
        try:
            flushed = int(np.load(folder / "done.npy").sum())
        except (OSError, ValueError, EOFError):
            flushed = 0
    assert process.poll() is None, "the build finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = np.load(folder / "done.npy")
    assert 60 <= done.sum() < len(paths) and done.sum() % 4 == 0  # whole chunks only

    counter = _Counter()
    monkeypatch.setattr(imagecache, "prepare_image", counter)
    resumed = build_cache(paths, 8, tmp_path / "cache", "L", 1, chunk_size=4)
    assert counter.calls == len(paths) - done.sum()
    uninterrupted = build_cache(paths, 8, tmp_path / "uninterrupted", "L", 1)
    np.testing.assert_array_equal(np.asarray(resumed.images), np.asarray(uninterrupted.images))


@pytest.mark.slow
def test_two_processes_building_the_same_cache(tmp_path: Path) -> None:
    paths = _small_pngs(tmp_path / "pngs", 60) + [str(tmp_path / "gone.png")]
    paths_file = tmp_path / "paths.json"
    paths_file.write_text(json.dumps(paths))
    processes = [_build_in_subprocess(paths_file, tmp_path / "cache", delay=0.02) for _ in range(2)]
    outcomes = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        outcomes.append(json.loads(stdout))
    # The lock serialises them: one decodes everything, the other reuses it.
    assert sorted(o["built"] for o in outcomes) == [0, 60]
    cache = build_cache(paths, 8, tmp_path / "cache", "L", 1)
    assert cache.built == 0 and set(cache.quarantined) == {str(tmp_path / "gone.png")}
    for path in paths[:-1]:
        np.testing.assert_array_equal(cache[cache.index_of(path)], prepare_image(path, 8, "L"))


# ---- reading the cache for training ---------------------------------------------------------------
def test_squash_mode_keeps_the_whole_image(tmp_path: Path) -> None:
    """The BiT pipeline's cache: the whole image resized to the square (its evaluation view,
    `Resize((crop, crop))`); the centre crop would lose the sides."""
    wide = np.zeros((40, 120), dtype=np.uint8)
    wide[:, :20] = 255  # a white band on the left edge, outside the centre square
    path = _save(wide, tmp_path / "wide.png")
    squashed = prepare_image(path, 30, "L:squash")
    assert squashed.shape == (30, 30) and squashed[:, :4].min() == 255 and squashed[:, 10:].max() == 0
    assert prepare_image(path, 30, "L").max() == 0
    assert prepare_image(path, 30, "RGB:squash").shape == (30, 30, 3)
    assert cache_key([path], 30, "L:squash") != cache_key([path], 30, "L")
    cache = build_cache([path], 30, tmp_path / "cache", "L:squash", 1)
    np.testing.assert_array_equal(cache[0], squashed)


def test_original_sizes_come_from_headers_and_are_kept_beside_the_cache(
    tmp_path: Path, jpegs: list[str], rg1_uncr: str
) -> None:
    paths = jpegs[:3] + [rg1_uncr]
    cache = build_cache(paths, 8, tmp_path / "cache", "L:squash", 1)
    sizes = cache.original_sizes()
    for path, (height, width) in zip(cache.paths, sizes):
        assert (height, width) == load_image(path).shape[:2]
    assert (cache.folder / "sizes.npy").is_file()
    np.testing.assert_array_equal(build_cache(paths, 8, tmp_path / "cache", "L:squash", 1).original_sizes(), sizes)


def test_rows_of_maps_paths_to_cache_rows_in_one_lookup(tmp_path: Path, jpegs: list[str]) -> None:
    cache = build_cache(jpegs, 8, tmp_path / "cache", "L", 1)
    query = [jpegs[5], jpegs[0], jpegs[5]]
    rows = cache.rows_of(query)
    assert rows.dtype == np.int64 and [cache.paths[r] for r in rows] == query
    assert cache.index_of(jpegs[3]) == list(cache.paths).index(jpegs[3])
    with pytest.raises(KeyError, match="nowhere.jpg"):
        cache.rows_of([jpegs[0], "nowhere.jpg"])


def test_a_build_that_cannot_fit_is_refused_before_it_starts(
    tmp_path: Path, jpegs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, missing = imagecache.bytes_to_build(jpegs, 16, tmp_path / "cache", "RGB")
    assert missing == len(jpegs) * 16 * 16 * 3 and folder.parent == tmp_path / "cache"
    imagecache.check_free_space(folder, missing)  # plenty here
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: SimpleNamespace(free=100))
    with pytest.raises(fileio.DiskFullError, match=r"not enough free space in .* needs .*, 100 B free"):
        imagecache.check_free_space(folder, missing)
    monkeypatch.undo()
    build_cache(jpegs, 16, tmp_path / "cache", "RGB", 1)
    assert imagecache.bytes_to_build(jpegs, 16, tmp_path / "cache", "RGB")[1] == 0  # finished: nothing to check
