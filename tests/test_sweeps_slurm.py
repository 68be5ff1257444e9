"""`xrstudy.sweeps.slurm`: the jobs `sweep submit` hands to submitit, sized by the plan within the time
limit, the authors' MixUp groups kept whole on every GPU, torchrun's rendezvous, the local backend."""

from __future__ import annotations

import collections
import json
import os
import shlex
import textwrap
from pathlib import Path

import pytest
from helpers import STUB, TESTS, sweep_spec

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.results import store
from xrstudy.sweeps import plan, slurm, sweepfile
from xrstudy.sweeps.sweepfile import SweepError
from xrstudy.training import cost


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch that keeps each script it receives and answers as SLURM does; srun only needs to exist."""
    bin_dir, sent = tmp_path / "bin", tmp_path / "sent"
    bin_dir.mkdir()
    sent.mkdir()
    (bin_dir / "sbatch").write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        n=$(ls {sent} | wc -l); cp "${{@: -1}}" {sent}/$n.sh; echo "Submitted batch job $((1000 + n))"
        """)
    )
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return sent


def test_submit_sends_what_the_dry_run_shows(tmp_path, monkeypatch):
    """submitit receives the dry run's specs and sends its sbatch scripts byte for byte (the dependency's job
    ids, unknown before sbatch answers, are the one difference: `slurm.pending_ids`)."""
    import submitit

    cells = sweepfile.load_sweep(sweep_spec(tmp_path))
    options = {"folder": tmp_path / "slurm", "partition": "gpu", "pretrain_nodes": 4, "gpus_per_node": 4}
    dry = slurm.submit(cells, dry_run=True, **options)
    assert list(dry["jobs"]) == [
        "pretrain",
        "transfer-after-chexpert-50x1",
        "transfer-after-chexpert-152x4",
        "transfer",
    ]
    assert {name: job["cells"] for name, job in dry["jobs"].items()} == {
        "pretrain": 3,
        "transfer-after-chexpert-50x1": 4,
        "transfer-after-chexpert-152x4": 4,
        "transfer": 1,
    }
    scripts = {name: Path(job["script"]).read_text() for name, job in dry["jobs"].items()}
    specs = {spec["name"]: spec for spec in json.loads(Path(dry["specs"]).read_text())}
    pretrain = scripts["pretrain"]
    assert "#SBATCH --array=0-2%3" in pretrain and "#SBATCH --nodes=4" in pretrain and "--partition=gpu" in pretrain
    assert slurm.RENDEZVOUS_SETUP[0] in pretrain, "several nodes: torchrun's rendezvous host exported before srun"
    command = specs["pretrain"]["commands"][1]
    assert "torch.distributed.run --nproc_per_node=4 --nnodes=4 --rdzv_backend=c10d" in command
    assert command.endswith(
        f"-m xrstudy.sweeps.worker --executor papermill --from-list {tmp_path}/slurm/pretrain_cells.jsonl --index 1"
    )
    chexpert_50 = next(
        i for i, c in enumerate(c for c in cells if c.kind == "pretrain") if c.arch == "resnetv2_50x1_bit"
    )
    assert f"#SBATCH --dependency=afterany:@pretrain@_{chexpert_50}" in scripts["transfer-after-chexpert-50x1"]
    assert "--dependency" not in scripts["transfer"] and "--array" not in scripts["transfer"], "one cell: a plain job"
    assert specs["transfer"]["commands"][0].split()[1:3] == ["-m", "xrstudy.sweeps.worker"], "one GPU: no torchrun"

    sent = _fake_slurm(tmp_path, monkeypatch)
    real = slurm.submit(cells, **options)
    ids = {name: job["job_id"] for name, job in real["jobs"].items()}
    assert ids == {
        "pretrain": "1000",
        "transfer-after-chexpert-50x1": "1001",
        "transfer-after-chexpert-152x4": "1002",
        "transfer": "1003",
    }
    for n, name in enumerate(ids):
        expected = scripts[name]
        for other, job_id in ids.items():
            expected = expected.replace(f"@{other}@", job_id)
        assert (sent / f"{n}.sh").read_text() == expected, f"{name}: sbatch received what the dry run showed"
    for name, spec in specs.items():  # and every task runs the command the dry run listed
        pickles = sorted((tmp_path / "slurm" / name).glob("*_submitted.pkl"), key=lambda p: p.name)
        calls = [submitit.core.utils.DelayedSubmission.load(p) for p in pickles]
        assert all(call.function is slurm.run_cell for call in calls)
        assert [shlex.join(call.args[0]) for call in calls] == spec["commands"]


def test_torchrun_reads_the_rendezvous_host_the_job_exports(monkeypatch):
    from torch.distributed.run import parse_args

    assert slurm.RENDEZVOUS_SETUP[0].startswith("export PET_RDZV_ENDPOINT=")
    monkeypatch.setenv("PET_RDZV_ENDPOINT", "node7:29500")  # what the setup line exports on the first node
    args = parse_args([*slurm.torchrun_command(4, 4, "pretrain-x")[3:], "-m", "xrstudy.sweeps.worker", "--index", "2"])
    assert (args.rdzv_endpoint, args.rdzv_backend, args.rdzv_id, args.nnodes) == (
        "node7:29500",
        "c10d",
        "pretrain-x",
        "4",
    )
    assert (args.module, args.training_script, args.training_script_args) == (
        True,
        "xrstudy.sweeps.worker",
        ["--index", "2"],
    )


