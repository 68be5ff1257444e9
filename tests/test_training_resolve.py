"""One resolver for a cell: the plan row is the resolved cell, training runs and stores the same object, and a
cell's run id is a function of what it computes, not of how its YAML spells it."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xrstudy import cli
from xrstudy.config import RunConfig
from xrstudy.data import phantoms, studydata
from xrstudy.data.sources import SOURCES
from xrstudy.results import store
from xrstudy.sweeps import plan, sweepfile
from xrstudy.training import cost, recipes, resolve

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"


@pytest.fixture(scope="module")
def paper_cells():
    return sweepfile.load_sweep(SWEEPS / "paper.yaml")


@pytest.fixture(scope="module")
def paper_rows(paper_cells):
    return plan.plan_cells(paper_cells)


# ---- the plan row is the resolved cell -------------------------------------------------------------
def test_every_plan_row_of_the_paper_grid_is_the_resolved_cell_field_for_field(paper_cells, paper_rows):
    # recipe and probe are flattened into their numbers (steps, lr, ...; feature_batch, probe_c_grid on probe cells)
    fields = {f.name for f in dataclasses.fields(resolve.ResolvedCell)} - {"recipe", "probe"}
    assert len(paper_rows) == len(paper_cells) == 1456
    for cfg, row in zip(paper_cells, paper_rows):
        resolved = resolve.resolve(cfg, resolve.registry_facts(cfg), device=cost.DEFAULT_DEVICE).row()
        assert fields <= set(resolved), "row() holds every decided value"
        assert {key: row[key] for key in resolved} == resolved, cfg.name
        assert (row["run_id"], row["kind"], row["seed"]) == (cfg.run_id, cfg.kind, cfg.seed)


def test_the_plan_shows_the_authors_settings_on_every_cell(paper_rows):
    """docs/PROTOCOL.md: SGD with Nesterov momentum 0.9 and AGC 0.01 everywhere, weight decay 1e-4 in pre-training
    and 0 in transfers, fp32 evaluation, PyTorch's default init for networks built from scratch, and MixUp
    pairing within the authors' micro-batch (CIFAR 128 / 2 = 64, every other target 128 / 32 = 4)."""
    for row in paper_rows:
        assert (row["optimizer"], row["momentum"], row["nesterov"], row["agc_clip"]) == ("sgd", 0.9, True, 0.01)
        assert row["eval_precision"] == "fp32" and row["weight_init"] == "torch"
        assert row["precision"] == "bf16" and "fp32 in transfers" in row["precision_from"]  # auto on a GPU
        if row["kind"] == "pretrain":
            assert (row["weight_decay"], row["mixup_group"]) == (1e-4, 16) and row["valid_every"] > 0
            assert "built from scratch" in row["weight_init_from"]
        else:
            expected = 64 if row["target"] in ("cifar10", "cifar100") else 4
            assert (row["weight_decay"], row["mixup_group"]) == (0.0, expected), row["name"]
            assert "does not act" in row["weight_init_from"]
            assert row["cache_mode"] == ("L" if row["target"] == "padchest-cl" else None) or row["cache_mode"].endswith(
                ":squash"
            )


def test_padchest_cl_few_shot_sets_hold_26_classes(paper_rows):
    """One of the authors' 27 PadChest-Cl classes (Consolidation) has no single-label image: k x 26 at most."""
    rows = [r for r in paper_rows if r["target"] == "padchest-cl" and r["shots"]]
    assert rows and all(r["train_size"] == 26 * r["shots"] for r in rows)
    assert all("26 classes with an image (Consolidation has none)" in r["train_size_from"] for r in rows)
    exact = RunConfig(target="padchest-cl", shots=5)  # an exact draw cannot be made there: the plan says so
    facts = resolve.registry_facts(exact)
    assert facts.train_size == 135 and "an exact k-shot draw fails" in facts.warnings[0]


