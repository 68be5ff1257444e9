"""`xrstudy.sweeps.worker`: one encoding of how an attempt ends, and failure causes that name a full disk."""

from __future__ import annotations

import json

import pytest

from xrstudy.config import RunConfig
from xrstudy.results import store
from xrstudy.sweeps import worker
from xrstudy.sweeps.worker import AttemptEnd, failure_cause


def test_outcomes_are_one_encoding():
    """Exit codes, summary statuses and reasons all come from one AttemptEnd enum."""
    assert AttemptEnd.of_exit(0) == AttemptEnd.DONE and AttemptEnd.of_exit(79) == AttemptEnd.DISK_FULL
    assert AttemptEnd.of_exit(-9) == AttemptEnd.of_exit(3) == AttemptEnd.DEAD_KERNEL
    assert (
        AttemptEnd.of_exit(int(AttemptEnd.SKIPPED)) == AttemptEnd.DEAD_KERNEL
    )  # runner-only outcomes are no exit codes
    statuses = {o: o.status for o in AttemptEnd}
    assert statuses[AttemptEnd.DONE_ELSEWHERE] == statuses[AttemptEnd.SKIPPED] == "skipped"
    assert {
        statuses[o]
        for o in (
            AttemptEnd.FAILED,
            AttemptEnd.NO_RESULT,
            AttemptEnd.DISK_FULL,
            AttemptEnd.DEPENDENCY_FAILED,
            AttemptEnd.INTERRUPTED,
        )
    } == {"failed"}


@pytest.mark.parametrize(
    "make, outcome, cause",
    [
        (
            lambda: OSError(28, "No space left on device", "/scratch/cache/images.u8"),
            AttemptEnd.DISK_FULL,
            "disk full at /scratch/cache/images.u8",
        ),
        (
            lambda: type(
                "PapermillExecutionError",
                (Exception,),
                {"ename": "OSError", "evalue": "[Errno 28] No space left on device: '/scratch/out/runs/x/ckpt.pt'"},
            )("x"),
            AttemptEnd.DISK_FULL,
            "disk full at /scratch/out/runs/x/ckpt.pt",
        ),
        (
            lambda: type("PapermillExecutionError", (Exception,), {"ename": "ValueError", "evalue": "broken cell"})(
                "x"
            ),
            AttemptEnd.FAILED,
            "ValueError: broken cell",
        ),
        (lambda: RuntimeError("bad\nsecond line"), AttemptEnd.FAILED, "RuntimeError: bad"),
    ],
)
def test_failure_cause_names_a_full_disk_and_its_path(make, outcome, cause):
    assert failure_cause(make()) == (outcome, cause)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_under_torchrun_a_cell_finished_before_the_job_ends_every_rank_with_0(tmp_path, monkeypatch, rank):
    """torchrun fails the whole job when any rank exits non-zero: a requeued task whose cell is done must
    end with 0 on every rank (one process alone reports DONE_ELSEWHERE, 76)."""
    cfg = RunConfig(kind="transfer", target="cifar10", init="timm", out_dir=str(tmp_path))
    store.save(store.new_result(cfg, {"test/acc": 0.9}), cfg.results_dir)
    argv = ["--executor", "tests.never:run", "--config", json.dumps(cfg.to_dict())]  # never called: done
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert worker.main(argv) == 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert worker.main(argv) == AttemptEnd.DONE_ELSEWHERE
