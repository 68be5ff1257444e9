"""Watching a run: every cell's history.csv and TensorBoard scalars, the same history after a resume (also
after kill -9), a diverging cell that stops itself with a `failed` result, `xrstudy sweep status`, and the
learning curves drawn from the store."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cells
import pytest
import torch
import yaml
from helpers import sigkill_when

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.results import store
from xrstudy.sweeps import status, sweepfile
from xrstudy.sweeps.celllock import CellLock
from xrstudy.sweeps.worker import AttemptEnd, collapse_parameter_cells, failure_cause
from xrstudy.training import history

TESTS = Path(__file__).parent


# ---- the interval and the file ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steps", "log_every", "every"),
    [(6, 0, 1), (200, 0, 1), (201, 0, 2), (500, 0, 3), (10_000, 0, 50), (20_000, 0, 100), (500, 7, 7)],
)
def test_log_interval_gives_about_200_points_and_every_step_in_short_runs(steps, log_every, every):
    assert history.log_interval(steps, log_every) == every
    assert len(range(every, steps + 1, every)) <= 200 or log_every


def _row(step: int, loss: float = 1.0, **extra) -> dict:
    return {"step": step, "train/loss": loss, "train/lr": 0.1, "total_steps": 10, **extra}


def test_rows_round_trip_a_torn_last_line_is_dropped_and_a_resume_keeps_its_rows(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(history.HEADER + "".join(history.format_row(_row(s, 1 / s)) for s in (1, 2, 3)) + "4,0.5,3")
    rows = history.read_rows(path)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["train/loss"] == 0.5 and rows[0]["valid/loss"] is None
    assert history.last_row(path)["step"] == 3
    assert [r["step"] for r in history.keep_until(path, 2)] == [1, 2]
    assert [r["step"] for r in history.read_rows(path)] == [1, 2] and path.read_text().endswith("\n")
    assert history.read_rows(tmp_path / "absent.csv") == [] and history.last_row(tmp_path / "absent.csv") is None
    # a cut inside the last field leaves the right number of fields; the missing newline gives it away
    whole = history.format_row(_row(500, 0.25))
    path.write_text(history.HEADER + history.format_row(_row(499, 0.5)) + whole[:-3])  # `...,10\n` -> `...,1`
    assert [r["step"] for r in history.read_rows(path)] == [499] and history.last_row(path)["step"] == 499


def test_the_result_keeps_at_most_200_points_validation_rows_first_and_last():
    rows = [_row(s, 1 / s, **({"valid/loss": 0.5} if s % 100 == 0 else {})) for s in range(1, 1001)]
    rows[5]["train/loss"] = float("nan")
    kept = history.for_result(rows)
    steps = kept["step"]
    assert len(steps) == store.HISTORY_POINTS and steps[0] == 1 and steps[-1] == 1000
    assert steps == sorted(steps) and all(s in steps for s in range(100, 1001, 100))
    assert "train/gpu_peak_gib" not in kept and "valid/loss" in kept  # never measured: left out
    assert history.for_result(rows[:3])["train/loss"] == [1.0, 0.5, 1 / 3]
    short = history.for_result([_row(1, float("nan"))])
    assert short["train/loss"] == [None]  # JSON has no NaN
    assert history.rows_of_result(short) == [{"step": 1, "train/loss": None, "train/lr": 0.1, "total_steps": 10}]
    assert "valid/loss" not in short


@pytest.mark.parametrize("validated", [199, 200, 1000])
def test_the_result_keeps_the_first_and_last_row_however_many_are_validated(validated):
    """A pre-training of 199 or more epochs: its validated rows alone would fill the 200 points."""
    every = 2000 // validated
    rows = [_row(s, 1 / s, **({"valid/loss": 0.5} if s % every == 0 else {})) for s in range(1, 2001)]
    rows[-1].pop("valid/loss", None)  # the last row without validation values too
    steps = history.for_result(rows)["step"]
    assert len(steps) <= store.HISTORY_POINTS and steps[0] == 1 and steps[-1] == 2000
    assert steps == sorted(set(steps))


def _config(tmp_path: Path, **changes) -> RunConfig:
    return RunConfig(**{"kind": "transfer", "target": "cifar10", "out_dir": str(tmp_path), **changes})


def test_results_of_schema_1_still_read_and_the_history_is_checked(tmp_path):
    cfg = _config(tmp_path)
    old = store.new_result(cfg, {"test/acc": 0.9}, schema="xrstudy.result/1")
    assert store.load(store.save(old, tmp_path / "old"))["schema"] == "xrstudy.result/1"
    new = store.load(store.save(store.new_result(cfg, {"test/acc": 0.9}, history={"step": [1, 2]}), tmp_path))
    assert new["schema"] == "xrstudy.result/2" == store.SCHEMA and new["history"] == {"step": [1, 2]}
    for bad, message in [
        ({"train/loss": [1.0]}, "no 'step' column"),
        ({"step": [1, 2], "train/loss": [1.0]}, "lists of one length"),
        ({"step": list(range(201))}, "more than 200 points"),
        ({"step": [1], "train/loss": ["x"]}, "numbers or null"),
    ]:
        with pytest.raises(store.ResultError, match=message):
            store.validate(store.new_result(cfg, {"test/acc": 0.9}, history=bad))
    with pytest.raises(store.ResultError, match="this version reads"):
        store.validate(store.new_result(cfg, {"test/acc": 0.9}, schema="xrstudy.result/9"))


# ---- a diverged cell in the sweep machinery -----------------------------------------------------------
class _NotebookError(Exception):
    """What papermill raises for a cell that raised: the exception's name and text only."""

    def __init__(self, ename: str, evalue: str):
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue = ename, evalue


