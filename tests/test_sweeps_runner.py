"""`xrstudy.sweeps.runner`: order, skips, retries and the failure list; kill -9 of a runner and two runners
on one store run each cell once; warm kernels pinned to their GPUs; papermill cells and dead kernels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from helpers import STUB, executions_of, sweep_spec

from xrstudy.config import FIELD_NAMES
from xrstudy.results import store
from xrstudy.sweeps import preflight, runner, status, sweepfile, worker
from xrstudy.sweeps.worker import AttemptEnd, is_dead_kernel


def _stub_notebook(path: Path, body: str) -> None:
    params = nbformat.v4.new_code_cell("\n".join(f"{name} = None" for name in FIELD_NAMES))
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _stub_notebooks(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in sweepfile.NOTEBOOKS.values():
        _stub_notebook(folder / name, body)
    return folder


# Two ways to execute the stub: inside warm kernels (papermill on stub notebooks; the default mode),
# or a worker process per attempt calling the stub directly (--isolate).
MODES = [
    pytest.param(mode, id=mode, marks=pytest.mark.slow) for mode in ("isolate", "warm")
]  # worker processes / kernels


@pytest.fixture
def mode_kwargs(request, tmp_path, stub_env, monkeypatch):
    if request.param == "isolate":
        return {"executor": STUB, "isolate": True}
    import sweep_stub

    monkeypatch.setenv("XRSTUDY_NOTEBOOKS", str(_stub_notebooks(tmp_path / "stub-notebooks", sweep_stub.NOTEBOOK_BODY)))
    return {"executor": "papermill"}


def _pids(log: Path) -> set[str]:
    return {line.split()[1] for line in log.read_text().splitlines()}


@pytest.mark.parametrize("mode_kwargs", MODES, indirect=True)
def test_run_order_skip_and_summary(tmp_path, stub_env, mode_kwargs):
    cells = sweepfile.load_sweep(sweep_spec(tmp_path))[:5]  # 3 pretrain + 2 transfer that need them
    summary = runner.run_sweep(cells, workers=2, progress=False, poll_s=0.2, **mode_kwargs)
    assert summary.ok and len(summary.done) == 5, summary.report()
    assert all(store.is_done(c) for c in cells)
    assert all((c.run_dir / "worker.log").is_file() for c in cells)
    again = runner.run_sweep(cells, workers=2, progress=False, poll_s=0.2, **mode_kwargs)
    assert sorted(again.skipped) == sorted(c.run_id for c in cells) and not again.done
    assert set(executions_of(stub_env).values()) == {1}
    assert not list(tmp_path.rglob("cell.lock")), "locks released"
    if "isolate" not in mode_kwargs:  # two warm kernels ran the five cells; notebooks kept per run
        assert summary.mode == "warm" and len(_pids(stub_env)) == 2
        assert all((c.run_dir / "notebook.ipynb").is_file() for c in cells)


@pytest.mark.parametrize("mode_kwargs", MODES, indirect=True)
def test_failures_listed_dependants_not_run_and_dead_kernel_retried(tmp_path, stub_env, monkeypatch, mode_kwargs):
    monkeypatch.setenv("XRSTUDY_STUB_FAIL", "c+m")
    monkeypatch.setenv("XRSTUDY_STUB_DIE", "t-in21k")
    spec = sweep_spec(tmp_path)
    spec["transfer"].append({"target": "cifar10", "init": "pretrain:c+m", "name": "t-cm", "arch": "resnetv2_50x1_bit"})
    cells = [c for c in sweepfile.load_sweep(spec) if c.name in ("c+m", "t-cm", "t-in21k")]
    summary = runner.run_sweep(cells, workers=2, progress=False, retries=1, poll_s=0.2, **mode_kwargs)
    failed = {f.name: f for f in summary.failed}
    assert set(failed) == {"c+m", "t-cm"}
    assert "cell raised RuntimeError: stub failure for c+m" in failed["c+m"].reason
    assert failed["c+m"].notebook.endswith("notebook.ipynb") and failed["c+m"].outcome == AttemptEnd.FAILED
    assert "dependency failed" in failed["t-cm"].reason and failed["t-cm"].outcome == AttemptEnd.DEPENDENCY_FAILED
    dying = next(c for c in cells if c.name == "t-in21k")
    assert summary.done == [dying.run_id] and executions_of(stub_env)[dying.run_id] == 2
    assert "FAILED c+m" in summary.report()
    if "isolate" not in mode_kwargs:
        assert "stub failure for c+m" in Path(failed["c+m"].notebook).read_text()
    assert "stub failure for c+m" in (next(c for c in cells if c.name == "c+m").run_dir / "worker.log").read_text()


def test_dead_kernel_without_retries_fails(tmp_path, stub_env, monkeypatch):
    monkeypatch.setenv("XRSTUDY_STUB_DIE", "t-in21k")
    cells = [c for c in sweepfile.load_sweep(sweep_spec(tmp_path)) if c.name == "t-in21k"]
    summary = runner.run_sweep(cells, executor=STUB, progress=False, retries=0, poll_s=0.2)
    assert "worker died" in summary.failed[0].reason


def test_a_kernel_that_never_starts_counts_as_dead_a_cell_error_does_not():
    """With --isolate two workers can pick the same kernel port; that start failure is retried."""
    try:
        try:
            raise RuntimeError("Kernel died before replying to kernel_info")
        except RuntimeError as start_failure:
            raise ValueError("papermill wrapped it") from start_failure
    except ValueError as wrapped:
        assert is_dead_kernel(wrapped)
    assert is_dead_kernel(RuntimeError("Kernel didn't respond in 60 seconds"))
    assert not is_dead_kernel(RuntimeError("broken cell"))
    assert not is_dead_kernel(ValueError("Kernel died before replying to kernel_info"))


def test_dry_run_runs_nothing(tmp_path, stub_env):
    cells = sweepfile.load_sweep(sweep_spec(tmp_path))
    summary = runner.run_sweep(cells, dry_run=True, executor=STUB)
    assert len(summary.planned) == len(cells) and not executions_of(stub_env)


def test_truncated_or_edited_result_is_run_again(tmp_path, stub_env):
    cells = [c for c in sweepfile.load_sweep(sweep_spec(tmp_path)) if c.name in ("c+m", "t-in21k")]
    assert runner.run_sweep(cells, executor=STUB, progress=False, poll_s=0.2).ok
    truncated, edited = (store.result_path(c.run_id, c.results_dir) for c in cells)
    truncated.write_text(truncated.read_text()[:40])
    edited.write_text(edited.read_text().replace('"test/acc": 0.5', '"test/acc": 0.99'))
    plan = runner.run_sweep(cells, dry_run=True, executor=STUB)
    assert sorted(plan.planned) == sorted(c.run_id for c in cells), "damaged results do not count as done"
    summary = runner.run_sweep(cells, executor=STUB, progress=False, poll_s=0.2)
    assert sorted(summary.done) == sorted(c.run_id for c in cells)
    assert all(store.load(store.result_path(c.run_id, c.results_dir))["metrics"]["test/acc"] < 0.9 for c in cells)
    assert set(executions_of(stub_env).values()) == {2}


def _write_sweep_file(tmp_path: Path, n_seeds: int) -> Path:
    spec = {
        "defaults": {"out_dir": str(tmp_path / "out")},
        "pretrain": [{"name": "chexpert", "sources": ["chexpert"]}],
        "transfer": [
            {"target": "cifar10", "init": "pretrain:chexpert", "name": "t", "grid": {"seed": list(range(n_seeds))}}
        ],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _runner(sweep_file: Path, env: dict, kwargs: dict) -> subprocess.Popen:
    code = textwrap.dedent(
        f"""
        from xrstudy.sweeps import runner, sweepfile
        cells = sweepfile.load_sweep({str(sweep_file)!r})
        s = runner.run_sweep(cells, workers=2, progress=False, poll_s=0.2, **{kwargs!r})
        print("SUMMARY", len(s.done), len(s.skipped), len(s.failed))
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode_kwargs", MODES, indirect=True)
def test_kill_9_runner_then_resume_runs_every_cell_once(tmp_path, stub_env, monkeypatch, mode_kwargs):
    monkeypatch.setenv("XRSTUDY_STUB_SLEEP", "1.0")
    sweep_file = _write_sweep_file(tmp_path, n_seeds=5)
    cells = sweepfile.load_sweep(sweep_file)
    runner = _runner(sweep_file, dict(os.environ), mode_kwargs)
    deadline = time.time() + 90
    while len(executions_of(stub_env)) < 3 and time.time() < deadline:  # pretrain + two transfers started
        time.sleep(0.1)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    resumed = _runner(sweep_file, dict(os.environ), mode_kwargs)
    out, _ = resumed.communicate(timeout=120)
    assert "SUMMARY" in out and out.split()[-1] == "0", out
    assert all(store.is_done(c) for c in cells)
    done, started = executions_of(stub_env, "done"), executions_of(stub_env, "start")
    # No cell lost, none finished twice.
    assert set(done) == {c.run_id for c in cells} and set(done.values()) == {1}, done
    if "isolate" in mode_kwargs:  # orphaned workers finish their cells; the resumed runner waits for them
        assert set(started.values()) == {1}, started
    else:  # the killed runner's kernels end with it: only the cells they were running start again
        assert sum(started.values()) - len(cells) <= 2, started
    assert not list(tmp_path.rglob("cell.lock"))


