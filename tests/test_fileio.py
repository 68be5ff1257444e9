"""`xrstudy.fileio`: a full disk in the shared writers (simulated, and on a real small tmpfs) is one line
naming the file, and nothing half-written is left."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import cache_file_bytes, one_error_line, phantom_records

from xrstudy import cli, fileio
from xrstudy.config import RunConfig
from xrstudy.data import layouts, sources, splits
from xrstudy.pixels import imagecache


def test_enospc_in_the_shared_writers_and_the_cli_names_the_path(tmp_path, monkeypatch, capsys):
    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", no_space)
    target = tmp_path / "results" / "run.json"
    with pytest.raises(fileio.DiskFullError, match=rf"no space left on device writing {target} \("):
        fileio.atomic_write_json(target, {"a": 1})
    assert not list(target.parent.iterdir())  # the temporary file is removed

    cfg = RunConfig(target="t")
    with pytest.raises(fileio.DiskFullError, match=r"cell\.yaml"):
        cfg.to_yaml(tmp_path / "cell.yaml")
    table = pd.DataFrame({"source": ["s"], "image_id": ["a"], "split": ["train"]})
    with pytest.raises(fileio.DiskFullError, match=r"no space left on device writing .*splits/s\.csv"):
        splits.save_split(table, tmp_path / "splits" / "s.csv")

    def handler(_args):
        raise OSError(errno.ENOSPC, "No space left on device")  # a writer that did not say which file

    monkeypatch.setattr(cli, "resolve_handler", lambda _target: handler)
    assert cli.main(["figures", "--results", str(tmp_path)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        "xrstudy: error: no space left on device (the writer did not "
        "say which file); free some space and run the same command again"
    )


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.slow
def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and permission to mount; skipped otherwise): `data cache` ends with one
    line (it was a SIGBUS, rc 135); with the free-space check switched off the reservation still fails
    cleanly; after the tmpfs grows, the cache equals one built on a roomy disk."""
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "1m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = layouts.write_layout(
            "chexpert", tmp_path / "CheXpert-v1.0-small", phantom_records(40, splits=(("train", 0.8), ("valid", 0.2)))
        )
        command = [
            sys.executable,
            "-m",
            "xrstudy.cli",
            "data",
            "cache",
            "chexpert",
            "--root",
            str(root),
            "--size",
            "256",
            "--workers",
            "1",
            "--cache-dir",
            str(small / "cache"),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert "not enough free space in" in one_error_line(done.stderr) and "needs" in done.stderr
        paths = sorted(sources.read_source("chexpert", root)["path"])
        unchecked = (
            f"from xrstudy.pixels import imagecache; imagecache.check_free_space = lambda *a, **k: None; "
            f"imagecache.build_cache({paths!r}, 256, {str(small / 'cache')!r}, 'L')"
        )
        done = subprocess.run([sys.executable, "-c", unchecked], capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and "DiskFullError: no space left on device writing" in done.stderr, done
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        resumed = imagecache.build_cache(paths, 256, small / "cache", "L").folder  # (the folder: no memory map
        reference = imagecache.build_cache(paths, 256, tmp_path / "roomy", "L").folder  # kept open on the tmpfs)
        assert cache_file_bytes(resumed) == cache_file_bytes(reference)
    finally:
        gc.collect()
        if subprocess.run(["umount", str(small)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(small)], capture_output=True)