def test_a_diverged_or_full_notebook_cell_is_one_line_in_the_failure_list():
    cause = "loss became NaN at step 1234 (last finite loss 2.31 at step 1233)"
    assert failure_cause(_NotebookError("TrainingDiverged", cause)) == (
        AttemptEnd.FAILED,
        f"TrainingDiverged: {cause}",
    )
    full = "no space left on device writing /out/runs/x/history.csv (0 B free there); free some space"
    assert failure_cause(_NotebookError("DiskFullError", full)) == (AttemptEnd.DISK_FULL, full)


def test_executed_notebooks_open_with_their_parameter_cells_collapsed(tmp_path):
    import nbformat

    cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("a = 1")]
    cells += [nbformat.v4.new_code_cell("a = 2"), nbformat.v4.new_code_cell("print(a)")]
    cells[1].metadata["tags"] = ["parameters"]
    cells[2].metadata["tags"] = ["injected-parameters"]
    path = tmp_path / "notebook.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    collapse_parameter_cells(path)
    hidden = [c.metadata.get("jupyter", {}).get("source_hidden", False) for c in nbformat.read(path, 4).cells]
    assert hidden == [False, True, True, False]
    collapse_parameter_cells(tmp_path / "missing.ipynb")  # nothing to do, no error


# ---- sweep status -----------------------------------------------------------------------------------
def _status_sweep(out: Path) -> Path:
    sweep = {
        "defaults": {"out_dir": str(out), "roots": ["chexpert=/data/c", "cifar10=/data/x", "nih=/data/n"]},
        "pretrain": [{"name": "chexpert", "sources": ["chexpert"]}, {"name": "nih", "sources": ["nih"]}],
        "transfer": [
            {"target": "cifar10", "init": "pretrain:chexpert", "name": "t-chexpert", "grid": {"seed": [0, 1, 2, 3]}},
            {"target": "cifar10", "init": "pretrain:nih", "name": "t-nih"},
        ],
    }
    path = out / "sweep.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sweep))
    return path


def _write_history(cfg: RunConfig, steps: int, total: int) -> None:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    rows = [_row(s, 2.0 / s, total_steps=total, **{"train/images_per_s": 128.0}) for s in range(1, steps + 1)]
    (cfg.run_dir / history.HISTORY_FILE).write_text(history.HEADER + "".join(map(history.format_row, rows)))