@pytest.mark.slow
@pytest.mark.parametrize("mode_kwargs", MODES, indirect=True)
def test_two_runners_on_one_store_run_each_cell_once(tmp_path, stub_env, monkeypatch, mode_kwargs):
    monkeypatch.setenv("XRSTUDY_STUB_SLEEP", "0.3")
    sweep_file = _write_sweep_file(tmp_path, n_seeds=6)
    cells = sweepfile.load_sweep(sweep_file)
    first, second = (_runner(sweep_file, dict(os.environ), mode_kwargs) for _ in range(2))
    outs = [p.communicate(timeout=120)[0] for p in (first, second)]
    for out in outs:
        assert out.split()[-1] == "0", outs
    counts = executions_of(stub_env)
    assert set(counts) == {c.run_id for c in cells} and set(counts.values()) == {1}, counts


@pytest.mark.slow
def test_gpus_pin_each_warm_kernel(tmp_path, stub_env, monkeypatch):
    import sweep_stub

    body = sweep_stub.NOTEBOOK_BODY + "\nimport os\nprint('CUDA', os.environ.get('CUDA_VISIBLE_DEVICES'), os.getpid())"
    monkeypatch.setenv("XRSTUDY_NOTEBOOKS", str(_stub_notebooks(tmp_path / "nb", body)))
    cells = [c for c in sweepfile.load_sweep(sweep_spec(tmp_path)) if c.kind == "pretrain"]
    summary = runner.run_sweep(cells, gpus=["3", "5"], workers=2, progress=False, poll_s=0.2, allow_cpu=True)
    assert summary.ok, summary.report()
    seen = set()
    for cell in cells:
        text = "".join(
            o.get("text", "")
            for c in nbformat.read(cell.run_dir / "notebook.ipynb", as_version=4).cells
            for o in c.get("outputs", [])
        )
        gpu, pid = text.split("CUDA ")[1].split()[:2]
        seen.add((gpu, pid))
    assert {gpu for gpu, _ in seen} <= {"3", "5"} and len({pid for _, pid in seen}) <= 2


