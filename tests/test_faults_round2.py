"""The second adversarial round (issue 19): each fault a careless or hostile user can cause ends in one line
naming the file, line or field, or in an honest count, and nothing else is written.

The loaders themselves are tested in tests/test_yamlfiles.py and tests/test_pickles.py; here are the call
sites: the CLI, sweep files, cell configs, CIFAR roots, checkpoints, the legacy importer, the store, the
image cache and the figures.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from xrstudy import cli
from xrstudy.config import ConfigError, RunConfig
from xrstudy.sweeps import slurm, sweepfile
from xrstudy.sweeps.sweepfile import SweepError


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _cli_error(capsys, argv: list[str]) -> str:
    """The one line `xrstudy ARGV` prints when it refuses (exit status 2), and nothing on stdout."""
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    return _one_error_line(err)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- sweep and cell YAML (items 2-4; mixed key types, deep nesting) -------------------------------
SWEEP = """\
defaults: {out_dir: OUT}
transfer:
  - {target: cifar10, init: scratch, arch: resnetv2_50x1_bit, shots: 1, name: first}
pretrain: []
transfer:
  - {target: pets, init: scratch, arch: resnetv2_50x1_bit, shots: 5, name: second}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text.replace("OUT", str(path.parent / "out")))
    return path


def test_a_repeated_transfer_section_is_refused_naming_file_line_and_key(tmp_path, capsys):
    sweep = _write(tmp_path / "sweep.yaml", SWEEP)
    for command in ("plan", "run", "submit"):
        extra = ["--dry-run"] if command != "plan" else []
        line = _cli_error(capsys, ["sweep", command, str(sweep), *extra])
        assert line == f"xrstudy: error: {sweep}:5: key 'transfer' repeated (first at line 2)"
    assert _files(tmp_path) == ["sweep.yaml"]  # nothing planned, run or written