def test_micro_batches_reach_the_global_batch_on_the_gpus_given(tmp_path):
    cells = [
        c.replace(out_dir=str(tmp_path))
        for c in sweepfile.load_sweep(TESTS.parent / "sweeps" / "paper.yaml")
        if c.kind == "pretrain" and c.arch == "resnetv2_152x4_bit"
    ][:1]
    one_gpu = slurm.submit(cells, folder=tmp_path / "a", dry_run=True, time_limit="60-00:00:00")
    assert one_gpu["jobs"]["pretrain"]["micro_batch"] == [64], "1,024 images a step: 16 passes of the 64 that fit"
    sixteen = slurm.submit(cells, folder=tmp_path / "b", dry_run=True, pretrain_nodes=4)
    assert sixteen["jobs"]["pretrain"]["micro_batch"] == [0], "64 per GPU on 16 GPUs: no accumulation needed"
    listed = RunConfig.from_dict(json.loads((tmp_path / "a" / "pretrain_cells.jsonl").read_text().splitlines()[0]))
    assert listed.micro_batch == 64 and listed.run_id == cells[0].run_id, "an execution field: same run id"


def test_sizing_fits_the_estimate_into_the_time_limit():
    one = slurm.size_cell(5.0, slurm.parse_time("24:00:00"), gpus_per_node=4, max_nodes=16, global_batch=128)
    assert (one.nodes, one.gpus_per_node) == (1, 1) and one.minutes == 6 * 60 + 30  # 5 h / 0.8 + 15 min
    big = slurm.size_cell(100.0, slurm.parse_time("1-00:00:00"), gpus_per_node=4, max_nodes=16, global_batch=1024)
    assert (big.nodes, big.gpus_per_node) == (2, 4) and big.estimate_h == pytest.approx(100 / 8 / 0.9)
    odd = slurm.size_cell(150.0, slurm.parse_time("1-00:00:00"), gpus_per_node=4, max_nodes=16, global_batch=1024)
    assert odd.gpus == 16, "12 GPUs would fit the time but do not divide the global batch of 1,024"
    with pytest.raises(sweepfile.SweepError, match="do not fit 02:00:00 on up to 1 node"):
        slurm.size_cell(150.0, 120, gpus_per_node=4, max_nodes=1, global_batch=1024, name="cmnp")
    with pytest.raises(sweepfile.SweepError, match="3 node.s. x 4 GPU.s. do not divide its global batch of 1024"):
        slurm.size_cell(150.0, 120, gpus_per_node=4, max_nodes=16, global_batch=1024, fixed_nodes=3)
    assert slurm.parse_time("90") == 90 and slurm.parse_time("2-03:04:30") == 2 * 1440 + 3 * 60 + 5
    assert slurm.format_time(2 * 1440 + 185) == "2-03:05:00"
    with pytest.raises(sweepfile.SweepError, match="expected minutes or"):
        slurm.parse_time("soon")


def test_paper_pretraining_is_sized_by_the_plan(tmp_path):
    cells = [c for c in sweepfile.load_sweep(TESTS.parent / "sweeps" / "paper.yaml") if c.kind == "pretrain"]
    cells = [c.replace(out_dir=str(tmp_path)) for c in cells]
    info = slurm.submit(cells, folder=tmp_path / "slurm", dry_run=True, time_limit="24:00:00", gpus_per_node=4)
    jobs = info["jobs"]
    assert sum(j["cells"] for j in jobs.values()) == 11 and len(jobs) > 1, "not one size for all"
    assert max(j["nodes"] for j in jobs.values()) > 1, "the 4-source R152x4 (~140 GPU-hours) needs several nodes"
    assert all(j["estimate_h"] <= 24 * slurm.SAFETY - slurm.STARTUP_H for j in jobs.values()), jobs


def test_local_backend_runs_every_cell_once_in_dependency_order(tmp_path, stub_env):
    """submitit's LocalExecutor gets the same specs; each transfer runs after the pre-training it loads."""
    picked = ("chexpert", "t-chexpert")
    cells = [
        c
        for c in sweepfile.load_sweep(sweep_spec(tmp_path))
        if c.name == "t-in21k" or (c.arch == "resnetv2_50x1_bit" and c.name in picked and c.seed == 0)
    ]
    assert len(cells) == 4
    info = slurm.submit(cells, backend="local", folder=tmp_path / "slurm", executor=STUB)
    assert {name: job["outcomes"] for name, job in info["jobs"].items()} == {
        "pretrain": ["DONE"],
        "transfer-after-chexpert-50x1": ["DONE", "DONE"],
        "transfer": ["DONE"],
    }
    done = collections.Counter(line.split()[0] for line in stub_env.read_text().splitlines() if line.endswith("done"))
    assert done == {c.run_id: 1 for c in cells}, "every cell exactly once"
    assert all(store.is_done(c) for c in cells)
    again = slurm.submit(cells, backend="local", folder=tmp_path / "slurm", executor=STUB)
    assert again["jobs"] == {}, "finished cells are not sent again"


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
