"""`xrstudy demo` end to end at its smallest size (the session's shared `tiny_demo`, tests/conftest.py),
its learners at the default size, and its handling of bad output directories."""

from __future__ import annotations

import json
import os
import stat

import pytest

from xrstudy import cli, demo
from xrstudy.results import store
from xrstudy.sweeps import runner, sweepfile


@pytest.mark.slow
def test_tiny_demo_writes_results_notebooks_and_figures(tiny_demo):
    out = tiny_demo["out"]
    summary = tiny_demo["summary"]
    assert summary.ok, summary.report()
    size = demo.SIZES["tiny"]
    few = [k for k in size.shots if k]
    fine_tuned = len(few) * len(size.fewshot_seeds) + (0 in size.shots) * len(size.seeds)
    expected_cells = 2 + 2 * 3 * (fine_tuned + len(size.probe_shots) * len(size.probe_seeds))
    stored = sorted((out / "results").glob("*.json"))
    assert len(stored) == expected_cells
    for path in stored:
        result = store.load(path)  # schema + digest checked
        assert result["status"] == "ok" and result["metrics"]
        notebook = out / "runs" / result["run_id"] / "notebook.ipynb"
        assert notebook.is_file() and json.loads(notebook.read_text())["cells"]
    pretrain = [store.load(p) for p in stored if p.name.startswith("pretrain-")]
    assert all(r["checkpoint"]["sha256"] and (out / "runs" / r["run_id"] / "checkpoint.pt").is_file() for r in pretrain)
    pngs, pdfs = sorted((out / "figures").rglob("*.png")), sorted((out / "figures").rglob("*.pdf"))
    assert pngs and len(pngs) == len(pdfs)
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(p.read_bytes()[:5] == b"%PDF-" for p in pdfs)
    table = tiny_demo["table"]
    assert set(table.index.get_level_values("target")) == {"padchest-cl", "digits"}
    assert set(table.index.get_level_values("init_label")) == {"scratch", "xray", "natural"}
    assert set(table.index.get_level_values("train_mode")) == {"finetune", "probe"}  # a probe row per init
    assert len(table) == 2 * 3 * 2
    assert list(table.columns) == [f"{k}_shot" if k else "full_shot" for k in size.shots]
    assert table.notna().all().all(), "every init has a mean at every shot count"
    effect = demo.xray_pretraining_effect(out / "results")
    assert effect.startswith("X-ray pre-training") and "1: " in effect and "full: " in effect


@pytest.mark.slow
def test_every_demo_cell_can_be_watched(tiny_demo, capsys):
    """history.csv (steps strictly increasing, finite losses) and TensorBoard events in every run folder, a
    history in every result, executed notebooks that open on their summary, `sweep status` all done."""
    import math

    import nbformat
    from tensorboard.backend.event_processing import event_accumulator

    from xrstudy.training import history

    out = tiny_demo["out"]
    for path in sorted((out / "results").glob("*.json")):
        result = store.load(path)
        run = out / "runs" / result["run_id"]
        rows = history.read_rows(run / history.HISTORY_FILE)
        steps = [r["step"] for r in rows]
        probe = result["config"].get("train_mode") == "probe"  # a row per regression fit; no optimiser step
        assert steps == sorted(set(steps)) and steps[-1] == (rows[-1]["total_steps"] if probe else result["last_step"])
        assert all(math.isfinite(r["train/loss"]) for r in rows), run
        events = event_accumulator.EventAccumulator(str(run / history.TENSORBOARD_DIR))
        events.Reload()
        assert [e.step for e in events.Scalars("train/loss")] == steps
        assert result["schema"] == store.SCHEMA and result["history"]["step"][-1] == steps[-1]
        assert result["reproducibility"]["torch_threads"] >= 1
        notebook = nbformat.read(run / "notebook.ipynb", as_version=4)
        tagged = [c for c in notebook.cells if {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))]
        assert len(tagged) == 2 and all(c.metadata["jupyter"]["source_hidden"] for c in tagged)
        text = json.dumps([c.get("outputs", []) for c in notebook.cells])
        assert "TqdmWarning" not in text and "main metric" in text
    assert cli.main(["sweep", "status", str(out / "demo-sweep.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {c["state"] for c in report["cells"]} == {"done"} and report["summary"]["states"]["done"] == len(
        report["cells"]
    )


@pytest.mark.slow
def test_rerun_reuses_every_finished_cell(tiny_demo):
    again = demo.run_demo(tiny_demo["out"], "tiny", workers=2, progress=False)
    assert not again["summary"].done and not again["summary"].failed
    assert len(again["summary"].skipped) == len(tiny_demo["summary"].done) + len(tiny_demo["summary"].skipped)


@pytest.mark.slow
def test_default_demo_digits_full_shot_accuracy_is_at_least_90_percent_for_every_init(tmp_path):
    """The default size's digits full-shot cells (and the two pre-training cells they need), with the
    demo's fixed seeds: every init's mean accuracy over seeds is >= 0.90 (a logistic regression gets ~0.96)."""
    size = demo.SIZES["small"]
    roots = demo.write_sources(tmp_path / "data", size)
    cells = sweepfile.load_sweep(demo.demo_sweep(tmp_path, roots, size))
    chosen = [
        c
        for c in cells
        if c.kind == "pretrain" or (c.target == "digits" and c.shots == 0 and c.train_mode == "finetune")
    ]
    assert len(chosen) == 2 + 3 * len(size.seeds)
    summary = runner.run_sweep(chosen, workers=2, progress=False)
    assert summary.ok, summary.report()
    tidy = store.table(tmp_path / "results")
    digits = tidy[(tidy.kind == "transfer") & (tidy.metric == "test/acc")]
    means = digits.groupby("init_label").value.mean()
    assert set(means.index) == {"scratch", "xray", "natural"}
    assert (means >= 0.90).all(), means.to_dict()


def test_bad_output_directories_give_clear_messages(tmp_path, capsys):
    assert cli.main(["demo", "--size", "tiny", "--out", str(tmp_path / "missing" / "out")]) == 2
    assert "parent directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["demo", "--size", "tiny", "--out", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere; the check is meaningful for normal users only
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        assert cli.main(["demo", "--size", "tiny", "--out", str(locked / "out")]) == 2
        assert "cannot write" in capsys.readouterr().err


def test_read_only_output_dir_is_detected_even_as_root(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(demo.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(demo.DemoError, match="cannot write into"):
        demo.check_out_dir(tmp_path / "out")


def test_interrupted_demo_says_how_to_continue(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_sources", interrupted)
    assert cli.main(["demo", "--size", "tiny", "--out", str(tmp_path / "out")]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