@pytest.mark.slow
@pytest.mark.parametrize("isolate", [False, True], ids=["warm", "isolate"])
def test_papermill_cells_and_dead_kernel(tmp_path, monkeypatch, isolate):
    body = textwrap.dedent(
        """
        import os, signal
        from pathlib import Path
        from xrstudy.results import store
        from xrstudy.config import FIELD_NAMES, RunConfig
        cfg = RunConfig(**{k: globals()[k] for k in FIELD_NAMES})
        marker = cfg.run_dir / "died-once"
        if cfg.seed == 1 and not marker.exists():
            marker.write_text("x"); os.kill(os.getpid(), signal.SIGKILL)   # the kernel dies once
        if cfg.seed == 2:
            raise ValueError("broken cell")
        store.save(store.new_result(cfg, {"test/acc": 0.5}), cfg.results_dir)
        """
    )
    monkeypatch.setenv("XRSTUDY_NOTEBOOKS", str(_stub_notebooks(tmp_path / "notebooks", body)))
    spec = {
        "defaults": {"out_dir": str(tmp_path / "out")},
        "pretrain": [{"name": "c", "sources": ["chexpert"]}],
        "transfer": [{"target": "cifar10", "init": "pretrain:c", "grid": {"seed": [1, 2]}}],
    }
    cells = sweepfile.load_sweep(spec)
    summary = runner.run_sweep(cells, workers=2, retries=1, progress=False, poll_s=0.2, isolate=isolate)
    assert len(summary.done) == 2 and len(summary.failed) == 1, summary.report()
    failed = summary.failed[0]
    assert "cell raised" in failed.reason and Path(failed.notebook).is_file()
    assert "broken cell" in Path(failed.notebook).read_text()
    assert (cells[0].run_dir / "notebook.ipynb").is_file()


