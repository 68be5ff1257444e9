"""RunConfig: one description of a cell, from YAML to notebook parameters to the result JSON."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal, get_origin

import numpy as np
import pytest
from helpers import one_error_line

from xrstudy import cli, config
from xrstudy.config import EXECUTION_FIELDS, FIELD_NAMES, ConfigError, RunConfig, parent_run_id, parse_root
from xrstudy.training import models


def test_yaml_round_trip_keeps_every_field(tmp_path):
    cfg = RunConfig(
        kind="pretrain",
        sources=("chexpert", "mimic"),
        roots=("chexpert=/d/c", "mimic=/d/m"),
        views=("PA",),
        arch="resnetv2_152x4_bit",
        seed=3,
        epochs=90,
    )
    back = RunConfig.from_yaml(cfg.to_yaml(tmp_path / "cell.yaml"))
    assert back == cfg
    assert back.run_id == cfg.run_id


def test_parameters_are_plain_json_and_rebuild_the_same_cell():
    cfg = RunConfig(target="cifar10", shots=5, seed=1, views=("PA", "AP"))
    params = cfg.to_parameters()
    assert list(params) == list(FIELD_NAMES)
    assert params["views"] == ["PA", "AP"]  # lists, as papermill injects them
    json.dumps(params)  # JSON-serialisable, as papermill and the result JSON need
    assert RunConfig.from_parameters({**params, "unrelated_notebook_variable": 1}) == cfg


def test_run_id_is_stable_and_ignores_execution_fields():
    cfg = RunConfig(target="cifar10", shots=5)
    moved = cfg.replace(out_dir="/elsewhere", workers=8, compile=True, name="renamed", roots=("cifar10=/x",))
    assert moved.run_id == cfg.run_id
    assert cfg.replace(seed=1).run_id != cfg.run_id
    assert cfg.replace(shots=10).run_id != cfg.run_id
    assert cfg.run_id.startswith("transfer-") and len(cfg.run_id) == len("transfer-") + 12
    assert EXECUTION_FIELDS < set(FIELD_NAMES)


def test_comma_string_and_lists_become_tuples():
    cfg = RunConfig(kind="pretrain", sources="chexpert,nih", views=["PA"])
    assert cfg.sources == ("chexpert", "nih") and cfg.views == ("PA",)
    hash(cfg)  # frozen and hashable


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"kind": "finetune"}, "RunConfig.kind = 'finetune'"),
        ({"uncertain": "maybe"}, "RunConfig.uncertain"),
        ({"shots": -1}, "RunConfig.shots = -1"),
        ({"data_fraction": 0.0}, "data_fraction"),
        ({"target": ""}, "needs a `target`"),
        ({"roots": ("no-equals-sign",)}, "expected 'name=DIR'"),
    ],
)
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{"target": "cifar10", **changes})


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("kind: transfer\ntarget: cifar10\nshot: 5\n")
    with pytest.raises(ConfigError, match=r"cell\.yaml: unknown RunConfig field\(s\) \['shot'\]"):
        RunConfig.from_yaml(path)


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        RunConfig.from_yaml(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [transfer\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        RunConfig.from_yaml(listy)


def test_root_lookup_error_names_the_missing_source():
    cfg = RunConfig(target="covidx", roots=("cifar10=/data/cifar",))
    assert str(cfg.root_of("cifar10")) == "/data/cifar"
    with pytest.raises(ConfigError, match="no root given for 'covidx'"):
        cfg.root_of("covidx")


def test_head_is_a_checked_choice_that_feeds_run_id():
    base = RunConfig(target="digits")
    assert base.head == "linear" and RunConfig(target="digits", head="concat").run_id != base.run_id
    with pytest.raises(ConfigError, match="head"):
        RunConfig(target="digits", head="mlp")


# ---- every field is checked by its annotation (a field added later is covered without an entry) ----
_WRONG_TYPE = {int: "1", float: "fast", bool: "yes", str: ["a", "b"]}


def _wrong_value(name):
    hint = config._HINTS[name]
    origin = get_origin(hint)
    if origin is tuple:
        return 5
    if origin is Literal:
        return "no-such-choice"
    return _WRONG_TYPE[hint]


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_every_field_rejects_a_value_of_the_wrong_type_naming_field_and_value(name):
    wrong = _wrong_value(name)
    with pytest.raises(
        ConfigError,
        match=rf"^notebook parameters: RunConfig\.{name} = {re.escape(repr(wrong))}; "
        rf"expected ",
    ):
        RunConfig.from_parameters({"target": "cifar10", name: wrong})


def test_checks_are_built_from_annotations_so_new_fields_are_covered():
    check = config._field_check("new_count", int)  # a field nobody listed in RANGES
    assert check(3) == 3
    with pytest.raises(ConfigError, match=r"RunConfig\.new_count = '3'; expected an integer"):
        check("3")
    assert set(config.ONLY_FOR_KIND.values()) <= set(config.KINDS)


@pytest.mark.parametrize(
    "kind, field, value",
    [
        ("transfer", "epochs", 3),
        ("transfer", "views", ()),
        ("transfer", "labels", "union"),
        ("transfer", "sources", ("chexpert",)),
        ("transfer", "data_fraction", 0.5),
        ("pretrain", "target", "cifar10"),
        ("pretrain", "shots", 5),
        ("pretrain", "shots_mode", "paper"),
        ("pretrain", "sampler", "oversample"),
        ("pretrain", "head", "concat"),
        ("pretrain", "head_init", "zero"),
    ],
)
def test_field_ignored_by_the_cells_kind_is_refused(kind, field, value):
    base = {"kind": kind, "sources": ("chexpert",)} if kind == "pretrain" else {"kind": kind, "target": "cifar10"}
    other = "pretrain" if kind == "transfer" else "transfer"
    with pytest.raises(ConfigError, match=rf"RunConfig\.{field} = .* on a {kind} cell; {field} only acts on {other}"):
        RunConfig(**{**base, field: value})


def test_fields_that_act_on_both_kinds_are_accepted_and_steps_with_epochs_is_refused(tmp_path):
    for cfg in (
        RunConfig(kind="pretrain", sources=("padchest",), label_mode="paper", split_mode="paper", steps=5),
        RunConfig(target="padchest-cl", label_mode="paper", split_mode="paper", uncertain="ones", steps=5),
    ):
        assert cfg.label_mode == "paper"
    path = tmp_path / "cell.yaml"
    path.write_text("kind: pretrain\nsources: [chexpert]\nepochs: 3\nsteps: 100\n")
    with pytest.raises(
        ConfigError,
        match=r"cell\.yaml: RunConfig\.epochs = 3 and RunConfig\.steps = 100 on a "
        r"pretrain cell; steps overrides epochs",
    ):
        RunConfig.from_yaml(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("shots: five", "RunConfig.shots = 'five'; expected an integer >= 0"),
        ("steps: '10'", "RunConfig.steps = '10'; expected an integer >= 0"),
        ("lr: fast", "RunConfig.lr = 'fast'; expected a number >= 0"),
        ("seed: abc", "RunConfig.seed = 'abc'; expected an integer from 0 to 2**32 - 1"),
        ("seed: -1", "RunConfig.seed = -1; expected an integer from 0 to 2**32 - 1"),
        ("batch_size: 0", "RunConfig.batch_size = 0; expected an integer >= 1"),
        ("image_size: -8", "RunConfig.image_size = -8; expected an integer >= 0"),
        ("shots: true", "RunConfig.shots = True; expected an integer >= 0"),  # a bool where an int is expected
        ("steps: 2.5", "RunConfig.steps = 2.5; expected an integer >= 0"),
        ("compile: 1", "RunConfig.compile = 1; expected true or false"),  # an int where a bool is expected
        ("arch: [a, b]", "RunConfig.arch = ['a', 'b']; expected a non-empty string"),  # a list where a str is expected
        ("arch: ''", "RunConfig.arch = ''; expected a non-empty string"),
        ("target: 5", "RunConfig.target = 5; expected a string"),
        ("mixup: -0.5", "RunConfig.mixup = -0.5; expected -1 (BiT-HyperRule decides) or a MixUp alpha >= 0"),
        ("lr: .nan", "RunConfig.lr = nan; expected a number >= 0"),
        ("head: mlp", "RunConfig.head = 'mlp'; expected one of ['linear', 'concat']"),
        ("roots: {cifar10: /data}", "RunConfig.roots = {'cifar10': '/data'}; expected a list"),
        ("roots: [cifar10]", "RunConfig.roots entry 'cifar10'; expected 'name=DIR'"),
        ("roots: [cifar10=/a, cifar10=/b]", "RunConfig.roots names 'cifar10' twice"),
        ("init: run:abc", "RunConfig.init = 'run:abc'; expected run:<run id>"),
        ("init: pretrain:chexpert", "RunConfig.init = 'pretrain:chexpert' names a pre-training cell of a sweep file"),
    ],
)
def test_wrong_config_value_names_file_field_value_and_what_is_expected(tmp_path, line, message):
    path = tmp_path / "cell.yaml"
    target = "" if line.startswith("target:") else "target: cifar10\n"  # a key may appear once (issue 19)
    path.write_text(f"kind: transfer\n{target}{line}\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_pretrain_data_fraction_of_the_wrong_type_and_the_cli_line(tmp_path, capsys):
    path = tmp_path / "cell.yaml"
    path.write_text("kind: pretrain\nsources: [chexpert]\ndata_fraction: half\n")
    assert cli.main(["train", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"xrstudy: error: {path}: RunConfig.data_fraction = 'half'; expected a number with 0 < f <= 1")


def test_whole_numbers_in_float_fields_give_one_run_id_and_config_file_faults(tmp_path):
    assert RunConfig(target="x", lr=1).run_id == RunConfig(target="x", lr=1.0).run_id
    assert isinstance(RunConfig(target="x", lr=1).lr, float)
    assert RunConfig(target="x", seed=np.int64(3)).seed == 3  # a notebook loop's numpy integer
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match=r"fifo\.yaml: not a regular file"):
        RunConfig.from_yaml(tmp_path / "fifo.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"kind: transfer\ntarget: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml, line 2: byte 0xe9 is not UTF-8"):
        RunConfig.from_yaml(tmp_path / "latin.yaml")


def test_a_sweep_file_is_read_by_the_same_rules(tmp_path):
    from xrstudy.sweeps.sweepfile import SweepError, load_sweep

    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(SweepError, match=r"fifo\.yaml: not a regular file"):  # refused, not waited on
        load_sweep(tmp_path / "fifo.yaml")
    (tmp_path / "latin.yaml").write_bytes(b"transfer:\n  - {target: caf\xe9}\n")
    with pytest.raises(SweepError, match=r"latin\.yaml, line 2: byte 0xe9 is not UTF-8"):
        load_sweep(tmp_path / "latin.yaml")
    with pytest.raises(SweepError, match=r"absent\.yaml: no such sweep file"):
        load_sweep(tmp_path / "absent.yaml")


def test_root_entries_and_parent_references_have_one_parser_each(tmp_path, capsys):
    assert parse_root(" chexpert = /data/c ") == ("chexpert", Path("/data/c"))
    for bad in ("chexpert", "=/data", "chexpert="):
        with pytest.raises(ConfigError, match="expected 'name=DIR'"):
            parse_root(bad)
    assert RunConfig(target="t", roots=("t=/d",)).root_map == {"t": Path("/d")}
    with pytest.raises(SystemExit):
        cli.main(["data", "merge", "--source", "chexpert", "--metadata-only"])
    assert "--source entry 'chexpert'; expected 'name=DIR'" in capsys.readouterr().err

    assert parent_run_id("run:pretrain-0123456789ab") == "pretrain-0123456789ab"
    assert parent_run_id("scratch") is None and parent_run_id("/some/checkpoint.pt") is None
    cfg = RunConfig(target="t", init="run:pretrain-0123456789ab", out_dir=str(tmp_path))
    assert models.checkpoint_path(cfg, cfg.init) == tmp_path / "runs" / "pretrain-0123456789ab" / "checkpoint.pt"