def test_sweep_status_reads_every_state_from_the_files(tmp_path, capsys):
    path = _status_sweep(tmp_path)
    cells = {c.name + (f"-{c.seed}" if c.kind == "transfer" else ""): c for c in sweepfile.load_sweep(path)}
    chexpert = cells["chexpert"]
    timings = {"train_s": 3600.0, "eval_s": 0.0}
    store.save(
        store.new_result(chexpert, {"valid/auc": 0.8}, timings=timings, device="cuda:H100 x4", last_step=900),
        chexpert.results_dir,
    )
    done = cells["t-chexpert-0"]
    store.save(
        store.new_result(done, {"test/acc": 0.9}, last_step=500, reproducibility={"torch_threads": 1}),
        done.results_dir,
    )
    failed = cells["t-chexpert-1"]
    cause = "loss became NaN at step 12 (last finite loss 2.31 at step 11)"
    store.save(store.new_result(failed, {}, status="failed", error=cause, last_step=12), failed.results_dir)
    running = cells["t-chexpert-2"]
    _write_history(running, 50, 500)
    lock = CellLock(running.run_dir / "cell.lock")
    assert lock.acquire()
    interrupted = cells["t-chexpert-3"]
    _write_history(interrupted, 20, 500)
    try:
        by_id = {r["run_id"]: r for r in status.sweep_status(cells.values())}
    finally:
        lock.release()
    states = {name: by_id[cfg.run_id]["state"] for name, cfg in cells.items()}
    assert states == {
        "chexpert": "done",
        "nih": "pending",
        "t-chexpert-0": "done",
        "t-chexpert-1": "failed",
        "t-chexpert-2": "running",
        "t-chexpert-3": "pending",
        "t-nih-0": "blocked",
    }
    assert by_id[failed.run_id]["cause"] == cause
    run = by_id[running.run_id]
    assert (run["step"], run["steps"], run["loss"], run["images_per_s"]) == (50, 500, 0.04, 128.0)
    assert run["last_row_age_s"] < status.STALLED_AFTER_S and run["heartbeat_age_s"] is not None and not run["cause"]
    assert run["eta_s"] == pytest.approx(450 * running.batch_size / 128.0)
    assert "interrupted at step 20" in by_id[interrupted.run_id]["cause"]
    assert "parent" in by_id[cells["t-nih-0"].run_id]["cause"]
    info = status.summary(list(by_id.values()))
    assert info["states"] == {"done": 2, "failed": 1, "running": 1, "blocked": 1, "pending": 2}
    assert info["hours_spent"]["gpu"] == pytest.approx(4.0) and info["torch_threads"] == {"1": 1}

    # The command: one object per cell and a summary; the text table names the failure's cause.
    assert cli.main(["sweep", "status", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"run_id", "name", "kind", "target", "state", "step", "steps", "cause"} <= set(report["cells"][0])
    assert report["summary"]["cells"] == 7 and "gpu_hours_planned" in report["summary"]
    assert cli.main(["sweep", "status", str(path)]) == 0
    text = capsys.readouterr().out
    assert cause in text and "7 cells: done 2, failed 1, blocked 1, pending 3" in text  # no claim is held now


def test_an_interrupted_cell_says_where_its_next_attempt_starts(tmp_path, capsys):
    path = _status_sweep(tmp_path)
    cells = {c.name + (f"-{c.seed}" if c.kind == "transfer" else ""): c for c in sweepfile.load_sweep(path)}
    store.save(store.new_result(cells["chexpert"], {"valid/auc": 0.8}), cells["chexpert"].results_dir)
    for name, steps in (("t-chexpert-0", 20), ("t-chexpert-1", 30), ("t-chexpert-2", 500)):
        _write_history(cells[name], steps, 500)
    (cells["t-chexpert-1"].run_dir / history.TRAIN_STATE_FILE).write_bytes(b"state")
    probe = dataclasses.replace(cells["t-chexpert-3"], train_mode="probe")
    _write_history(probe, 3, 9)
    by_id = {r["run_id"]: r for r in status.sweep_status([*cells.values(), probe])}
    cause = {name: by_id[cells[name].run_id]["cause"] for name in ("t-chexpert-0", "t-chexpert-1", "t-chexpert-2")}
    assert cause == {
        "t-chexpert-0": "interrupted at step 20 before its first training state was saved; it starts again",
        "t-chexpert-1": "interrupted at step 30; it resumes from its training state",
        "t-chexpert-2": "trained to step 500, no result: interrupted while evaluating; it runs again",
    }
    assert by_id[probe.run_id]["cause"] == "interrupted after fit 3; it starts again (its features are cached)"

    # a diverged loss in the last row: --json prints null (JSON has no Infinity or NaN)
    nih = cells["nih"]
    nih.run_dir.mkdir(parents=True, exist_ok=True)
    bad = _row(7, float("inf"), total_steps=900)
    (nih.run_dir / history.HISTORY_FILE).write_text(history.HEADER + history.format_row(bad))
    assert cli.main(["sweep", "status", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    (row,) = [c for c in report["cells"] if c["run_id"] == nih.run_id]
    assert row["step"] == 7 and row["loss"] is None


def test_a_running_cell_without_a_new_row_for_ten_minutes_is_flagged(tmp_path):
    (cfg,) = [c for c in sweepfile.load_sweep(_status_sweep(tmp_path)) if c.name == "nih"]
    _write_history(cfg, 3, 900)
    old = time.time() - 1200
    os.utime(cfg.run_dir / history.HISTORY_FILE, (old, old))
    lock = CellLock(cfg.run_dir / "cell.lock")
    assert lock.acquire()
    try:
        (row,) = status.sweep_status([cfg])
    finally:
        lock.release()
    assert row["state"] == "running" and row["cause"].startswith("no new history row for 20 min")


def test_a_failed_attempt_without_a_result_is_failed_with_its_cause(tmp_path):
    (cfg,) = [c for c in sweepfile.load_sweep(_status_sweep(tmp_path)) if c.name == "nih"]
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "attempt.json").write_text(json.dumps({"outcome": "DEAD_KERNEL", "cause": "kernel died"}))
    (row,) = status.sweep_status([cfg])
    assert (row["state"], row["cause"]) == ("failed", "kernel died")


# ---- learning curves from a store -------------------------------------------------------------------
def test_learning_curves_per_target_and_shots_one_panel_per_init_seeds_overlaid(tmp_path):
    from xrstudy.plots import curves, render

    pre = RunConfig(kind="pretrain", sources=("chexpert",), out_dir=str(tmp_path))
    curve = {"step": [1, 2, 3], "train/loss": [2.0, 1.0, 0.5], "train/lr": [0.1, 0.1, 0.01]}
    store.save(store.new_result(pre, {"valid/auc": 0.7}, history={**curve, "valid/loss": [None, None, 0.6]}), tmp_path)
    for init in ("scratch", f"run:{pre.run_id}"):
        for seed in (0, 1):
            cfg = _config(tmp_path, init=init, seed=seed)
            store.save(store.new_result(cfg, {"test/acc": 0.8}, history=curve), tmp_path)
    drawn = render.render_all(tmp_path, tmp_path / "figs")
    keys = sorted(k for k in drawn if k[0] == "curves")
    assert keys == [("curves", "cifar10", "full_shot"), ("curves", "pretrain", "")]
    fig, files = drawn[("curves", "cifar10", "full_shot")]
    assert [p.name for p in files] == [
        "curves_cifar10_full_shot.png",
        "curves_cifar10_full_shot.pdf",
        "curves_cifar10_full_shot.csv",
    ]
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2  # scratch and chexpert
    assert all(len(ax.lines) == 2 for ax in fig.axes if ax.get_visible())  # two seeds each
    table = (tmp_path / "figs" / "curves_cifar10_full_shot.csv").read_text().splitlines()
    assert len(table) == 1 + 4 * 3 and table[0].startswith(
        "run_id,kind,target,init_label,pretrained_model,shot,seed,step"
    )

    result = store.load(store.result_path(pre.run_id, tmp_path))
    summary = curves.run_summary(result)["value"]
    assert summary["status"] == "ok" and summary["main metric"].startswith("valid/auc = 0.7000")
    one = curves.learning_curve(result)
    assert len(one.axes[0].lines) == 2 and len(one.axes[1].lines) == 1  # train + validation; LR


# ---- training: history.csv, TensorBoard, resume, divergence ------------------------------------------
@pytest.fixture(scope="module")
def xray(tmp_path_factory):
    return cells.xray_study(tmp_path_factory.mktemp("xray"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, xray):
    """One uninterrupted pre-training run, every step logged (6 steps, validation every 3)."""
    from xrstudy.training import train

    cfg = cells.pretrain_cfg(tmp_path_factory.mktemp("reference"))
    return cfg, train.run(cfg, study=xray)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_every_run_writes_its_history_and_tensorboard_scalars(reference, xray):
    from xrstudy.training import train

    cfg, result = reference
    rows = history.read_rows(cfg.run_dir / history.HISTORY_FILE)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(r["train/loss"]) for r in rows)
    assert [r["step"] for r in rows if r["valid/loss"] is not None] == [3, 6]  # every epoch
    assert all(
        r["train/grad_norm"] > 0 and r["train/images_per_s"] > 0 and 0 <= r["train/data_wait"] <= 1 for r in rows
    )
    assert all(r["total_steps"] == 6 and r["images"] == 8 * r["step"] for r in rows)
    schedule = train.resolve_cell(cfg, xray, torch.device("cpu")).recipe.schedule  # a row's LR: its last step's
    assert [r["train/lr"] for r in rows] == pytest.approx([schedule.lr_at(r["step"] - 1) for r in rows], rel=1e-6)
    scalars = _scalars(cfg.run_dir / history.TENSORBOARD_DIR)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["train/loss"] for r in rows], rel=1e-6)
    assert [step for step, _ in scalars["valid/loss"]] == [3, 6] and "progress/epoch" in scalars
    assert result["history"]["step"] == [1, 2, 3, 4, 5, 6]
    assert result["history"]["train/loss"] == [r["train/loss"] for r in rows]
    repro = result["reproducibility"]
    assert repro["torch_threads"] >= 1 and repro["deterministic_algorithms"] is False and repro["world"] == 1
    assert isinstance(repro["tf32_matmul"], bool) and isinstance(repro["tf32_cudnn"], bool)  # GPU numerics