@pytest.mark.slow
def test_cli_run_flags(tmp_path, stub_env, monkeypatch, capsys):
    from xrstudy import cli

    monkeypatch.setattr(preflight, "visible_gpus", lambda: 0)
    parser = cli.build_parser()
    sweep_file = _write_sweep_file(tmp_path, n_seeds=2)
    argv = ["sweep", "run", str(sweep_file), "--gpus", "0,1", "--isolate", "--only", "t", "--retries", "2", "--dry-run"]
    args = parser.parse_args(argv)
    assert (args.gpus, args.isolate, args.retries, args.workers, args.allow_cpu) == (["0", "1"], True, 2, None, False)
    assert cli.main(argv) == 2, "GPUs asked for but absent: refused, before anything runs"
    assert "--gpus 0,1: this machine shows 0 GPU(s)" in capsys.readouterr().err
    assert cli.main([*argv, "--allow-cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.count("would run  ") == 3 and "dry run: 3 cell(s)" in out
    assert "WARNING --gpus 0,1" in out and "warning: --gpus 0,1" in err, "allowed, and recorded in the summary"


@pytest.mark.parametrize("mode_kwargs", MODES, indirect=True)
def test_a_full_disk_is_named_in_the_failure_list(tmp_path, stub_env, monkeypatch, mode_kwargs):
    monkeypatch.setenv("XRSTUDY_STUB_ENOSPC", "t-in21k")
    cells = [c for c in sweepfile.load_sweep(sweep_spec(tmp_path)) if c.name == "t-in21k"]
    summary = runner.run_sweep(cells, progress=False, poll_s=0.2, **mode_kwargs)
    [failure] = summary.failed
    assert failure.outcome == AttemptEnd.DISK_FULL
    assert failure.reason.startswith(f"disk full at {tmp_path / 'cache' / 'images.u8'}"), failure.reason
    assert f"disk full at {tmp_path / 'cache' / 'images.u8'}" in summary.report()


@pytest.mark.parametrize(
    "ended",
    [AttemptEnd.DEAD_KERNEL, AttemptEnd.FAILED],
    ids=["warm-kernel-killed", "isolated-worker-KeyboardInterrupt"],
)
def test_a_cell_ended_by_ctrl_c_is_interrupted_not_failed(tmp_path, ended):
    """Ctrl-C kills the warm kernels (the attempt ends as a dead kernel) or reaches an isolated worker (which
    leaves 'KeyboardInterrupt' in attempt.json): either way the cell was interrupted, so `sweep status` must
    not list it as failed."""
    (cfg,) = [c for c in sweepfile.load_sweep(sweep_spec(tmp_path)) if c.name == "t-in21k"]
    stop = threading.Event()

    class CtrlC:
        label, executor = "slot-0", "papermill"

        def attempt(self, cfg, notebook, log):
            stop.set()
            worker.write_attempt(cfg, worker.Attempt(ended, "KeyboardInterrupt"))
            return worker.Attempt(ended, "KeyboardInterrupt")

    attempt = runner.run_cell(cfg, CtrlC(), retries=2, stop=stop)
    assert attempt.outcome == AttemptEnd.INTERRUPTED and not worker.attempt_path(cfg).exists()
    (row,) = status.sweep_status([cfg])
    assert row["state"] == "pending"
