"""`xrstudy.sweeps.preflight`: what a sweep refuses before anything runs (unknown archs, missing parents,
GPUs asked for but absent), the same in a dry run as in a real one."""

from __future__ import annotations

import pytest
import yaml
from helpers import STUB, executions_of, sweep_spec

from xrstudy.config import RunConfig
from xrstudy.results import store
from xrstudy.sweeps import preflight, runner, sweepfile


def test_gpus_that_exist_pass_and_missing_ids_are_named(monkeypatch):
    assert preflight.check_gpus(["0", "1"], allow_cpu=False, count=2) == []
    assert preflight.check_gpus(["GPU-6f1c", "MIG-1"], allow_cpu=False, count=1) == [], "uuids are the driver's"
    with pytest.raises(sweepfile.SweepError, match="cells pinned to 2,3 would run on the CPU"):
        preflight.check_gpus(["0", "1", "2", "3"], allow_cpu=False, count=2)
    assert "--allow-cpu" in preflight.check_gpus(["0"], allow_cpu=True, count=0)[0]


@pytest.mark.slow
def test_a_run_with_missing_gpus_records_the_warning_in_each_worker_log(tmp_path, stub_env, monkeypatch):
    monkeypatch.setattr(preflight, "visible_gpus", lambda: 0)
    cells = [c for c in sweepfile.load_sweep(sweep_spec(tmp_path)) if c.name == "t-in21k"]
    summary = runner.run_sweep(cells, gpus=["0"], executor=STUB, progress=False, poll_s=0.2, allow_cpu=True)
    assert summary.ok and summary.warnings and "WARNING --gpus 0" in (cells[0].run_dir / "worker.log").read_text()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_unknown_arch_fails_before_anything_runs(tmp_path, stub_env, dry_run):
    spec = sweep_spec(tmp_path)
    spec["transfer"][1]["arch"] = "resnetv2_77x9_bit"
    spec["transfer"].append({"target": "cifar10", "init": "timm", "arch": "resnetv2_50x1_bit.no_such_tag", "name": "t"})
    cells = sweepfile.load_sweep(spec)
    with pytest.raises(sweepfile.SweepError) as err:
        runner.run_sweep(cells, dry_run=dry_run, executor=STUB, progress=False)
    assert "arch 'resnetv2_77x9_bit' (1 cell(s), e.g. t-in21k): timm has no model 'resnetv2_77x9_bit'" in str(err.value)
    assert "timm has no pretrained tag 'no_such_tag'" in str(err.value)
    assert not executions_of(stub_env)


def test_init_of_a_run_that_is_nowhere_fails_the_dry_run(tmp_path, stub_env):
    spec = sweep_spec(tmp_path)
    spec["transfer"].append({"target": "cifar10", "init": "run:pretrain-000000000000", "name": "orphan"})
    cells = sweepfile.load_sweep(spec)
    with pytest.raises(
        sweepfile.SweepError, match=r"orphan \[transfer-\w+\]: init run:pretrain-000000000000 is neither"
    ):
        runner.run_sweep(cells, dry_run=True, executor=STUB)
    parent = next(c for c in cells if c.name == "c+m")  # a finished result in the store is a valid init
    child = RunConfig.from_dict({**cells[-1].to_dict(), "init": f"run:{parent.run_id}"})
    store.save(store.new_result(parent, {"test/acc": 0.5}), parent.results_dir)
    # ... with its checkpoint: a result whose checkpoint is gone would fail every transfer loading it, and the
    # pre-training counts as done, so it would never run again by itself
    with pytest.raises(sweepfile.SweepError, match=r"has a result \(.*\) but no checkpoint .*checkpoint\.pt: restore"):
        runner.run_sweep([child], dry_run=True, executor=STUB)
    parent.run_dir.mkdir(parents=True)
    (parent.run_dir / "checkpoint.pt").write_bytes(b"weights")
    assert runner.run_sweep([child], dry_run=True, executor=STUB).planned == [child.run_id]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["transfer"][1].update(init="pretrain:nih"), "init 'pretrain:nih' matches 0 pretrain cells"),
        (
            lambda s: (
                s["pretrain"][1].update(arch="resnetv2_152x4_bit")
                or s["transfer"].append({"target": "cifar10", "init": "pretrain:c+m", "arch": "resnetv2_50x1_bit"})
            ),
            "matches 0 pretrain cells for arch 'resnetv2_50x1_bit'; pretrain 'c+m' exists for ['resnetv2_152x4_bit']",
        ),
        (lambda s: s["transfer"][1].update(arch="resnetv2_50x7_bit"), "timm has no model 'resnetv2_50x7_bit'"),
    ],
)
@pytest.mark.parametrize("command", ["run", "submit"])
def test_cli_dry_runs_fail_on_what_the_real_run_fails_on(tmp_path, capsys, change, message, command):
    from xrstudy import cli

    spec = sweep_spec(tmp_path)
    change(spec)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli.main(["sweep", command, str(path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err
