"""Decoding (8/16-bit, DICOM, CIFAR members), centre crop + resize, and the resumable uint8 cache."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import (
    SMALL,
    _Counter,
    build_in_subprocess,
    cache_file_bytes,
    save_array,
    sixteen_bit_gradient,
    small_pngs,
    truncated_jpeg,
)
from PIL import Image

from xrstudy import fileio
from xrstudy.config import RunConfig
from xrstudy.data import layouts, phantoms, sources
from xrstudy.pixels import decoding, imagecache
from xrstudy.pixels.decoding import load_image, prepare_image
from xrstudy.pixels.imagecache import build_cache, cache_key
from xrstudy.training import train

# ---- fixtures ---------------------------------------------------------------------------------


# ---- decoding ---------------------------------------------------------------------------------


# ---- cache ------------------------------------------------------------------------------------
def test_cache_round_trip_equals_prepare_image(tmp_path: Path, jpegs: list[str]) -> None:
    grey, _ = sixteen_bit_gradient(tmp_path / "grey16.png", 48, 64)
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
    bad = [truncated_jpeg(tmp_path / "cut.jpg"), str(tmp_path / "empty.png"), str(tmp_path / "gone.png")]
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


def test_content_key_follows_the_pixels_as_built(tmp_path: Path, jpegs: list[str]) -> None:
    """A quarantined file repaired and retried: same cache key, new pixels, so a new content key (what a
    probe's cached features are keyed by); the same pixels again give the same content key."""
    late = tmp_path / "late.jpg"
    late.write_bytes(b"")
    paths = [*jpegs, str(late)]
    cache = build_cache(paths, 8, tmp_path / "cache", "L", 1)
    assert str(late) in cache.quarantined
    shutil.copy(jpegs[0], late)
    (cache.folder / "quarantine.json").unlink()
    again = build_cache(paths, 8, tmp_path / "cache", "L", 1)
    assert again.key == cache.key and not again.quarantined and np.asarray(again[again.index_of(str(late))]).any()
    assert again.content_key != cache.content_key and again.content_key.startswith(f"{again.key}:")
    assert build_cache(paths, 8, tmp_path / "cache", "L", 1).content_key == again.content_key


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


@pytest.mark.slow
def test_kill_9_mid_build_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = small_pngs(tmp_path / "pngs", 300)
    paths_file = tmp_path / "paths.json"
    paths_file.write_text(json.dumps(paths))
    folder = tmp_path / "cache" / cache_key(paths, 8, "L")[:16]
    process = build_in_subprocess(paths_file, tmp_path / "cache", delay=0.01)
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
    paths = small_pngs(tmp_path / "pngs", 60) + [str(tmp_path / "gone.png")]
    paths_file = tmp_path / "paths.json"
    paths_file.write_text(json.dumps(paths))
    processes = [build_in_subprocess(paths_file, tmp_path / "cache", delay=0.02) for _ in range(2)]
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
    path = save_array(wide, tmp_path / "wide.png")
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


@pytest.fixture()
def broken_chexpert(tmp_path):
    """A miniature CheXpert whose train images include every kind of unreadable file."""
    root = layouts.write_layout(
        "chexpert", tmp_path / "CheXpert-v1.0-small", phantoms.xray_records(12, seed=0, style=SMALL, lateral_share=0.0)
    )
    table = sources.read_source("chexpert", root)
    train_paths = table.loc[table["split"] == "train", "path"].tolist()
    truncated, empty, missing, sixteen = train_paths[:4]
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 3])  # truncated JPEG
    open(empty, "wb").close()  # zero-byte file
    os.remove(missing)  # listed in train.csv, absent on disk
    # A 16-bit PNG where an 8-bit JPEG is expected: decoded at full depth, not dropped.
    Image.fromarray(np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 100).save(sixteen, format="PNG")
    return root, {"truncated": truncated, "empty": empty, "missing": missing, "sixteen": sixteen}


@pytest.mark.slow
def test_unreadable_images_are_quarantined_and_counted_in_the_result(broken_chexpert, tmp_path):
    root, broken = broken_chexpert
    cfg = RunConfig(
        name="faults",
        kind="pretrain",
        sources=("chexpert",),
        roots=(f"chexpert={root}",),
        arch="resnetv2_tiny_bit",
        image_size=16,
        batch_size=8,
        epochs=1,
        out_dir=str(tmp_path / "out"),
    )
    result = train.run(cfg)
    assert result["status"] == "ok"
    dropped = result["counts"]["dropped"]
    assert dropped["quarantine"] == 3, dropped  # truncated, empty, missing; the 16-bit PNG is readable
    saved = json.loads((cfg.results_dir / f"{cfg.run_id}.json").read_text())
    assert saved["counts"]["dropped"]["quarantine"] == 3
    reports = list((tmp_path / "out" / "cache").rglob("quarantine.json"))
    quarantined = {path for report in reports for path in json.loads(report.read_text())}
    assert {broken["truncated"], broken["empty"], broken["missing"]} <= quarantined
    assert broken["sixteen"] not in quarantined


