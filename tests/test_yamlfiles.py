"""Sweep / cell YAML faults (issue items 2-4): repeated keys, alias bombs, deep nesting, mixed key types,
huge values in messages, and grids counted before they are expanded."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
import yaml

from xrstudy.yamlfiles import (
    MAX_ALIAS_NODES,
    MAX_DEPTH,
    MAX_GRID_CELLS,
    YamlError,
    check_grid_size,
    count_grid,
    load_yaml_text,
    read_yaml_file,
    shorten,
)

ORIGIN = "sweep.yaml"


def _refusal(text: str, **options) -> str:
    with pytest.raises(YamlError) as err:
        load_yaml_text(text, ORIGIN, **options)
    return str(err.value)


def _sweeps() -> list[Path]:
    """The repository's sweep files."""
    return sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))


# ---- 2. repeated keys ---------------------------------------------------------------------------
def test_repeated_top_level_section_names_file_line_and_key():
    text = (
        "defaults: {out_dir: x}\n"
        "transfer:\n"
        "  - {target: cifar10, shots: 1}\n"
        "pretrain: []\n"
        "transfer:\n"
        "  - {target: pets, shots: 5}\n"
    )
    assert _refusal(text) == "sweep.yaml:5: key 'transfer' repeated (first at line 2)"


def test_repeated_key_inside_a_grid_block_and_flow_mapping():
    block = "transfer:\n  - target: cifar10\n    grid:\n      seed: [0, 1]\n      shots: [1]\n      shots: [10]\n"
    assert _refusal(block) == "sweep.yaml:6: key 'shots' repeated (first at line 5)"
    flow = "defaults: {lr: 0.1}\ntransfer:\n  - {target: cifar10, shots: 1, shots: 10}\n"
    assert _refusal(flow) == "sweep.yaml:3: key 'shots' repeated (first at line 3)"
    assert _refusal("defaults:\n  lr: 1\n  seed: 0\n  lr: 2\n") == "sweep.yaml:4: key 'lr' repeated (first at line 2)"


def test_merge_keys_override_without_being_repeats_but_a_repeat_in_the_merged_block_is_one():
    text = "base: &b {shots: 1, seed: 0}\ncell: {<<: *b, shots: 10}\n"
    assert load_yaml_text(text, ORIGIN) == {"base": {"shots": 1, "seed": 0}, "cell": {"shots": 10, "seed": 0}}
    assert (
        _refusal("cell: {<<: {shots: 1, shots: 2}, seed: 0}\n")
        == "sweep.yaml:1: key 'shots' repeated (first at line 1)"
    )
    assert _refusal("cell:\n  <<: {a: 1}\n  <<: {b: 1}\n") == "sweep.yaml:3: key '<<' repeated (first at line 2)"


def test_equal_keys_spelled_differently_are_repeats():
    assert _refusal("1: a\n0x1: b\n", string_keys=False) == "sweep.yaml:2: key 1 repeated (first at line 1)"
    assert _refusal("shots: 1\n'shots': 2\n") == "sweep.yaml:2: key 'shots' repeated (first at line 1)"


@pytest.mark.parametrize("path", _sweeps(), ids=lambda p: p.name)
def test_repository_sweeps_read_as_safe_load_reads_them(path):
    text = path.read_text()
    assert load_yaml_text(text, str(path)) == yaml.safe_load(text)


