"""RunConfig: one description of a cell, from YAML to notebook parameters to the result JSON."""

from __future__ import annotations

import json
import re
from typing import Literal, get_origin

import pytest

from xrstudy import config
from xrstudy.config import EXECUTION_FIELDS, FIELD_NAMES, ConfigError, RunConfig


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
    assert set(config.RANGES) <= set(FIELD_NAMES) and set(config.ONLY_FOR_KIND) <= set(FIELD_NAMES)
    assert set(config.ONLY_FOR_KIND.values()) <= set(config.KINDS)