@pytest.mark.slow
def test_micro_batches_log_the_loss_of_the_whole_step(tmp_path, xray):
    """Without MixUp (which pairs images within a micro-batch) two micro-batches of 4 make the step of 8."""
    from xrstudy.training import train

    split, one = (
        cells.pretrain_cfg(tmp_path / "a", micro_batch=4, mixup=0.0),
        cells.pretrain_cfg(tmp_path / "b", mixup=0.0),
    )
    train.run(split, study=xray)
    train.run(one, study=xray)
    whole = history.read_rows(one.run_dir / history.HISTORY_FILE)
    micro = history.read_rows(split.run_dir / history.HISTORY_FILE)
    assert [r["step"] for r in micro] == [r["step"] for r in whole]
    assert [r["train/loss"] for r in micro] == pytest.approx([r["train/loss"] for r in whole], rel=1e-4)


def _same_history(resumed: Path, reference: Path) -> None:
    """Same steps, once each, with the reference's losses, in the CSV and in TensorBoard."""
    rows, ref = history.read_rows(resumed / history.HISTORY_FILE), history.read_rows(reference / history.HISTORY_FILE)
    assert [r["step"] for r in rows] == [r["step"] for r in ref]
    for column in ("train/loss", "train/lr", "train/grad_norm", "valid/loss", "epoch", "images"):
        assert [r[column] for r in rows] == [r[column] for r in ref], column
    scalars = _scalars(resumed / history.TENSORBOARD_DIR)
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in ref]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["train/loss"] for r in ref], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("log_every", "stop_after", "every", "rows_before"),
    [
        # rows every 2 steps and at each epoch's end (3, 6); the training state at step 5 sits halfway
        # through the interval (4, 6]: the resumed row at step 6 averages steps 5 and 6
        (2, 5, 1, [2, 3, 4]),
        # every step; stopped after the training state at step 3 was saved, before epoch 1's validation:
        # the resumed run validates at step 3 first and writes that row with its validation values
        (0, 3, 1, [1, 2]),
        # the training state at epoch 1's end (step 3, its row waiting for validation), then validation wrote
        # that row and step 4's before the stop: the resumed run validates at step 3 again and writes its
        # row once (the killed attempt's copy goes, in the CSV and in TensorBoard)
        (0, 4, 3, [1, 2, 3, 4]),
    ],
)
def test_a_resumed_run_continues_the_same_history(tmp_path, xray, log_every, stop_after, every, rows_before):
    from xrstudy.training import train

    reference = cells.pretrain_cfg(tmp_path / "ref", log_every=log_every)
    train.run(reference, study=xray)
    cfg = cells.pretrain_cfg(tmp_path / "b", log_every=log_every)
    with pytest.raises(cells.Stop):
        train.run(cfg, study=xray, callbacks=[cells.StopAfter(stop_after)], checkpoint_every_steps=every)
    assert [r["step"] for r in history.read_rows(cfg.run_dir / history.HISTORY_FILE)] == rows_before
    train.run(cfg, study=xray, resume=True)
    _same_history(cfg.run_dir, reference.run_dir)


