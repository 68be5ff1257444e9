"""`sweep submit` keeps the authors' MixUp groups whole (loader_mode paper): a group never spans two GPUs or
two gradient-accumulation passes, whatever the cluster, as `pixels.loaders.Batching` requires."""

from __future__ import annotations

from pathlib import Path

import pytest

from xrstudy.sweeps import plan, slurm, sweepfile
from xrstudy.sweeps.sweepfile import SweepError
from xrstudy.training import cost

REPO = Path(__file__).resolve().parents[1]


def test_a_micro_batch_holds_whole_groups():
    assert cost.micro_batch(100, 128) == 64 and cost.micro_batch(100, 128, group=64) == 64
    assert cost.micro_batch(50, 128) == 32 and cost.micro_batch(50, 128, group=64) == 64  # one group, at least
    assert cost.micro_batch(200, 128, group=64) == 0  # the whole per-device batch fits
    assert cost.micro_batch(24, 128, group=4) == 16


def test_sizing_never_splits_a_group_across_gpus_and_says_so_when_it_cannot_fit():
    # 30 GPU-hours in 24 h: 2 GPUs (64 each) are enough; groups of 64 allow no more than 2 anyway
    size = slurm.size_cell(30.0, 24 * 60, gpus_per_node=4, max_nodes=4, global_batch=128, group=64)
    assert size.nodes * size.gpus_per_node == 2
    with pytest.raises(SweepError) as raised:
        slurm.size_cell(100.0, 24 * 60, gpus_per_node=4, max_nodes=4, global_batch=128, group=64)
    assert "whole MixUp groups of 64 images" in str(raised.value) and "at most 2 GPU(s)" in str(raised.value)
    assert slurm.size_cell(100.0, 24 * 60, gpus_per_node=4, max_nodes=4, global_batch=128).gpus_per_node == 4


def test_the_papers_mixup_cells_keep_whole_groups_on_the_jobs_submit_builds(tmp_path):
    cells = [c for c in sweepfile.load_sweep(REPO / "sweeps" / "paper.yaml") if c.kind == "transfer"]
    rows = {r["run_id"]: r for r in plan.plan_cells(cells, use_roots=False)}
    mixing = [c for c in cells if (rows[c.run_id]["mixup_alpha"] or 0) > 0]
    assert {c.target for c in mixing} == {"cifar10", "cifar100", "padchest-cl"}
    cluster = slurm.Cluster(folder=tmp_path, limit_min=2 * 60, gpus_per_node=8, max_nodes=4)  # tight: many GPUs
    for spec in slurm.job_specs(mixing, rows, cluster):
        gpus = spec.nodes * spec.gpus_per_node
        for cell in spec.cells:
            group = rows[cell.run_id]["mixup_group"]
            per_device = cell.batch_size // gpus
            assert per_device % group == 0 and (cell.micro_batch or per_device) % group == 0, (cell.name, gpus)
