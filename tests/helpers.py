"""Plain helpers shared by several test modules (fixtures are in conftest.py): the repository's fixture
paths, one-line CLI errors, stub sweeps, small images and phantom records, results for the store tests."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.data import phantoms
from xrstudy.pixels import imagecache
from xrstudy.results import store

TESTS = Path(__file__).parent


STUB = "sweep_stub:execute"


def sweep_spec(out_dir: Path) -> dict:
    return {
        "defaults": {"out_dir": str(out_dir), "roots": ["chexpert=/data/c", "cifar10=/data/x"]},
        "pretrain": [
            {
                "name": "chexpert",
                "sources": ["chexpert"],
                "grid": {"arch": ["resnetv2_50x1_bit", "resnetv2_152x4_bit"]},
            },
            {"name": "c+m", "sources": ["chexpert", "mimic"]},
        ],
        "transfer": [
            {
                "target": "cifar10",
                "init": "pretrain:chexpert",
                "name": "t-chexpert",
                "grid": {"arch": ["resnetv2_50x1_bit", "resnetv2_152x4_bit"], "shots": [1, 0], "seed": [0, 1]},
            },
            {
                "target": "cifar10",
                "init": "timm",
                "arch": "resnetv2_50x1_bit.goog_in21k",
                "name": "t-in21k",
                "init_label": "imagenet21k",
            },
        ],
    }


def executions_of(log: Path, event: str = "start") -> collections.Counter:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in log.read_text().splitlines() if line.split()[-1] == event)


EXAMPLE = TESTS.parent / "notebooks" / "example-results"


PAPER_FORMAT = TESTS.parent / "notebooks" / "paper-format-results"


SMALL = phantoms.PhantomStyle(height=24, width=20)


def phantom_records(n: int = 8, **options):
    return phantoms.xray_records(n, seed=0, style=SMALL, lateral_share=0.0, **options)


def sigkill_when(child: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 240) -> None:
    """SIGKILL `child` as soon as `ready()` holds (polled while it runs); it must not have ended before."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and child.poll() is None and not ready():
            time.sleep(0.2)
        assert child.poll() is None, "the child ended before it was killed"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def cache_file_bytes(folder: Path) -> dict[str, bytes]:
    names = ("images.u8", "done.npy", "checksums.npy", "quarantine.json", "paths.txt")
    return {name: (folder / name).read_bytes() for name in names}


def cli_error(capsys, argv: list[str]) -> str:
    """The one line `xrstudy ARGV` prints when it refuses (exit status 2), and nothing on stdout."""
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    return one_error_line(err)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def save_array(array: np.ndarray, path: Path, **kwargs) -> str:
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def sixteen_bit_gradient(path: Path, height: int = 64, width: int = 64) -> tuple[str, np.ndarray]:
    values = np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)
    return save_array(values, path), values


def truncated_jpeg(path: Path) -> str:
    full = path.with_name("full_" + path.name)
    save_array(noise(0, (64, 64, 3)), full, quality=90)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


REAL_PREPARE = imagecache.prepare_image  # before any monkeypatch, so counters never wrap each other


class _Counter:
    """Stands in for prepare_image to count (and optionally interrupt) decodes."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls, self.stop_after = 0, stop_after

    def __call__(self, path, size, mode):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return REAL_PREPARE(path, size, mode)


BUILD_SCRIPT = """
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


def build_in_subprocess(paths_file: Path, cache_dir: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, XRSTUDY_NO_PROGRESS="1")
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(BUILD_SCRIPT), str(paths_file), str(cache_dir), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def small_pngs(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    return [save_array(noise(i, (12, 12)), folder / f"{i:04d}.png") for i in range(count)]


LEGACY = Path(__file__).parent / "data" / "legacy"


def result_cfg(**changes) -> RunConfig:
    base = dict(kind="transfer", target="cifar10", shots=10, seed=1, out_dir="unused")
    return RunConfig(**{**base, **changes})


def new_ok_result(
    cfg: RunConfig, status: str = "ok", per_class: dict | None = None, ci: dict | None = None, **metrics
) -> dict:
    extra = {k: v for k, v in (("per_class", per_class), ("ci", ci)) if v is not None}
    return store.new_result(cfg, metrics or {"test/acc": 0.9, "test/auc": 0.8}, status=status, **extra)


def concurrent_writer(args):
    results_dir, seed, repeat = args
    cfg = result_cfg(seed=seed)
    for i in range(repeat):
        store.save(new_ok_result(cfg, **{"test/acc": i / repeat}), results_dir)
    return cfg.run_id
