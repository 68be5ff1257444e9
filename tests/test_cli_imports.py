"""The CLI answers at once: `--help` and every data, results, figures, sweep-plan and sweep-status command run without
importing torch, timm or fastai (checked through `sys.modules` in a fresh interpreter, not a timer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xrstudy import demo
from xrstudy.results import legacy

HEAVY = ("torch", "timm", "fastai", "torchvision")
LEGACY = Path(__file__).parent / "data" / "legacy"
_PROBE = """
import contextlib, io, json, sys
from xrstudy import cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = cli.main(sys.argv[1:])
    except SystemExit as exit:  # --help
        code = exit.code
print(json.dumps({"code": code, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}))
""".replace("HEAVY", repr(HEAVY))


def heavy_imports(argv: list[str], cwd: Path) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["code"], report["heavy"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    roots = demo.write_sources(base / "data", demo.SIZES["tiny"])
    store = base / "store"
    legacy.import_legacy(LEGACY, store)
    return base, roots, store


def _commands(base: Path, roots: dict, store: Path) -> list[list[str]]:
    chexpert, nih, padchest = roots["chexpert"], roots["nih"], roots["padchest-cl"]
    commands = [
        ["--help"],
        ["data", "--help"],
        ["data", "inspect", "chexpert", "--root", str(chexpert), "--views", "PA,AP", "--json"],
        ["data", "inspect", "padchest", "--root", str(padchest), "--metadata-only", "--json"],
        [
            "data",
            "merge",
            "--source",
            f"chexpert={chexpert}",
            "--source",
            f"nih={nih}",
            "--labels",
            "union",
            "--metadata-only",
            "--json",
        ],
        [
            "data",
            "cache",
            "chexpert",
            "--root",
            str(chexpert),
            "--size",
            "32",
            "--workers",
            "1",
            "--cache-dir",
            str(base / "cache"),
        ],
        ["data", "split", "padchest", "--root", str(padchest), "--metadata-only", "--out", str(base / "split.csv")],
        ["results", "import-legacy", str(LEGACY), "--results", str(base / "legacy")],
        ["results", "table", "--results", str(store), "--out", str(base / "table.csv")],
        ["results", "variance", "--results", str(store), "--json"],
        ["results", "compare", "--against", str(LEGACY), "--results", str(store), "--fail-outside"],
        ["results", "scaling", "--results", str(store), "--json"],
        ["data", "audit", str(base / "split.csv"), "--root", f"padchest={padchest}", "--cache-dir", str(base / "h")],
        ["figures", "--results", str(store), "--out", str(base / "figs")],
        ["figures", "--results", str(store), "--out", str(base / "paper"), "--style", "paper"],
        ["sweep", "plan", "--help"],
        ["sweep", "plan", str(Path(__file__).resolve().parents[1] / "sweeps" / "paper.yaml"), "--json"],
        ["sweep", "status", str(Path(__file__).resolve().parents[1] / "sweeps" / "paper.yaml"), "--json"],
    ]
    return commands


@pytest.mark.slow
def test_data_results_figures_and_plan_commands_import_no_torch_timm_or_fastai(sources):
    base, roots, store = sources
    for argv in _commands(base, roots, store):
        code, heavy = heavy_imports(argv, base)
        assert code == 0, f"xrstudy {' '.join(argv)} exited {code}"
        assert not heavy, f"xrstudy {' '.join(argv)} imported {heavy}"


def test_help_imports_no_torch_timm_or_fastai(tmp_path):
    code, heavy = heavy_imports(["--help"], tmp_path)
    assert code == 0 and not heavy