def test_repeated_shots_in_one_mapping_of_a_sweep_or_a_cell_config(tmp_path, capsys):
    sweep = _write(
        tmp_path / "sweep.yaml",
        "transfer:\n  - {target: cifar10, init: scratch, shots: 1, shots: 10}\n",
    )
    with pytest.raises(SweepError) as err:
        sweepfile.load_sweep(sweep)
    assert str(err.value) == f"{sweep}:2: key 'shots' repeated (first at line 2)"
    cell = _write(tmp_path / "cell.yaml", "kind: transfer\ntarget: cifar10\nshots: 1\nseed: 0\nshots: 10\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(cell)
    assert str(err.value) == f"{cell}:5: key 'shots' repeated (first at line 3)"
    grid = _write(
        tmp_path / "grid.yaml",
        "transfer:\n  - target: cifar10\n    grid:\n      seed: [0]\n      shots: [1]\n      shots: [10]\n",
    )
    line = _cli_error(capsys, ["sweep", "plan", str(grid)])
    assert line == f"xrstudy: error: {grid}:6: key 'shots' repeated (first at line 5)"


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_in_a_field_is_refused_in_a_short_message(tmp_path, capsys):
    bomb = _laughs(9).replace("l8:", "name:")
    assert len(bomb) < 600
    cell = tmp_path / "cell.yaml"
    cell.write_text("kind: transfer\ntarget: cifar10\n" + bomb)
    line = _cli_error(capsys, ["train", str(cell)])
    assert line == (
        f"xrstudy: error: {cell}:6: aliases repeat more than 10,000 YAML nodes (at *l2, 1,111 nodes); "
        "write the values out or use fewer aliases"
    )
    # Below the alias bound a value can still be long: a message shows it cut, never whole.
    long = tmp_path / "long.yaml"
    long.write_text("kind: transfer\ntarget: cifar10\ninit: &i [" + ", ".join(["abcdefgh"] * 500) + "]\nname: *i\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(long)
    assert len(str(err.value)) < 400 and "..." in str(err.value), str(err.value)


def test_fifty_thousand_levels_and_mixed_key_types_are_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("transfer: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert (
        _cli_error(capsys, ["sweep", "plan", str(deep)]) == f"xrstudy: error: {deep}:1: nested deeper than 100 levels"
    )
    mixed = _write(tmp_path / "mixed.yaml", "transfer:\n  - target: cifar10\n    1: x\n")
    assert _cli_error(capsys, ["sweep", "plan", str(mixed)]) == (
        f"xrstudy: error: {mixed}:3: key 1 is an int, not a string; keys are field names (quote it if it is one)"
    )
    # A dict handed over by code (a notebook) is not YAML: its mixed keys are named, not a TypeError.
    with pytest.raises(SweepError) as err:
        sweepfile.load_sweep({"transfer": [{"target": "cifar10", 1: "x", "2": "y"}]})
    assert str(err.value) == "<sweep>: transfer[0]: unknown key(s) ['2', 1]; allowed: RunConfig fields and 'grid'"
    with pytest.raises(ConfigError, match=r"^config: unknown RunConfig field\(s\) \['2', 1\]; known: "):
        RunConfig.from_dict({"kind": "transfer", "target": "cifar10", 1: "x", "2": "y"})


GRID_100_TO_THE_5 = "transfer:\n  - target: cifar10\n    init: scratch\n    grid:\n" + "".join(
    f"      {key}: [{', '.join(str(v) for v in range(1, 101))}]\n" for key in ("seed", "shots", "steps", "lr", "mixup")
)


def test_a_grid_of_100_to_the_5_cells_is_refused_by_count_naming_the_block(tmp_path, capsys):
    sweep = _write(tmp_path / "huge.yaml", GRID_100_TO_THE_5)
    assert len(sweep.read_bytes()) < 2500
    line = _cli_error(capsys, ["sweep", "plan", str(sweep)])
    assert line == (
        f"xrstudy: error: {sweep}: transfer[0]: grid of 10,000,000,000 cells (seed 100 x shots 100 x steps 100 x "
        "lr 100 x mixup 100) exceeds the limit of 10,000 cells per sweep; split the sweep or raise the limit "
        "(--max-grid-cells N)"
    )


def test_the_grid_limit_counts_all_blocks_and_an_option_raises_it(tmp_path, capsys):
    block = {"target": "cifar10", "init": "scratch", "grid": {"seed": [0, 1, 2]}}
    spec = {"defaults": {"out_dir": str(tmp_path / "out")}, "transfer": [block, {**block, "shots": 5}]}
    assert len(sweepfile.load_sweep(spec, max_grid_cells=6)) == 6
    with pytest.raises(SweepError) as err:
        sweepfile.load_sweep(spec, max_grid_cells=5)
    assert str(err.value) == (
        "<sweep>: transfer[1]: grid of 3 cells (seed 3), 6 with the 3 before it, exceeds the limit of 5 cells per "
        "sweep; split the sweep or raise the limit (--max-grid-cells N)"
    )
    sweep = tmp_path / "six.yaml"
    sweep.write_text(yaml.safe_dump(spec))
    assert _cli_error(capsys, ["sweep", "plan", str(sweep), "--max-grid-cells", "5"]).startswith(
        f"xrstudy: error: {sweep}: transfer[1]: grid of 3 cells (seed 3), 6 with the 3 before it, exceeds the limit of"
    )
    assert cli.main(["sweep", "plan", str(sweep), "--max-grid-cells", "6", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6
    with pytest.raises(SystemExit):
        cli.main(["sweep", "plan", str(sweep), "--max-grid-cells", "0"])
    assert "--max-grid-cells: 0; expected an integer >= 1" in capsys.readouterr().err


# ---- options accepted without a word -------------------------------------------------------------
@pytest.fixture()
def small_sweep(tmp_path) -> Path:
    spec = {
        "defaults": {"out_dir": str(tmp_path / "out")},
        "transfer": [{"target": "cifar10", "init": "scratch", "name": "c10", "grid": {"seed": [0, 1]}}],
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_an_only_glob_that_matches_nothing_is_an_error(small_sweep, capsys):
    for command in (["plan"], ["run", "--dry-run"], ["submit", "--dry-run"]):
        line = _cli_error(capsys, ["sweep", *command, str(small_sweep), "--only", "c100*"])
        assert line == (
            "xrstudy: error: --only 'c100*' matches no cell name or run id of the sweep's 2 cell(s) (names: ['c10'])"
        )
    assert not (small_sweep.parent / "out").exists()
    assert len(sweepfile.select(sweepfile.load_sweep(small_sweep), "c1*")) == 2


def test_an_unknown_device_is_an_error_naming_the_known_ones(small_sweep, capsys):
    for command in (["plan"], ["submit", "--dry-run"]):
        line = _cli_error(capsys, ["sweep", *command, str(small_sweep), "--device", "H10"])
        assert line.startswith("xrstudy: error: device 'H10' has no row in the throughput or memory tables (")
        assert line.endswith("; known devices: A100-40GB, H100")
    assert not (small_sweep.parent / "out").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--gpus-per-node", "0", "argument --gpus-per-node: 0; expected an integer >= 1"),
        ("--max-nodes", "0", "argument --max-nodes: 0; expected an integer >= 1"),
        ("--pretrain-nodes", "-1", "argument --pretrain-nodes: -1; expected an integer >= 1"),
        ("--pretrain-nodes", "two", "argument --pretrain-nodes: 'two' is not an integer"),
    ],
)
def test_node_and_gpu_counts_below_one_are_refused_before_anything_is_written(
    small_sweep, capsys, option, value, message
):
    with pytest.raises(SystemExit) as exit:
        cli.main(["sweep", "submit", str(small_sweep), "--dry-run", option, value])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().endswith(message)
    assert not (small_sweep.parent / "out").exists()


@pytest.mark.parametrize(
    "keyword, value, message",
    [
        ("gpus_per_node", 0, "--gpus-per-node 0; expected an integer >= 1"),
        ("max_nodes", -2, "--max-nodes -2; expected an integer >= 1"),
        ("pretrain_nodes", -1, "--pretrain-nodes -1; expected an integer >= 1 (or none: sized by the plan)"),
    ],
)
def test_submit_refuses_the_same_counts_from_code(small_sweep, tmp_path, keyword, value, message):
    cells = sweepfile.load_sweep(small_sweep)
    with pytest.raises(SweepError) as err:
        slurm.submit(cells, folder=tmp_path / "slurm", dry_run=True, **{keyword: value})
    assert str(err.value) == message
    assert not (tmp_path / "slurm").exists()


# ---- xrstudy train CONFIG: the config is read before torch is imported ---------------------------
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
    assert _one_error_line(report["err"]).startswith(
        f"xrstudy: error: {config}: unknown RunConfig field(s) ['shotz']; known: "
    )


# ---- item 1: CIFAR's pickles never run what they name ----------------------------------------------
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
    assert _cli_error(capsys, ["data", "inspect", "cifar10", "--root", str(folder)]) == f"xrstudy: error: {message}"
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


# ---- item 6: every reader that opens a weight file by name checks it is a regular file first ------------
def _returns(call, fifo: Path, timeout: float = 120.0):
    """`call()`'s outcome (value or exception), failing the test if it waits on `fifo` instead."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():  # release the reader (a writer that closes at once), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"waited on the FIFO {fifo}")
    return outcome


def test_weight_readers_name_a_fifo_instead_of_waiting_on_it(tmp_path, capsys):
    from xrstudy import fileio
    from xrstudy.training import callbacks, checkpoints, paper_weights

    fifo = tmp_path / "model.pth.tar"
    os.mkfifo(fifo)
    outcome = _returns(
        lambda: cli.main(["models", "import-paper", str(fifo), "--arch", "resnetv2_50x1_bit", "--out", "x.pt"]), fifo
    )
    assert outcome == {"value": 2}
    assert _one_error_line(capsys.readouterr().err) == (
        f"xrstudy: error: {fifo}: not a regular file (a FIFO (named pipe)); expected the authors' model.pth.tar"
    )
    cases = [
        (lambda: paper_weights.read_paper_checkpoint(fifo, "resnetv2_50x1_bit"), "expected the authors' model.pth.tar"),
        (lambda: checkpoints.read_state_dict(fifo), "expected a weight file"),
        (lambda: checkpoints.read_checkpoint(fifo), "expected an xrstudy checkpoint"),
        (lambda: callbacks.load_train_state(fifo), "expected a training state: delete it to start the run afresh"),
        (lambda: fileio.sha256_file(fifo), "is a FIFO (named pipe), not a regular file"),
    ]
    for call, expected in cases:
        error = _returns(call, fifo)["error"]
        assert str(fifo) in str(error) and expected in str(error), error
    assert _files(tmp_path) == ["model.pth.tar"]


# ---- items 7, 8: the legacy importer stores what it says, or nothing -----------------------------------
HEADER = "metric_value,metric,path,seed,shot,pretrained_model,dataset,last_step\n"


def _legacy(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / name).write_text(HEADER + rows)
    return folder


@pytest.mark.parametrize(
    "value, problem",
    [
        ("inf", "column 'metric_value': 'inf' is not a finite number"),
        ("-inf", "column 'metric_value': '-inf' is not a finite number"),
        ("1e999", "column 'metric_value': '1e999' is not a finite number"),
        ("1.5", "column 'metric_value': 1.5 is outside [0, 1] for test/acc"),
        ("-0.01", "column 'metric_value': -0.01 is outside [0, 1] for test/acc"),
    ],
)
def test_legacy_values_not_finite_or_outside_0_1_are_refused_naming_file_line_column(tmp_path, capsys, value, problem):
    source = _legacy(
        tmp_path / "csv",
        {
            "finetuning_results_cifar10_test_acc.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,cifar10,500\n"
            f"{value},test/acc,p,1,1_shot,chexpert_bit50x1,cifar10,500\n"
        },
    )
    line = _cli_error(capsys, ["results", "import-legacy", str(source), "--results", str(tmp_path / "store")])
    assert line == (
        f"xrstudy: error: {source}: 1 row(s) cannot be imported (nothing was written): "
        f"finetuning_results_cifar10_test_acc.csv:3, {problem}"
    )
    assert not (tmp_path / "store").exists()


def test_other_fractions_are_bounded_and_other_metrics_only_finite(tmp_path):
    from xrstudy.results import legacy

    rows = (
        "1.2,test/mean_auc,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
        "1.1,test/average_precision_class_3,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
        "2.5,test/loss,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
        "nan,test/mean_average_precision,p,0,1_shot,chexpert_bit50x1,padchest,500\n"
    )
    source = _legacy(tmp_path / "csv", {"finetuning_results_padchest_test_mean_auc.csv": rows})
    with pytest.raises(legacy.ResultError) as err:
        legacy.read_legacy(source)
    assert str(err.value) == (
        f"{source}: 2 row(s) cannot be imported (nothing was written): "
        "finetuning_results_padchest_test_mean_auc.csv:2, column 'metric_value': 1.2 is outside [0, 1] for "
        "test/mean_auc; finetuning_results_padchest_test_mean_auc.csv:3, column 'metric_value': 1.1 is outside "
        "[0, 1] for test/average_precision_class_3"
    )


@pytest.mark.parametrize(
    "first, second",
    [
        (("covidx_cxr2", "1_shot"), ("covidx", "1_shot")),
        (("covidx", "0_shot"), ("covidx", "full_shot")),
        (("covidx", "05_shot"), ("covidx", "5_shot")),
    ],
)
def test_two_spellings_of_one_cell_are_one_run_and_two_values_are_refused(tmp_path, capsys, first, second):
    from xrstudy.results import store

    def rows(value_a: float, value_b: float) -> dict[str, str]:
        (dataset_a, shot_a), (dataset_b, shot_b) = first, second
        return {
            "finetuning_results_covidx_cxr2_test_acc.csv": f"{value_a},test/acc,a,0,{shot_a},nih_bit50x1,{dataset_a},\n"
            f"0.5,test/acc,a,1,{shot_a},nih_bit50x1,{dataset_a},\n",
            "finetuning_results_covidx_test_acc.csv": f"{value_b},test/acc,b,0,{shot_b},nih_bit50x1,{dataset_b},\n",
        }

    agreeing = _legacy(tmp_path / "same", rows(0.75, 0.75))
    assert cli.main(["results", "import-legacy", str(agreeing), "--results", str(tmp_path / "s1")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"imported 2 paper runs into {tmp_path / 's1'}: 3 rows from 2 files (3 distinct, 0 exact")
    assert "1 more merged into a row of the same cell, metric and value" in printed and "all stored" in printed
    found = store.scan(tmp_path / "s1").results
    assert sorted(sum(len(lines) for lines in r["legacy"]["rows"].values()) for r in found) == [1, 2]
    merged = next(r for r in found if r["config"]["seed"] == 0)
    assert merged["metrics"] == {"test/acc": 0.75}
    assert merged["legacy"]["rows"] == {
        "finetuning_results_covidx_cxr2_test_acc.csv": [2],
        "finetuning_results_covidx_test_acc.csv": [2],
    }

    conflicting = _legacy(tmp_path / "differ", rows(0.75, 0.25))
    line = _cli_error(capsys, ["results", "import-legacy", str(conflicting), "--results", str(tmp_path / "s2")])
    shot = "full_shot" if first[1] == "0_shot" else "5_shot" if first[1] == "05_shot" else "1_shot"
    assert line == (
        "xrstudy: error: 1 problem(s) in the legacy CSVs (nothing was written): "
        f"covidx/nih_bit50x1/{shot}/seed 0 test/acc has 2 values (finetuning_results_covidx_cxr2_test_acc.csv:2, "
        "finetuning_results_covidx_test_acc.csv:2)"
    )
    assert not (tmp_path / "s2").exists()


def test_a_metric_without_a_slash_is_refused_before_any_result_is_written(tmp_path, capsys):
    source = _legacy(
        tmp_path / "csv",
        {
            "finetuning_results_cifar10_test_acc.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,cifar10,500\n",
            "finetuning_results_pets_acc.csv": "0.4,acc,p,0,1_shot,chexpert_bit50x1,pets,500\n",
        },
    )
    line = _cli_error(capsys, ["results", "import-legacy", str(source), "--results", str(tmp_path / "store")])
    assert line == (
        f"xrstudy: error: {source}: 1 row(s) cannot be imported (nothing was written): "
        "finetuning_results_pets_acc.csv:2, column 'metric': 'acc'; expected a name like 'test/acc'"
    )
    assert not (tmp_path / "store").exists()


def test_files_whose_names_do_not_match_are_listed(tmp_path, capsys):
    (tmp_path / "csv" / "more").mkdir(parents=True)
    source = _legacy(
        tmp_path / "csv",
        {
            "finetuning_results_cifar10_test_acc.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,cifar10,500\n",
            "finetuning_results_pets.csv": "0.4,test/acc,p,0,1_shot,chexpert_bit50x1,pets,500\n",
            "more/finetuning_results_flowers_test_acc.csv.gz": "",
            "results_pets_acc.csv": "",
        },
    )
    (source / "README.md").write_text("not a result\n")
    assert cli.main(["results", "import-legacy", str(source), "--results", str(tmp_path / "store")]) == 0
    out, err = capsys.readouterr()
    assert "imported 1 paper runs" in out and "all stored" in out
    assert _one_error_line(err) == (
        f"xrstudy: warning: 3 file(s) in {source} not read: their names are not "
        "finetuning_results_{dataset}_{metric}.csv: finetuning_results_pets.csv, "
        "more/finetuning_results_flowers_test_acc.csv.gz, results_pets_acc.csv"
    )


# ---- one bad file in the store is skipped and named --------------------------------------------------
def test_a_100000_deep_json_in_the_store_is_named_and_left_out(tmp_path, capsys):
    from xrstudy.results import store

    results = tmp_path / "results"
    cfg = RunConfig(kind="transfer", target="cifar10", shots=1, out_dir=str(tmp_path))
    store.save(store.new_result(cfg, {"test/acc": 0.5}), results)
    other = RunConfig(kind="transfer", target="cifar10", shots=5, out_dir=str(tmp_path))
    deep = results / f"{other.run_id}.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    reason = f"{deep}: nested too deeply to be a result file"
    found = store.scan(results)
    assert [r["run_id"] for r in found.results] == [cfg.run_id] and found.invalid == [(deep, reason)]
    assert not store.is_done(other, results) and store.is_done(cfg, results)  # sweep run: the cell is to do
    with pytest.warns(UserWarning, match=f"^left out of the table: {re.escape(reason)}$"):
        assert cli.main(["results", "table", "--results", str(results)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # header + the one valid row
    with pytest.warns(UserWarning, match=f"^left out of the table: {re.escape(reason)}$"):
        assert cli.main(["figures", "--results", str(results), "--out", str(tmp_path / "figures")]) == 0
    assert list((tmp_path / "figures").glob("*.png"))
    # Other files json reads but no result can be: a 5,000-digit number, a NaN the digest cannot encode.
    digits = results / "transfer-000000000001.json"
    digits.write_text("1" * 5000)
    nan = results / "transfer-000000000002.json"
    nan.write_text((results / f"{cfg.run_id}.json").read_text().replace('"test/acc": 0.5', '"test/acc": NaN'))
    invalid = dict(store.scan(results).invalid)
    assert invalid[digits].startswith(f"{digits}: not a readable result file (ValueError: Exceeds the limit")
    assert invalid[nan].startswith(f"{nan}: not a readable result file (ValueError: Out of range float values")


# ---- tracebacks that now name their input --------------------------------------------------------------
def test_a_non_utf8_file_name_in_an_imagefolder_is_named(tmp_path, capsys):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    os.rename(tmp_path / "pets" / "cat" / "0.png", os.fsencode(tmp_path / "pets" / "cat") + b"/\xff\xfe.png")
    line = _cli_error(capsys, ["data", "inspect", "mypets", "--root", str(tmp_path / "pets")])
    assert line == (
        f"xrstudy: error: mypets: file name {tmp_path / 'pets' / 'cat'}/\\xff\\xfe.png is not UTF-8; rename it "
        "(xrstudy writes every path as UTF-8 text)"
    )


def test_a_gzip_bomb_as_a_label_file_is_refused_before_it_fills_memory(tmp_path, capsys, monkeypatch):
    import gzip

    from xrstudy.data import layouts, phantoms
    from xrstudy.data.sources import tables

    root = layouts.write_layout("mimic", tmp_path / "mimic", phantoms.xray_records(6, seed=0, lateral_share=0.0))
    code = cli.main(["data", "inspect", "mimic", "--root", str(root), "--metadata-only", "--json"])
    assert code == 0, capsys.readouterr().err  # the layout's own .gz files are far below the bound
    capsys.readouterr()
    monkeypatch.setattr(tables, "GZIP_RATIO_FLOOR", 1 << 20)  # the bound of 64 MiB, scaled down to 1 MiB
    labels = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    header = gzip.decompress(labels.read_bytes()).split(b"\n")[0] + b"\n"
    labels.write_bytes(gzip.compress(header + b"1,2" + b"," * (8 << 20) + b"\n", compresslevel=9))
    size = labels.stat().st_size
    assert size < 20_000
    line = _cli_error(capsys, ["data", "inspect", "mimic", "--root", str(root), "--metadata-only"])
    assert line.startswith(
        f"xrstudy: error: {labels}: expands past {1 << 20:,} bytes, more than 100-fold its {size:,} compressed "
        "bytes (a gzip bomb?); expected a CSV label file with columns ['subject_id', 'study_id', "
    )
    with pytest.raises(tables.SourceError, match=r"expands past 1,048,576 bytes, more than 100-fold"):
        tables.read_text(labels, "lines of text")  # the text reader (split lists) decompresses with the same bound
    labels.write_bytes(b"\x1f\x8b not gzip")
    assert _cli_error(capsys, ["data", "inspect", "mimic", "--root", str(root), "--metadata-only"]).startswith(
        f"xrstudy: error: {labels}: cannot read as gzip ("
    )


def _xray_study(folder: Path, n: int = 10, unreadable_train: bool = False):
    """A tiny multi-label X-ray study; with `unreadable_train` every training file holds no image."""
    import pandas as pd
    from PIL import Image

    from xrstudy.data.studydata import StudyData

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = folder / f"x{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
        rows.append({"image_id": f"x{i}", "path": str(path), "Effusion": float(i % 2), "Edema": float(i % 3 == 0)})
    table = pd.DataFrame(rows)
    train, valid, test = table[:6], table[6:8], table[8:]
    if unreadable_train:
        for path in train["path"]:
            Path(path).write_bytes(b"not an image")
    return StudyData(
        train=train, valid=valid, test=test, classes=("Edema", "Effusion"), multilabel=True, split_sha256="s",
        modality="xray",
    )  # fmt: skip


def test_every_training_image_quarantined_names_the_data_and_the_quarantine_report(tmp_path):
    from xrstudy.training import train

    study = _xray_study(tmp_path / "images", unreadable_train=True)
    cfg = RunConfig(
        kind="pretrain", sources=("chexpert",), arch="resnetv2_tiny_bit", image_size=24, steps=2, batch_size=4,
        out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        train.run(cfg, study=study)
    report = next((tmp_path / "out" / "cache").rglob("quarantine.json"))
    assert str(err.value).startswith(
        f"{cfg.name}: all 6 training images of chexpert were quarantined by the image cache (unreadable), so nothing "
        f"is left to train on; the reasons are in {report} (e.g. {tmp_path / 'images' / 'x00.png'}: "
    )
    assert sorted(json.loads(report.read_text())) == sorted(study.train["path"])
    assert not (tmp_path / "out" / "results").exists()  # no result claims a run
    with pytest.raises(ConfigError) as err:
        train.probe_image(list(study.train["path"]), "training images of cifar10")
    assert str(err.value).startswith(
        f"none of the first 6 training images of cifar10 is readable (the first: {tmp_path / 'images' / 'x00.png'}: "
    )


def test_data_shots_0_says_full_shot_has_no_k_shot_set(tmp_path, capsys):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    argv = ["data", "shots", "mypets", "--root", str(tmp_path / "pets"), "--mode", "exact", "--metadata-only"]
    assert _cli_error(capsys, [*argv, "--shots", "0"]) == (
        "xrstudy: error: mypets-0-shot: shots 0 is full shot (every training image), which has no k-shot set to "
        "list; ask for k >= 1 images per class"
    )
    assert cli.main([*argv, "--shots", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.split()) == 2 and err.startswith("2 of ")


# ---- figures on a full disk ----------------------------------------------------------------------------
@pytest.fixture()
def one_result_store(tmp_path) -> Path:
    from xrstudy.results import store

    results = tmp_path / "results"
    for shots in (1, 0):
        cfg = RunConfig(kind="transfer", target="cifar10", shots=shots, out_dir=str(tmp_path))
        store.save(store.new_result(cfg, {"test/acc": 0.5 + shots / 10}), results)
    return results


def test_figures_on_a_full_disk_name_the_file_and_leave_no_empty_png(one_result_store, tmp_path, capsys, monkeypatch):
    import errno

    from matplotlib.figure import Figure

    out = tmp_path / "figures"

    def savefig_on_a_full_disk(self, fname, **kwargs):
        fname.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig_on_a_full_disk)
    line = _cli_error(capsys, ["figures", "--results", str(one_result_store), "--out", str(out)])
    assert re.fullmatch(
        rf"xrstudy: error: no space left on device writing {re.escape(str(out))}/\w+\.png \(.* free there\); "
        r"free some space and run the same command again",
        line,
    ), line
    assert _files(out) == []  # no 0-byte or partial PNG, no temporary file


@pytest.mark.slow  # mounts a tmpfs (needs root; skipped elsewhere)
def test_figures_on_a_real_full_tmpfs(one_result_store, tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(out)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        line = _cli_error(capsys, ["figures", "--results", str(one_result_store), "--out", str(out)])
        assert line.startswith(f"xrstudy: error: no space left on device writing {out}/") and ".png (" in line
        assert not [p for p in out.iterdir() if p.suffix in (".png", ".pdf", ".tmp") and p.stat().st_size == 0]
        assert not list(out.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(out)], capture_output=True)


# ---- the image cache: damaged pixels are found before they are trained on ---------------------------------
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


@pytest.mark.slow  # two short training runs
def test_a_damaged_cache_fails_the_cell_and_keeps_the_stored_ok_result(tmp_path):
    """The issue's probe: a cell re-run on a damaged cache used to train on it and replace the good result."""
    from xrstudy.pixels import imagecache
    from xrstudy.results import store
    from xrstudy.training import train

    study = _xray_study(tmp_path / "images")
    cfg = RunConfig(
        kind="pretrain", sources=("chexpert",), arch="resnetv2_tiny_bit", image_size=24, steps=2, batch_size=4,
        out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    train.run(cfg, study=study)
    stored = store.result_path(cfg.run_id, cfg.results_dir)
    good = stored.read_bytes()
    assert store.load(stored)["status"] == "ok"
    (images,) = (tmp_path / "out" / "cache").rglob("images.u8")
    images.write_bytes(bytes(images.stat().st_size))  # zeroed, done bitmap intact
    with pytest.raises(imagecache.CacheCorruptError, match=rf"^image cache {re.escape(str(images.parent))}: "):
        train.run(cfg, study=study)
    assert stored.read_bytes() == good  # the ok result stays, untouched