_CHILD = textwrap.dedent("""
    import sys, time
    from fastai.callback.core import Callback
    from cells import pretrain_cfg, xray_study
    from xrstudy.training import train
    from pathlib import Path

    class Slow(Callback):
        order = 99
        def after_step(self):
            if self.learn.step + 1 >= 5:
                time.sleep(120)  # killed here: rows 1-5 written, the training state at step 4

    tmp = Path(sys.argv[1])
    train.run(pretrain_cfg(tmp / "b"), study=xray_study(tmp / "xray"), callbacks=[Slow()], checkpoint_every_steps=2)
""")


@pytest.mark.slow
def test_a_sigkilled_run_resumes_with_no_step_twice_and_none_missing(tmp_path, reference):
    from xrstudy.training import train
    from xrstudy.training.callbacks import load_train_state

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], env=env)
    cfg = cells.pretrain_cfg(tmp_path / "b")
    path = cfg.run_dir / history.HISTORY_FILE
    sigkill_when(child, lambda: history.last_row(path) is not None and history.last_row(path)["step"] == 5)
    assert load_train_state(cfg.run_dir / train.TRAIN_STATE)["step"] == 4
    assert [r["step"] for r in history.read_rows(path)] == [1, 2, 3, 4, 5]  # step 5: beyond the training state
    train.run(cfg, study=cells.xray_study(tmp_path / "xray"), resume=True)
    _same_history(cfg.run_dir, reference[0].run_dir)