# ---- 3. aliases, nesting, key types, values in messages ---------------------------------------------
def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 30])
def test_alias_bomb_is_refused_in_little_memory(levels):
    text = _laughs(levels)
    assert len(text) < 2100  # 9 levels: 10^9 strings once expanded (plain safe_load + repr: GBs)
    tracemalloc.start()
    message = _refusal(text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert message == (
        "sweep.yaml:4: aliases repeat more than 10,000 YAML nodes (at *l2, 1,111 nodes); "
        "write the values out or use fewer aliases"
    )
    assert peak < 5_000_000, peak  # refused while composing, long before anything is expanded


def test_aliases_below_the_bound_load_and_a_recursive_alias_is_refused():
    assert load_yaml_text(_laughs(3), ORIGIN)["l2"][0][0][0] == "lol"  # aliases repeat 10 x 11 + 10 x 111 nodes
    assert load_yaml_text(_laughs(4), ORIGIN, max_alias_nodes=20_000)["l3"][9][9][9][9] == "lol"
    assert _refusal("a: &a [1, *a]\n") == (
        "sweep.yaml:1: alias *a is inside the node it names (a recursive structure); not allowed here"
    )
    assert _refusal("a: *missing\n") == "sweep.yaml:1: not valid YAML (found undefined alias 'missing')"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 50_000 + "]" * 50_000,
        "{a: " * 50_000 + "1" + "}" * 50_000,
        "- " * 50_000 + "x\n",
        "grid: " + "[" * 50_000 + "1" + "]" * 50_000 + "\n",
    ],
    ids=["flow-list", "flow-mapping", "block-list", "in-a-value"],
)
def test_fifty_thousand_levels_end_in_one_line_not_a_recursion_error(text):
    assert _refusal(text) == f"sweep.yaml:1: nested deeper than {MAX_DEPTH} levels"


def test_depth_bound_is_exact():
    assert load_yaml_text("[" * 99 + "x" + "]" * 99, ORIGIN) is not None  # 99 lists + the scalar = 100
    assert _refusal("[" * 100 + "x" + "]" * 100) == "sweep.yaml:1: nested deeper than 100 levels"


def test_keys_must_be_strings_and_a_mapping_may_not_mix_key_types():
    assert _refusal("target: cifar10\n1: x\n") == (
        "sweep.yaml:2: key 1 is an int, not a string; keys are field names (quote it if it is one)"
    )
    assert _refusal("grid:\n  yes: [1]\n").startswith("sweep.yaml:2: key True is a bool, not a string")
    assert (
        _refusal("? [a, b]\n: 1\n") == "sweep.yaml:1: a sequence used as a mapping key; keys are strings (field names)"
    )
    assert _refusal("shots: 1\n2: x\n", string_keys=False) == (
        "sweep.yaml:2: key 2 is an int but key 'shots' (line 1) is a str; one mapping's keys are all of one type"
    )
    assert load_yaml_text("{1: a, 2: b}", ORIGIN, string_keys=False) == {1: "a", 2: "b"}
    assert load_yaml_text("'1': a", ORIGIN) == {"1": "a"}


def test_shorten_never_builds_a_value_whole():
    assert shorten("shots") == "'shots'"
    assert shorten("x" * 10_000_000) == "'" + "x" * 76 + "..."
    assert len(shorten(b"y" * 10_000_000)) <= 80
    assert shorten(10**100_000) == "<int of 100001 digits>"  # repr() would refuse (4,300 digits)
    assert len(shorten([list(range(10**6))] * 10**6)) <= 80
    assert len(shorten({"a": "b" * 10**6}, limit=30)) == 30


def test_errors_on_huge_values_stay_short():
    key = "k" * 1_000_000
    message = _refusal(f"? {key}\n: 1\n? {key}\n: 2\n")
    assert message.startswith("sweep.yaml:3: key 'kkkk") and "repeated (first at line 1)" in message
    assert len(message) < 200
    digits = _refusal("shots: " + "9" * 100_000 + "\n")
    assert digits.startswith("sweep.yaml:1: cannot read int value '9999") and len(digits) < 400
    assert len(_refusal("a: !!python/object/apply:os.system ['" + "x" * 100_000 + "']\n")) < 400
    assert (
        _refusal("d: 2020-13-45\n") == "sweep.yaml:1: cannot read timestamp value '2020-13-45' (month must be in 1..12)"
    )


def test_syntax_errors_name_file_and_line():
    assert _refusal("kind: transfer\nlr: [0.1\n") == (
        "sweep.yaml:3: not valid YAML (expected ',' or ']', but got "
        "'<stream end>'; while parsing a flow sequence at line 2)"
    )
    assert _refusal("a: 1\n---\nb: 2\n").startswith("sweep.yaml:2: not valid YAML (but found another document")
    assert _refusal("a: 1\nb: \x00\n") == "sweep.yaml:2: not valid YAML (control character #x0000 is not allowed)"
    assert load_yaml_text("", ORIGIN) is None and load_yaml_text("# nothing\n", ORIGIN) is None