def test_the_cli_json_carries_the_resolved_fields(capsys):
    assert cli.main(["sweep", "plan", str(SWEEPS / "paper.yaml"), "--json", "--only", "pets-imagenet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 80
    needed = {"precision", "eval_precision", "optimizer", "momentum", "nesterov", "weight_decay", "agc_clip"}
    assert all(needed | {"weight_init", "mixup_group", "cache_mode", "shots_sha256"} <= set(r) for r in rows)


def test_digits_facts_are_the_demos_split():
    records = phantoms.digit_records(seed=5)
    digits = SOURCES["digits"]
    assert sum(r.split == "train" for r in records) == digits.published_train_size
    assert records[0].image.shape == digits.native_hw and len({r.label for r in records}) == digits.published_classes


# ---- one run id per computation ------------------------------------------------------------------
DIGITS_1_SHOT = {"kind": "transfer", "target": "digits", "shots": 1}
SPELLED = {"steps": 500, "image_size": 128, "mixup": 0.0, "batch_size": 128, "lr": 0.001}


def test_a_spelled_out_digits_cell_is_the_plain_cell():
    """The issue's example: the values BiT-HyperRule picks for digits 1-shot, written out, are the same cell."""
    plain = RunConfig(**DIGITS_1_SHOT)
    spelled = RunConfig(**DIGITS_1_SHOT, **SPELLED)
    assert spelled.run_id != plain.run_id, "RunConfig alone hashes what it is given"
    assert resolve.canonical(spelled) == plain and resolve.canonical(spelled).run_id == plain.run_id
    cells = sweepfile.load_sweep({"transfer": [DIGITS_1_SHOT, {**DIGITS_1_SHOT, **SPELLED}]})
    assert [c.run_id for c in cells] == [plain.run_id], "one cell: it runs once, figures count it once"


@pytest.mark.parametrize(
    "change",
    [{"steps": 400}, {"image_size": 96}, {"lr": 0.002}, {"mixup": 0.1}, {"batch_size": 64, "lr": 0.001}],
)
def test_a_value_the_recipe_would_not_pick_keeps_its_own_run_id(change):
    plain = RunConfig(**DIGITS_1_SHOT)
    cell = RunConfig(**{**DIGITS_1_SHOT, **change})
    assert resolve.canonical(cell) == cell and cell.run_id != plain.run_id


def test_every_paper_cell_spelled_out_keeps_its_run_id(paper_cells, paper_rows):
    """Each paper.yaml cell with its resolved steps (transfers), crop, LR, MixUp and epochs written out is the same
    cell; a pre-training `steps` stays (its default follows the exact size of the label files)."""
    for cfg, row in zip(paper_cells, paper_rows):
        spelled = {"image_size": row["crop"], "lr": row["lr"], "mixup": row["mixup_alpha"]}
        spelled.update({"epochs": row["epochs"]} if cfg.kind == "pretrain" else {"steps": row["steps"]})
        assert resolve.canonical(cfg.replace(**spelled)).run_id == cfg.run_id, cfg.name
    pretrain = next(c for c in paper_cells if c.kind == "pretrain")
    steps = next(r["steps"] for r in paper_rows if r["run_id"] == pretrain.run_id)
    assert resolve.canonical(pretrain.replace(steps=steps)).steps == steps


def test_canonical_judges_on_static_facts_only():
    """Without a published size (`split_mode` other than paper, an unregistered ImageFolder target) or a known image
    size, nothing is reset; roots (files on this machine) play no part."""
    full = RunConfig(target="cifar10", steps=10_000, image_size=128, mixup=0.1)
    assert resolve.canonical(full.replace(split_mode="paper")).steps == 0
    assert resolve.canonical(full).steps == 10_000 and resolve.canonical(full).image_size == 0  # 32 px: 128
    folder = RunConfig(target="my-images", shots=1, steps=500, image_size=128)
    assert resolve.canonical(folder) == folder, "classes and image size unknown: 500 steps and 128 px are choices"
    rooted = RunConfig(**DIGITS_1_SHOT, **SPELLED, roots=("digits=/does/not/exist",))
    assert resolve.canonical(rooted) == RunConfig(**DIGITS_1_SHOT, roots=rooted.roots)
    pretrain = RunConfig(kind="pretrain", sources=("chexpert",), epochs=90, image_size=224, lr=0.005, mixup=0.0)
    assert resolve.canonical(pretrain) == RunConfig(kind="pretrain", sources=("chexpert",))


def test_cells_that_spell_nothing_out_keep_their_run_ids(monkeypatch):
    """Canonical cells of every sweep file and of the bundled stores are left as they are."""
    canonical = resolve.canonical
    for folder in ("example-results", "paper-format-results"):
        for path in sorted((REPO / "notebooks" / folder).glob("*.json")):
            cfg = RunConfig.from_dict(json.loads(path.read_text())["config"])
            assert canonical(cfg) == cfg, path.name
    loaded = {name: sweepfile.load_sweep(SWEEPS / name) for name in ("paper.yaml", "extended.yaml", "demo.yaml")}
    monkeypatch.setattr(resolve, "canonical", lambda cfg: cfg)  # the cells as RunConfig alone makes them
    for name, cells in loaded.items():
        assert [c.run_id for c in sweepfile.load_sweep(SWEEPS / name)] == [c.run_id for c in cells], name


@pytest.mark.slow
def test_xrstudy_train_runs_the_canonical_cell(tmp_path, monkeypatch):
    train = pytest.importorskip("xrstudy.training.train")
    ran = []
    monkeypatch.setattr(train, "run", lambda cfg, **_: ran.append(cfg) or {})
    path = RunConfig(**DIGITS_1_SHOT, **SPELLED).to_yaml(tmp_path / "cell.yaml")
    assert cli.main(["train", str(path)]) == 0
    assert ran == [RunConfig(**DIGITS_1_SHOT)]


# ---- the tidy table counts one cell once -----------------------------------------------------------
def _result(cfg: RunConfig, value: float) -> dict:
    return store.new_result(cfg, {"test/acc": value}, last_step=500)


def test_the_table_warns_when_results_would_be_averaged_as_one_seed(tmp_path):
    """A result stored before run ids followed the computation (the spelled-out cell) beside the plain one: both
    are one seed of one bar. The warning names the cell and both run ids; other seeds and targets are quiet."""
    plain = RunConfig(**DIGITS_1_SHOT)
    spelled = RunConfig(**DIGITS_1_SHOT, **SPELLED)
    for cfg, value in ((plain, 0.5), (spelled, 0.6), (plain.replace(seed=1), 0.4), (plain.replace(shots=5), 0.7)):
        store.save(_result(cfg, value), tmp_path)
    with pytest.warns(UserWarning) as caught:
        frame = store.table(tmp_path)
    messages = [str(w.message) for w in caught if "more than one result" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("1 cell(s) of the table hold more than one result")
    ids = ", ".join(sorted([plain.run_id, spelled.run_id]))
    assert f"transfer/digits/scratch_bit50x1/1/0/xrstudy/1.0/finetune: {ids}" in messages[0]
    assert frame["run_id"].nunique() == 4
    assert store.duplicate_cells(frame) == {
        ("transfer", "digits", "scratch_bit50x1", 1, 0, "xrstudy", 1.0, "finetune"): sorted(
            [plain.run_id, spelled.run_id]
        )
    }


def test_a_table_of_distinct_cells_does_not_warn(tmp_path, recwarn):
    for seed in range(3):
        store.save(_result(RunConfig(**DIGITS_1_SHOT, seed=seed), 0.5), tmp_path)
    store.table(tmp_path)
    assert not [w for w in recwarn if "more than one result" in str(w.message)]


# ---- one cache of tables -------------------------------------------------------------------------------
def test_every_shot_and_seed_of_a_target_reads_its_files_once(tmp_path, monkeypatch):
    from xrstudy import demo

    roots = demo.miniature_roots(tmp_path / "mini", "tiny")
    built = []
    real = studydata._split_stage
    monkeypatch.setattr(studydata, "_split_stage", lambda cfg: built.append(cfg) or real(cfg))
    studydata._full_table.cache_clear()
    studydata._training_set.cache_clear()
    base = RunConfig(target="padchest-cl", roots=(f"padchest-cl={roots['padchest-cl']}",), out_dir=str(tmp_path))
    cells = [base.replace(shots=k, seed=s, shots_mode="paper") for k in (1, 5) for s in (0, 1)] + [base]
    facts = [studydata.training_set(c) for c in cells]
    assert len(built) == 1, "one full table for every shot count and seed"
    for cfg, got in zip(cells, facts):
        study = studydata.prepare(cfg)  # what training builds: the same set, drawn by the same function
        assert (got.size, got.shots_ids) == (len(study.train), study.shots_ids)
        assert got.universe == len(study.universe) and got.evaluated == len(study.valid) + len(study.test)
    assert set(studydata.TABLE_FIELDS) <= set(RunConfig.__dataclass_fields__)


# ---- the resolved cell is what runs, and the result records it ----------------------------------------------
@pytest.mark.slow  # trains two tiny cells
def test_training_runs_the_planned_cell_and_records_it(tmp_path):
    train = pytest.importorskip("xrstudy.training.train")
    from xrstudy import demo

    roots = demo.miniature_roots(tmp_path / "mini", "tiny")
    common = {
        "arch": "resnetv2_tiny_bit",
        "steps": 2,
        "batch_size": 8,
        "out_dir": str(tmp_path / "out"),
        "roots": tuple(f"{name}={path}" for name, path in roots.items()),
    }
    cells = [
        RunConfig(target="digits", shots=1, seed=1, shots_mode="paper", **common),
        RunConfig(target="padchest-cl", shots=2, image_size=32, **common),
    ]
    rows = plan.plan_cells(cells, device="cpu")
    for cfg, row in zip(cells, rows):
        result = train.run(cfg)
        resolved = result["resolved"]
        assert store.validate(result) is result and row["train_size_from"] == "label files"
        differs = {k for k in resolved if resolved[k] != row[k]}
        assert differs <= {"image_hw_from", "micro_batch_from"}, {k: (row[k], resolved[k]) for k in differs}
        assert resolved["shots_sha256"] == resolve.shots_digest(result["shots_ids"]), "the plan drew the same set"
        assert resolved["precision"] == "fp32" and resolved["steps"] == result["last_step"] == 2


# ---- package data --------------------------------------------------------------------------------
def test_a_missing_cost_table_is_an_error_naming_it_never_a_zero(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "throughput.csv"
    monkeypatch.setenv("XRSTUDY_THROUGHPUT", str(missing))
    with pytest.raises(cost.CostTableError, match=re.escape(f"{missing}: cannot read the throughput table")):
        cost.throughput("resnetv2_50x1_bit", 224)
    assert cli.main(["sweep", "plan", str(SWEEPS / "demo.yaml")]) == 2
    assert f"xrstudy: error: {missing}: cannot read the throughput table" in capsys.readouterr().err
    cell = RunConfig(target="cifar10")  # a run only reports its cost: the table cannot stop it
    running = resolve.resolve(cell, resolve.registry_facts(cell), device="H100", planning=False)
    assert running.gpu_hours is None and running.throughput_from.startswith(f"no estimate: {missing}")
    missing.write_text("device,precision,arch,resolution,mode,images_per_s,source\n")
    with pytest.raises(cost.CostTableError, match="the throughput table has no rows"):
        cost.throughput_table()
    monkeypatch.delenv("XRSTUDY_THROUGHPUT")
    assert cost.throughput("resnetv2_50x1_bit", 224).images_per_s == 1897.0, "the package's own table"


def test_the_tables_and_notebooks_are_package_data():
    import importlib.resources

    for name in cost.TABLES:
        assert (importlib.resources.files("xrstudy.training") / "tables" / name).is_file()
    for name in sweepfile.NOTEBOOKS.values():
        assert sweepfile.notebook_path(name).is_file()
    assert (importlib.resources.files("xrstudy.notebooks") / "example-results").is_dir()
    assert cost.table_device("NVIDIA H100 80GB HBM3") == "H100" and cost.table_device("NVIDIA H200") == "NVIDIA H200"
    assert cost.table_device("NVIDIA A100-SXM4-40GB") == "A100-40GB"


@pytest.mark.slow  # builds the wheel (pip, setuptools from the package index)
def test_the_wheel_ships_every_package_the_notebooks_and_the_tables(tmp_path):
    # Built from a copy of the tree: setuptools keeps a build/ folder in a working checkout whose stale copies
    # (a file deleted since) would end up in the wheel and hide a missing one.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if built.returncode and re.search(r"No matching distribution|Could not fetch|Network", built.stderr):
        pytest.skip(f"no package index here to build with: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr[-2000:]
    import zipfile

    (wheel,) = tmp_path.glob("xrstudy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in _packages():
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    for name in ("00_explore_sources", "10_pretrain", "20_transfer", "30_figures", "40_scaling"):
        assert f"xrstudy/notebooks/{name}.ipynb" in names
    assert {f"xrstudy/training/tables/{name}" for name in cost.TABLES} <= names
    stores = [n for n in names if re.match(r"xrstudy/notebooks/(example|paper-format)-results/.+\.json$", n)]
    assert len(stores) == len(list((REPO / "notebooks").glob("*-results/*.json")))


def _packages() -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_recipes_input_stats_are_the_resolvers_for_every_init():
    for init, label in (
        ("paper", "imagenet21k"),
        ("paper", "chexpert"),
        ("scratch", ""),
        ("run:pretrain-0123456789ab", ""),
    ):
        cfg = RunConfig(target="pets", init=init, init_label=label)
        assert resolve.input_stats(cfg) == recipes.input_stats(cfg, SOURCES["pets"].input_stats)
    timm_cell = RunConfig(target="pets", init="timm", arch="resnetv2_50x1_bit.goog_in21k")
    assert resolve.input_stats(timm_cell)[:2] == recipes.XRAY_STATS
    assert resolve.input_stats(timm_cell, recipes.XRAY_STATS) == resolve.input_stats(timm_cell)
    other = RunConfig(target="pets", init="timm", arch="resnet50.a1_in1k")
    assert resolve.input_stats(other)[:2] == (None, None)