@pytest.mark.slow
def test_a_diverging_cell_stops_itself_with_a_failed_result_and_keeps_its_last_good_state(tmp_path):
    from xrstudy.training import train
    from xrstudy.training.callbacks import load_train_state

    study = cells.shapes_study(tmp_path / "shapes")
    cfg = cells.transfer_cfg(tmp_path / "out", lr=1e30, steps=40, log_every=5)
    with pytest.raises(history.TrainingDiverged) as raised:
        train.run(cfg, study=study, checkpoint_every_steps=1)
    cause = str(raised.value)
    assert cause.startswith("loss became NaN at step ") and "(last finite loss" in cause and "\n" not in cause
    assert raised.value.step <= 5  # stopped at the first row (every 5 steps), not after 40 steps
    result = store.load(store.result_path(cfg.run_id, cfg.results_dir))
    assert result["status"] == "failed" and result["error"] == cause and result["last_step"] == raised.value.step
    assert result["history"]["step"] == [5] and result["history"]["train/loss"] == [None]
    state = load_train_state(cfg.run_dir / train.TRAIN_STATE)  # the last finite weights
    assert 1 <= state["step"] <= raised.value.step and all(v.isfinite().all() for v in state["model"].values())
    (row,) = status.sweep_status([cfg])
    assert (row["state"], row["cause"]) == ("failed", cause)


