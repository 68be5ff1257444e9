"""`xrstudy.sweeps.sweepfile`: sweep YAML to cells (grids, pretrain references, dependencies, selection),
the paper's sweep, and the faults a sweep file can hold (repeated keys, alias bombs, deep nesting, grids
too large to expand, a glob that matches nothing), each one line naming the file, line or block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import TESTS, cli_error, files_under, sweep_spec

from xrstudy import cli
from xrstudy.config import ConfigError, RunConfig
from xrstudy.sweeps import sweepfile
from xrstudy.sweeps.sweepfile import SweepError


def test_expansion_and_pretrain_resolution(tmp_path):
    cells = sweepfile.load_sweep(sweep_spec(tmp_path))
    kinds = [c.kind for c in cells]
    assert kinds == ["pretrain"] * 3 + ["transfer"] * 9
    pre = {(c.name, c.arch): c for c in cells if c.kind == "pretrain"}
    for cell in cells[3:11]:
        parent = pre[("chexpert", cell.arch)]
        assert cell.init == f"run:{parent.run_id}" and cell.init_label == "chexpert"
    assert cells[-1].init == "timm" and cells[-1].init_label == "imagenet21k"
    # list-valued fields stay lists (not expanded)
    assert cells[2].sources == ("chexpert", "mimic") and cells[0].roots == ("chexpert=/data/c", "cifar10=/data/x")
    deps = sweepfile.dependencies(cells)
    assert deps[cells[3].run_id] == {pre[("chexpert", cells[3].arch)].run_id} and deps[cells[-1].run_id] == set()


def test_yaml_file_and_duplicates(tmp_path):
    spec = sweep_spec(tmp_path)
    spec["transfer"].append(spec["transfer"][1])  # same cell twice → one
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert len(sweepfile.load_sweep(path)) == 12


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(extra=1), "unknown key(s) ['extra']"),
        (lambda s: s["defaults"].update(lr_typo=1), "defaults: unknown key(s) ['lr_typo']"),
        (lambda s: s["transfer"][0].update(shot=1), "transfer[0]: unknown key(s) ['shot']"),
        (lambda s: s["transfer"][0]["grid"].update(sead=[1]), "transfer[0].grid: unknown key(s) ['sead']"),
        (lambda s: s["pretrain"][1].pop("name"), "pretrain[1]: every pretrain cell needs a `name`"),
        (lambda s: s["transfer"][0].update(init="pretrain:nih"), "'pretrain:nih' matches 0"),
        (lambda s: s["transfer"][1].update(shots=-1), "shots"),
    ],
)
def test_bad_sweep_files_name_file_and_key(tmp_path, change, message):
    spec = sweep_spec(tmp_path)
    change(spec)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(sweepfile.SweepError) as err:
        sweepfile.load_sweep(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_only_includes_dependencies(tmp_path):
    cells = sweepfile.load_sweep(sweep_spec(tmp_path))
    chosen = sweepfile.select(cells, "t-chexpert")
    assert sum(c.kind == "pretrain" for c in chosen) == 2 and len(chosen) == 10


def test_paper_sweep_expands():
    cells = sweepfile.load_sweep(TESTS.parent / "sweeps" / "paper.yaml")
    pre = [c for c in cells if c.kind == "pretrain"]
    assert {c.name for c in pre} == {
        "chexpert",
        "mimic",
        "nih",
        "padchest",
        "chexpert_mimic",
        "chexpert_mimic_nih",
        "chexpert_mimic_nih_padchest",
    }
    transfer = [c for c in cells if c.kind == "transfer"]
    assert {c.shots for c in transfer} == {1, 5, 10, 100, 500, 0} and {c.seed for c in transfer} == set(range(5))
    assert len({c.run_id for c in cells}) == len(cells)


def test_a_pretrain_reference_never_loads_another_size():
    """`init: pretrain:mimic` at R50x1 when mimic is pre-trained at R152x4 only: an error, not the big checkpoint."""
    spec = {
        "pretrain": [{"name": "mimic", "sources": ["mimic"], "arch": "resnetv2_152x4_bit"}],
        "transfer": [{"target": "covidx", "init": "pretrain:mimic", "arch": "resnetv2_50x1_bit"}],
    }
    with pytest.raises(sweepfile.SweepError, match=r"matches 0 pretrain cells for arch 'resnetv2_50x1_bit'.*152x4"):
        sweepfile.load_sweep(spec)


def test_dependency_graph_orders_parents_first(tmp_path):
    cells = sweepfile.load_sweep(sweep_spec(tmp_path))
    order = list(sweepfile.graph(reversed(cells)).static_order())
    for cell in cells:
        for parent in sweepfile.dependencies(cells)[cell.run_id]:
            assert order.index(parent) < order.index(cell.run_id)


def test_notebook_path_errors_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("XRSTUDY_NOTEBOOKS", str(tmp_path))
    with pytest.raises(sweepfile.SweepError, match="XRSTUDY_NOTEBOOKS"):
        sweepfile.notebook_path("no_such_notebook")


def test_demo_sweep_file_is_the_demo_grid(tmp_path):
    cells = sweepfile.load_sweep(TESTS.parent / "sweeps" / "demo.yaml")
    pre = [c for c in cells if c.kind == "pretrain"]
    transfer = [c for c in cells if c.kind == "transfer"]
    assert len(pre) == 2 and len(transfer) == 48
    assert sum(c.train_mode == "probe" for c in transfer) == 24  # every fine-tuned cell's linear probe beside it
    assert {c.arch for c in cells} == {"resnetv2_tiny_bit"}
    deps = sweepfile.dependencies(cells)
    assert sum(bool(deps[c.run_id]) for c in transfer) == 32  # X-ray and natural inits wait for pre-training
    assert all(deps[c.run_id] <= {p.run_id for p in pre} for c in transfer)
    from xrstudy import demo

    spec = demo.demo_sweep(
        tmp_path,
        {name: tmp_path / name for name in ("chexpert", "nih", "padchest-cl", "shapes", "digits")},
        demo.SIZES["tiny"],
    )
    assert [c.run_id for c in sweepfile.load_sweep(spec)] == [c.run_id for c in cells]


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
        line = cli_error(capsys, ["sweep", command, str(sweep), *extra])
        assert line == f"xrstudy: error: {sweep}:5: key 'transfer' repeated (first at line 2)"
    assert files_under(tmp_path) == ["sweep.yaml"]  # nothing planned, run or written


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
    line = cli_error(capsys, ["sweep", "plan", str(grid)])
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
    line = cli_error(capsys, ["train", str(cell)])
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
    assert cli_error(capsys, ["sweep", "plan", str(deep)]) == f"xrstudy: error: {deep}:1: nested deeper than 100 levels"
    mixed = _write(tmp_path / "mixed.yaml", "transfer:\n  - target: cifar10\n    1: x\n")
    assert cli_error(capsys, ["sweep", "plan", str(mixed)]) == (
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
    line = cli_error(capsys, ["sweep", "plan", str(sweep)])
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
    assert cli_error(capsys, ["sweep", "plan", str(sweep), "--max-grid-cells", "5"]).startswith(
        f"xrstudy: error: {sweep}: transfer[1]: grid of 3 cells (seed 3), 6 with the 3 before it, exceeds the limit of"
    )
    assert cli.main(["sweep", "plan", str(sweep), "--max-grid-cells", "6", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 6
    with pytest.raises(SystemExit):
        cli.main(["sweep", "plan", str(sweep), "--max-grid-cells", "0"])
    assert "--max-grid-cells: 0; expected an integer >= 1" in capsys.readouterr().err


def test_an_only_glob_that_matches_nothing_is_an_error(small_sweep, capsys):
    for command in (["plan"], ["run", "--dry-run"], ["submit", "--dry-run"]):
        line = cli_error(capsys, ["sweep", *command, str(small_sweep), "--only", "c100*"])
        assert line == (
            "xrstudy: error: --only 'c100*' matches no cell name or run id of the sweep's 2 cell(s) (names: ['c10'])"
        )
    assert not (small_sweep.parent / "out").exists()
    assert len(sweepfile.select(sweepfile.load_sweep(small_sweep), "c1*")) == 2