def test_special_file_in_place_of_an_image_is_quarantined_with_its_kind(tmp_path):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    with pytest.raises(decoding.ImageError, match=r"image\.png: not a regular file"):
        decoding.prepare_image(fifo, 8, "L")  # stat only: it would block if it opened the FIFO


def _image_paths(tmp_path: Path, count: int = 6) -> list[str]:
    paths = []
    for i in range(count):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((20, 24), 10 * i, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_cache_checks_free_space_before_mapping(tmp_path, monkeypatch):
    paths = _image_paths(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=10**6, used=10**6 - 1000, free=1000))
    with pytest.raises(fileio.DiskFullError) as err:
        imagecache.build_cache(paths, 64, tmp_path / "cache", "L")
    folder = tmp_path / "cache" / imagecache.cache_key(paths, 64, "L")[:16]
    assert str(err.value).startswith(
        f"not enough free space in {folder} for the image cache (6 images at 64px L): needs 1.0 MiB, 1000 B free"
    )
    assert not list((tmp_path / "cache").rglob("images.u8"))  # nothing mapped, nothing half-written
    assert imagecache.check_free_space is fileio.check_free_space  # the training path calls the same check


def test_enospc_while_building_is_one_line_and_resume_gives_the_identical_cache(tmp_path, monkeypatch, capsys):
    paths = _image_paths(tmp_path, 10)
    reference = imagecache.build_cache(paths, 16, tmp_path / "reference", "L")
    real_save, calls = np.save, []

    def full_disk_on_second_chunk(handle, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # each chunk saves checksums.npy, then done.npy
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(handle, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", full_disk_on_second_chunk)
    with pytest.raises(fileio.DiskFullError) as err:
        imagecache.build_cache(paths, 16, tmp_path / "cache", "L", chunk_size=3)
    folder = tmp_path / "cache" / reference.key[:16]
    assert str(err.value).startswith(f"no space left on device writing {folder / 'done.npy'} (")
    monkeypatch.setattr(np, "save", real_save)  # space freed
    resumed = imagecache.build_cache(paths, 16, tmp_path / "cache", "L", chunk_size=3)
    assert resumed.reused == 3 and resumed.built == 7
    assert cache_file_bytes(folder) == cache_file_bytes(reference.folder)


def test_enospc_when_reserving_the_images_file_names_it(tmp_path, monkeypatch):
    paths = _image_paths(tmp_path)

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(fileio.DiskFullError, match=r"no space left on device writing .*images\.u8"):
        imagecache.build_cache(paths, 16, tmp_path / "cache", "L")


def _png_paths(folder: Path, count: int = 8) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.mark.parametrize("damage", ["random bytes", "zeros"])
def test_a_damaged_cache_is_found_on_first_read_naming_its_folder(tmp_path, damage):
    from xrstudy.pixels import imagecache

    paths = _png_paths(tmp_path / "images")
    built = imagecache.build_cache(paths, 16, tmp_path / "cache", "L")
    built.check_rows(np.arange(len(paths)))  # as built: every row matches
    images = built.folder / "images.u8"
    size = images.stat().st_size
    done = (built.folder / "done.npy").read_bytes()
    with open(images, "r+b") as handle:  # the done bitmap stays intact: only the checksums can tell
        handle.seek(3 * 16 * 16)
        handle.write(np.random.default_rng(1).bytes(2 * 16 * 16) if damage == "random bytes" else bytes(size - 768))
    assert (built.folder / "done.npy").read_bytes() == done
    reopened = imagecache.build_cache(paths, 16, tmp_path / "cache", "L")
    assert reopened.built == 0  # finished: reopened as it is, not rebuilt
    reopened.check_rows(np.array([0, 1, 2]))  # the rows before the damage are fine
    with pytest.raises(imagecache.CacheCorruptError) as err:
        reopened.check_rows(np.array([2, 3, 4, 5]))
    count = 2 if damage == "random bytes" else 3  # rows 3-4 overwritten; zeros: 3-7, of which 3-5 read
    assert str(err.value) == (
        f"image cache {built.folder}: {count} of the 3 images just read differ from the checksums recorded when the "
        f"cache was built (first: row 3, {paths[3]}); its images.u8 was damaged after the build. Delete "
        f"{built.folder} and run again: it is rebuilt from the image files"
    )


def test_a_cache_without_checksums_is_rebuilt_not_trusted(tmp_path):
    from xrstudy.pixels import imagecache

    paths = _png_paths(tmp_path / "images")
    built = imagecache.build_cache(paths, 16, tmp_path / "cache", "L")
    (built.folder / "checksums.npy").unlink()  # a cache built before checksums were recorded
    with open(built.folder / "images.u8", "r+b") as handle:
        handle.write(bytes(16 * 16))  # and damaged meanwhile
    again = imagecache.build_cache(paths, 16, tmp_path / "cache", "L")
    assert (again.built, again.reused) == (len(paths), 0)
    again.check_rows(np.arange(len(paths)))
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(built.images))