@pytest.mark.slow
def test_an_unwritable_history_folder_fails_the_cell_at_its_start_naming_it(tmp_path):
    from xrstudy.training import train
    from xrstudy.training.monitor import HistoryError

    cfg = cells.transfer_cfg(tmp_path / "out")
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / history.TENSORBOARD_DIR).write_text("a file where the folder goes")
    with pytest.raises(HistoryError, match=f"{cfg.run_dir / history.TENSORBOARD_DIR}: not a folder"):
        train.run(cfg, study=cells.shapes_study(tmp_path / "shapes"))
    assert not (tmp_path / "out" / "cache").exists(), "it failed before the image cache was built"


@pytest.mark.slow
def test_a_full_disk_while_logging_is_one_line_naming_the_file_and_keeps_the_training_state(tmp_path, monkeypatch):
    from xrstudy.fileio import DiskFullError
    from xrstudy.training import monitor, train
    from xrstudy.training.callbacks import load_train_state

    class FullAfter:
        """history.csv on a disk that fills up after two rows."""

        def __init__(self, file):
            self.file, self.rows = file, 0

        def write(self, text):
            self.rows += 1
            if self.rows > 2:  # two rows fit
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(text)

        def __getattr__(self, name):
            return getattr(self.file, name)

    opened = monitor.HistoryLogger.open

    def open_on_a_small_disk(self, start_step=0):
        opened(self, start_step)
        self.file = FullAfter(self.file)

    monkeypatch.setattr(monitor.HistoryLogger, "open", open_on_a_small_disk)
    cfg = cells.transfer_cfg(tmp_path / "out", steps=6)
    with pytest.raises(DiskFullError) as raised:
        train.run(cfg, study=cells.shapes_study(tmp_path / "shapes"), checkpoint_every_steps=1)
    message = cli._message(raised.value)
    assert "\n" not in message and str(cfg.run_dir / history.HISTORY_FILE) in message
    assert load_train_state(cfg.run_dir / train.TRAIN_STATE)["step"] == 2
    assert [r["step"] for r in history.read_rows(cfg.run_dir / history.HISTORY_FILE)] == [1, 2]


@pytest.mark.slow
def test_a_diverging_cell_of_a_sweep_is_in_its_failure_list_and_its_status(tmp_path, capsys):
    """The real notebook in a warm kernel: the cell stops itself, the runner lists its cause, `sweep status`
    says failed with the same cause, and its executed notebook opens with the parameter cells collapsed."""
    import nbformat

    from xrstudy import demo
    from xrstudy.sweeps import runner

    roots = demo.write_sources(tmp_path / "data", demo.SIZES["tiny"])
    sweep = {
        "defaults": {"out_dir": str(tmp_path / "out"), "roots": [f"digits={roots['digits']}"]},
        "transfer": [
            {
                "name": "diverges",
                "target": "digits",
                "arch": "resnetv2_tiny_bit",
                "image_size": 24,
                "steps": 30,
                "batch_size": 32,
                "lr": 1e30,
                "log_every": 5,
            }
        ],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    (cfg,) = sweepfile.load_sweep(path)
    summary = runner.run_sweep([cfg], workers=1, progress=False)
    (failure,) = summary.failed
    assert "TrainingDiverged: loss became NaN at step" in failure.reason and "(last finite loss" in failure.reason
    result = store.load(store.result_path(cfg.run_id, cfg.results_dir))
    assert result["status"] == "failed" and result["error"] in failure.reason
    assert cli.main(["sweep", "status", str(path)]) == 0
    assert "failed   transfer diverges" in capsys.readouterr().out
    (row,) = status.sweep_status([cfg])
    assert (row["state"], row["cause"]) == ("failed", result["error"])
    notebook = nbformat.read(cfg.run_dir / "notebook.ipynb", as_version=4)
    assert all(
        c.metadata["jupyter"]["source_hidden"]
        for c in notebook.cells
        if {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))
    )