def test_read_yaml_file(tmp_path):
    good = tmp_path / "cell.yaml"
    good.write_text("kind: transfer\ntarget: cifar10\n")
    assert read_yaml_file(good, "config file") == {"kind": "transfer", "target": "cifar10"}
    twice = tmp_path / "twice.yaml"
    twice.write_text("kind: transfer\nshots: 1\nshots: 10\n")
    with pytest.raises(YamlError, match=rf"^{twice}:3: key 'shots' repeated \(first at line 2\)$"):
        read_yaml_file(twice, "sweep file")
    with pytest.raises(YamlError, match=rf"^{tmp_path / 'absent.yaml'}: no such sweep file$"):
        read_yaml_file(tmp_path / "absent.yaml", "sweep file")
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(YamlError, match=r"fifo\.yaml: not a regular file; expected a sweep file$"):
        read_yaml_file(tmp_path / "fifo.yaml", "sweep file")
    (tmp_path / "latin.yaml").write_bytes(b"kind: transfer\ntarget: caf\xe9\n")
    with pytest.raises(YamlError, match=r"latin\.yaml:2: byte 0xe9 is not UTF-8; expected a UTF-8 sweep file$"):
        read_yaml_file(tmp_path / "latin.yaml", "sweep file")


# ---- 4. grid size ---------------------------------------------------------------------------------
def test_grid_of_100_to_the_5_is_refused_by_count_before_expanding():
    values = ", ".join(str(v) for v in range(100))
    text = "transfer:\n  - target: cifar10\n    grid:\n" + "".join(
        f"      {key}: [{values}]\n" for key in ("seed", "shots", "steps", "lr", "mixup")
    )
    assert len(text) < 2500
    grid = load_yaml_text(text, ORIGIN)["transfer"][0]["grid"]
    assert count_grid(grid) == 100**5
    with pytest.raises(YamlError) as err:
        check_grid_size(grid, "sweep.yaml: transfer[0]")
    assert str(err.value) == (
        "sweep.yaml: transfer[0]: grid of 10,000,000,000 cells (seed 100 x shots 100 x steps 100 "
        "x lr 100 x mixup 100) exceeds the limit of 10,000 cells per sweep; split the sweep or "
        "raise the limit (--max-grid-cells N)"
    )


def test_grid_counts_and_the_running_total():
    assert count_grid({}) == 1 and count_grid({"seed": [0, 1, 2], "shots": [1, 5], "arch": "r50"}) == 6
    assert check_grid_size({"seed": [0, 1]}, "s: transfer[0]") == 2
    assert check_grid_size({"seed": [0, 1]}, "s: transfer[1]", counted=MAX_GRID_CELLS - 2) == MAX_GRID_CELLS
    with pytest.raises(YamlError) as err:
        check_grid_size({"seed": [0, 1, 2]}, "s: transfer[7]", counted=MAX_GRID_CELLS - 2)
    assert str(err.value) == (
        "s: transfer[7]: grid of 3 cells (seed 3), 10,001 with the 9,998 before it, exceeds the "
        "limit of 10,000 cells per sweep; split the sweep or raise the limit (--max-grid-cells N)"
    )
    assert check_grid_size({"seed": list(range(20_000))}, "s: transfer[0]", limit=50_000) == 20_000


@pytest.mark.parametrize("path", _sweeps(), ids=lambda p: p.name)
def test_repository_sweeps_fit_the_default_limits(path):
    data = load_yaml_text(path.read_text(), str(path))
    total = 0
    for section in ("pretrain", "transfer"):
        for i, block in enumerate(data.get(section) or []):
            total = check_grid_size(block.get("grid") or {}, f"{path}: {section}[{i}]", counted=total)
    assert total <= MAX_GRID_CELLS // 3  # the paper's 1,456 cells (extended.yaml: 1,499; scale.yaml: 2,604)
    assert MAX_ALIAS_NODES >= 10 * 904  # extended.yaml's merges repeat 904 nodes
