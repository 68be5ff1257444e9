"""`xrstudy` as a command: bad input ends in one line and exit status 2, Ctrl-C at start-up in one line and
130, a config typo is reported before torch is imported, and the data commands say what they did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_error, one_error_line
from PIL import Image

from xrstudy import cli
from xrstudy.data import sources


def test_cli_reports_bad_input_clearly_and_exits_2(tmp_path, capsys):
    (tmp_path / "nih").mkdir()
    (tmp_path / "nih" / "Data_Entry_2017_v2020.csv").write_text("Image Index,Patient ID\n1.png,1\n")
    code = cli.main(["data", "inspect", "nih", "--root", str(tmp_path / "nih"), "--metadata-only", "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Data_Entry_2017_v2020.csv: missing column(s) ['Finding Labels', 'View Position']" in err
    assert "Traceback" not in err


def test_ctrl_c_while_building_the_parser_or_importing_a_command(monkeypatch, capsys):
    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["--help"]) == 130
    assert "interrupted" in one_error_line(capsys.readouterr().err)
    monkeypatch.undo()
    monkeypatch.setattr(cli, "resolve_handler", interrupted)
    assert cli.main(["figures"]) == 130
    assert "interrupted" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_ctrl_c_during_the_console_scripts_imports(tmp_path):
    """What the `xrstudy` script runs (`from xrstudy.cli import main; sys.exit(main())`), with Ctrl-C
    arriving while PyYAML is imported: importing the script's module loads only the standard library,
    so the interrupt lands inside `main`."""
    script = (
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'yaml': raise KeyboardInterrupt\n"
        "from xrstudy.cli import main\n"
        "assert not [m for m in sys.modules if m.startswith('xrstudy.') and m != 'xrstudy.cli'], sys.modules\n"
        "sys.modules.pop('yaml', None); sys.meta_path.insert(0, CtrlC())\n"
        "sys.exit(main(['--help']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])},
    )
    assert done.returncode == 130, done.stderr
    assert "interrupted" in one_error_line(done.stderr)


@pytest.mark.slow  # a subprocess
def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`xrstudy sweep plan sweeps/paper.yaml | head -1`: the rest of the table has nowhere to go. The command
    ends with 141 (128 + SIGPIPE, as git does), and stderr holds no error line or traceback."""
    paper = Path(cli.__file__).parents[1] / "sweeps" / "paper.yaml"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from xrstudy.cli import main; sys.exit(main())",
            "sweep",
            "plan",
            str(paper),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        first = proc.stdout.readline()
        proc.stdout.close()  # as `head -1` does: far more than a pipe's buffer is still to come
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert first.strip() and code == cli.BROKEN_PIPE
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err


_TRAIN_PROBE = """
import contextlib, io, json, sys
from xrstudy import cli
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = cli.main(["train", sys.argv[1]])
print(json.dumps({"code": code, "err": err.getvalue(), "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow  # a subprocess
def test_train_reports_a_typo_in_the_config_before_importing_torch(tmp_path):
    config = tmp_path / "cell.yaml"
    config.write_text("kind: transfer\ntarget: cifar10\nshotz: 5\n")
    done = subprocess.run(
        [sys.executable, "-c", _TRAIN_PROBE, str(config)], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 2 and report["torch"] is False, report
    assert one_error_line(report["err"]).startswith(
        f"xrstudy: error: {config}: unknown RunConfig field(s) ['shotz']; known: "
    )


def test_data_shots_0_says_full_shot_has_no_k_shot_set(tmp_path, capsys):

    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    argv = ["data", "shots", "mypets", "--root", str(tmp_path / "pets"), "--mode", "exact", "--metadata-only"]
    assert cli_error(capsys, [*argv, "--shots", "0"]) == (
        "xrstudy: error: mypets-0-shot: shots 0 is full shot (every training image), which has no k-shot set to "
        "list; ask for k >= 1 images per class"
    )
    assert cli.main([*argv, "--shots", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 2 and err.startswith("2 of ")


def test_cli_cache_builds_then_reuses(roots, tmp_path, capsys):
    from xrstudy import cli

    args = [
        "data",
        "cache",
        "nih",
        "--root",
        str(roots["nih"]),
        "--size",
        "16",
        "--workers",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    images = len(sources.read_source("nih", roots["nih"]))
    assert f"({images} images, 16px L)" in first and f"built {images}" in first and "quarantined 0" in first
    assert cli.main(args) == 0
    assert f"reused {images}" in capsys.readouterr().out
