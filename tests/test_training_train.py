"""train.run end to end on CPU: real image cache, pre-training -> checkpoint -> transfer, result JSON,
resume after a kill (in-process and SIGKILL'd subprocess), and `xrstudy train cfg.yaml` via data.prepare."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cells import FINDINGS, SHAPES, TINY, Stop, StopAfter, pretrain_cfg, shapes_study, transfer_cfg, xray_study
from helpers import sigkill_when

from xrstudy.config import ConfigError, RunConfig
from xrstudy.data.studydata import StudyData
from xrstudy.pixels.loaders import Augment
from xrstudy.training import recipes, train
from xrstudy.training.callbacks import load_train_state
from xrstudy.training.learner import TrainSetup, make_learner, mean_loss
from xrstudy.training.models import create_model, read_checkpoint

# ---- a StudyData built directly from PNGs ----------------------------------------------------------


def checkpoint_weights(result: dict) -> dict[str, torch.Tensor]:
    return read_checkpoint(result["checkpoint"]["path"]).state


# ---- one reference run, shared by the tests that compare with it -------------------------------
@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> StudyData:
    return xray_study(tmp_path_factory.mktemp("xray"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, xray: StudyData) -> dict:
    """One uninterrupted pre-training run (with MixUp and NaN targets): the resume tests must end
    with its weights, the transfer test starts from its checkpoint."""
    return train.run(pretrain_cfg(tmp_path_factory.mktemp("reference")), study=xray)


# ---- tests ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretrain_then_transfer_through_the_real_cache(tmp_path, reference):
    pre = reference
    out = Path(pre["config"]["out_dir"])
    assert pre["status"] == "ok" and pre["last_step"] == 6
    assert set(pre["metrics"]) >= {"test/acc", "test/auc", "test/ap", "valid/auc"}
    assert set(pre["per_class"]["auc"]) == set(FINDINGS) and "test/ap" in pre["ci"]
    assert pre["counts"]["train"] == 18 and pre["counts"]["dropped"] == {"view": 1}
    assert pre["split_sha256"] == "xray-split" and pre["device"] == "cpu"
    assert (out / "cache").is_dir()  # the real uint8 cache was built
    ckpt = read_checkpoint(pre["checkpoint"]["path"], arch=TINY)
    assert ckpt.sidecar["split_sha256"] == "xray-split" and ckpt.sidecar["config"]["kind"] == "pretrain"
    assert ckpt.sidecar["sha256"] == pre["checkpoint"]["sha256"] and ckpt.sidecar["classes"] == list(FINDINGS)
    assert not (Path(pre["checkpoint"]["path"]).parent / train.TRAIN_STATE).exists()
    saved = json.loads((out / "results" / f"{pretrain_cfg(out).run_id}.json").read_text())
    assert saved["run_id"] == pre["run_id"]

    # The shapes are easy: a transfer that learns anything separates them on the test split.
    cfg = transfer_cfg(out, init=f"run:{pre['run_id']}", steps=40, lr=0.1)
    result = train.run(cfg, study=shapes_study(tmp_path / "shapes", per_class=10))
    assert result["status"] == "ok" and result["checkpoint"] is None and "valid/acc" not in result["metrics"]
    assert result["metrics"]["test/acc"] >= 0.8, result["metrics"]
    assert result["metrics"]["test/auc"] >= 0.9
    assert result["counts"]["shots_ids"] == 3 and set(result["per_class"]["auc"]) == set(SHAPES)
    # the init's pre-training config travels with the transfer: the table needs no pre-training result
    assert result["init_config"] == ckpt.sidecar["config"] and result["init_config"]["kind"] == "pretrain"


def test_transfer_recipe_follows_the_hyperrule():
    recipe = recipes.recipe_for(RunConfig(kind="transfer", target="t"), 5_000, (32, 32))
    assert recipe.resize == 160 and recipe.crop == recipe.eval_size == 128 and recipe.mixup_alpha == 0.0
    assert recipe.steps == 500 and recipe.warmup == 100 and recipe.decays == (200, 300, 400)
    assert recipe.weight_decay == 0.0 and recipe.base_lr == pytest.approx(0.001)
    big = recipes.recipe_for(RunConfig(kind="transfer", target="t"), 50_000, (500, 400))
    assert big.resize == 512 and big.crop == 480 and big.mixup_alpha == 0.1 and big.steps == 10_000
    pre = recipes.recipe_for(RunConfig(kind="pretrain", sources=("c",), batch_size=256), 2560, (0, 0), pipeline="xray")
    assert pre.steps == 900 and pre.warmup == 150 and pre.weight_decay == 1e-4 and pre.crop == 224
    augment = train.AUGMENTS[pre.augment](pre)
    assert augment.rotate_deg == 45 and augment.shift == 0.25 and augment.scale == 0.1


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, xray, reference):
    cfg = pretrain_cfg(tmp_path / "b")
    with pytest.raises(Stop):
        train.run(cfg, study=xray, callbacks=[StopAfter(5)], checkpoint_every_steps=2)
    assert load_train_state(cfg.run_dir / train.TRAIN_STATE)["step"] == 4
    resumed = train.run(cfg, study=xray, resume=True)
    assert resumed["metrics"] == reference["metrics"] and resumed["ci"] == reference["ci"]
    a, b = checkpoint_weights(reference), checkpoint_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (cfg.run_dir / train.TRAIN_STATE).exists()


@pytest.mark.slow
def test_resume_refuses_another_runs_state(tmp_path, xray):
    cfg = pretrain_cfg(tmp_path / "o", steps=3)
    with pytest.raises(Stop):
        train.run(cfg, study=xray, callbacks=[StopAfter(2)], checkpoint_every_steps=1)
    other = cfg.replace(seed=1)
    other.run_dir.mkdir(parents=True)
    (cfg.run_dir / train.TRAIN_STATE).rename(other.run_dir / train.TRAIN_STATE)
    with pytest.raises(ValueError, match="training state of run"):
        train.run(other, study=xray, resume=True)


_CHILD = textwrap.dedent("""
    import sys, time
    from fastai.callback.core import Callback
    from cells import pretrain_cfg, xray_study
    from xrstudy.training import train
    from pathlib import Path

    class Slow(Callback):
        order = 99
        def after_step(self):
            if self.learn.step + 1 >= 4:
                time.sleep(60)  # killed here

    tmp = Path(sys.argv[1])
    train.run(pretrain_cfg(tmp / "b"), study=xray_study(tmp / "xray"), callbacks=[Slow()], checkpoint_every_steps=2)
""")


@pytest.mark.slow
def test_sigkilled_process_resumes_to_the_same_weights(tmp_path, reference):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], env=env)
    cfg = pretrain_cfg(tmp_path / "b")
    state_path = cfg.run_dir / train.TRAIN_STATE
    sigkill_when(child, lambda: state_path.is_file() and load_train_state(state_path)["step"] == 4)
    assert load_train_state(state_path)["step"] == 4
    resumed = train.run(cfg, study=xray_study(tmp_path / "xray"), resume=True)
    a, b = checkpoint_weights(reference), checkpoint_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"] == reference["metrics"]


@pytest.mark.slow
def test_cli_trains_a_pretraining_and_a_transfer_cell_from_yaml(tmp_path):
    """`xrstudy train cfg.yaml`: data.prepare reads phantom sources in their real layouts."""
    from xrstudy.data import layouts, phantoms

    style = phantoms.PhantomStyle(height=40, width=36)
    chexpert = layouts.write_layout(
        "chexpert",
        tmp_path / "CheXpert-v1.0-small",
        phantoms.xray_records(16, seed=1, style=style, splits=(("train", 0.8), ("valid", 0.2))),
    )
    padchest = layouts.write_layout(
        "padchest",
        tmp_path / "PadChest",
        phantoms.single_finding_records(6, seed=3, classes=("normal", "Cardiomegaly", "Effusion"), style=style),
    )
    out = tmp_path / "out"
    common = {
        "arch": TINY,
        "image_size": 24,
        "batch_size": 8,
        "out_dir": str(out),
        "roots": [f"chexpert={chexpert}", f"padchest-cl={padchest}"],
    }
    pre = RunConfig(kind="pretrain", sources=("chexpert",), steps=3, **common)
    pre.to_yaml(tmp_path / "pre.yaml")
    transfer = RunConfig(
        kind="transfer", target="padchest-cl", steps=3, shots=2, init=f"run:{pre.run_id}", label_mode="terms", **common
    )  # the term task: "normal" is a class
    transfer.to_yaml(tmp_path / "transfer.yaml")
    for name, cfg in (("pre", pre), ("transfer", transfer)):
        done = subprocess.run(
            [sys.executable, "-m", "xrstudy.cli", "train", str(tmp_path / f"{name}.yaml")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert cfg.run_id in done.stdout
        result = json.loads((out / "results" / f"{cfg.run_id}.json").read_text())
        assert result["status"] == "ok" and result["last_step"] == 3 and "test/auc" in result["metrics"]
    assert result["counts"]["train"] == 6 and result["counts"]["shots_ids"] == 6  # 2 shots x 3 classes
    assert len(set(result["shots_ids"])) == 6 and result["split_file"].endswith(".csv")
    assert (out / "runs" / pre.run_id / "checkpoint.json").is_file()
    missing = subprocess.run(
        [sys.executable, "-m", "xrstudy.cli", "train", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


# ---- the recipes as the authors ran them ------------------------------------------------------------
@pytest.mark.slow
def test_pretraining_keeps_the_best_validation_checkpoint_and_the_last(tmp_path, xray):
    """pretrain.py saves model.pth.tar when an epoch's validation loss improves; that is the file
    transfers load. Here: checkpoint.pt = the best of the epoch ends (steps 3, 6, 9), last.pt = the end."""
    cfg = pretrain_cfg(tmp_path / "o", steps=9, lr=0.5)  # a large LR: the loss moves between epochs
    result = train.run(cfg, study=xray)
    best = read_checkpoint(cfg.run_dir / train.CHECKPOINT)
    last = read_checkpoint(cfg.run_dir / train.LAST_CHECKPOINT)
    assert result["checkpoint"]["sha256"] == best.sidecar["sha256"]
    assert best.sidecar["step"] in (3, 6, 9) and last.sidecar["step"] == 9
    assert np.isfinite(best.sidecar["valid_loss"])

    # The validation loss of each set of weights, through the same code path.
    splits, _ = train.open_splits(cfg, xray, 24, "L")
    setup = TrainSetup(
        multilabel=True,
        num_classes=2,
        schedule=recipes.Schedule(1, 0, (), 0.0),
        per_device_batch=8,
        seed=0,
        augment=Augment(out_size=24),
        eval_size=24,
        weight_decay=0.0,
    )
    losses = {}
    for name, ckpt in (("best", best), ("last", last)):
        model = create_model(cfg, 2)
        model.load_state_dict(ckpt.state)
        losses[name] = mean_loss(make_learner(model, splits["train"], setup), splits["valid"], 16)
    assert losses["best"] == pytest.approx(best.sidecar["valid_loss"], rel=1e-6)
    assert losses["best"] <= losses["last"] + 1e-9


def test_inputs_are_normalised_with_the_inits_statistics():
    from xrstudy.training.models import input_stats
    from xrstudy.training.recipes import IMAGENET_STATS, XRAY_STATS

    assert input_stats(RunConfig(kind="transfer", target="t")) == XRAY_STATS  # scratch
    assert input_stats(RunConfig(kind="transfer", target="t", init="run:pretrain-0123456789ab")) == XRAY_STATS
    assert input_stats(RunConfig(kind="transfer", target="t", init="paper", init_label="chexpert_mimic")) == XRAY_STATS
    assert input_stats(RunConfig(kind="transfer", target="t", init="paper", init_label="imagenet21k")) == IMAGENET_STATS
    # configs/finetune/padchest.yaml sets 0.5 / 0.5, which their ImageNet models (no statistics) then use
    assert (
        input_stats(RunConfig(kind="transfer", target="padchest-cl", init="paper", init_label="imagenet21k"))
        == XRAY_STATS
    )
    assert IMAGENET_STATS == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    timm_bit = RunConfig(kind="transfer", target="t", init="timm", arch="resnetv2_50x1_bit.goog_in21k")
    assert input_stats(timm_bit) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's pretrained_cfg of the tag


@pytest.mark.slow
def test_a_cell_whose_cache_cannot_fit_refuses_to_start(tmp_path, xray, monkeypatch):
    from xrstudy import fileio

    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(fileio.DiskFullError, match=r"not enough free space in .* for the image cache of .*: needs"):
        train.run(pretrain_cfg(tmp_path / "o"), study=xray)


@pytest.mark.slow
def test_memory_stays_bounded_when_the_dataset_grows(tmp_path):
    """benchmarks/bench_memory.py's method at test size: peak anonymous memory (RssAnon, which leaves
    out the memory-mapped cache's shared page-cache pages) of a pre-training process on a 2,000 and a
    20,000-image synthetic cache at 96 px. Loading the split would grow it by the cache growth (ratio
    >= 1); streaming keeps a rank's share to its per-image metadata (tables, path index, targets)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_memory", Path(__file__).parents[1] / "benchmarks" / "bench_memory.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = SimpleNamespace(dir=str(tmp_path), px=96, steps=4, batch=16, threads=1)
    peaks, sizes = {}, {}
    for count in (2_000, 20_000):
        paths = bench.synthetic_paths(tmp_path / f"n{count}", count)
        sizes[count] = (bench.write_synthetic_cache(tmp_path / "cache", paths, 96) / "images.u8").stat().st_size
        (report,) = bench.run_cell(args, count, 1)
        peaks[count] = report["peak"]
    ratio = (peaks[20_000] - peaks[2_000]) / (sizes[20_000] - sizes[2_000])
    assert ratio < 0.3, (ratio, peaks, sizes)


def _xray_study(folder: Path, n: int = 10, unreadable_train: bool = False):
    """A tiny multi-label X-ray study; with `unreadable_train` every training file holds no image."""
    import pandas as pd
    from PIL import Image

    from xrstudy.data.studydata import StudyData

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = folder / f"x{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
        rows.append({"image_id": f"x{i}", "path": str(path), "Effusion": float(i % 2), "Edema": float(i % 3 == 0)})
    table = pd.DataFrame(rows)
    train, valid, test = table[:6], table[6:8], table[8:]
    if unreadable_train:
        for path in train["path"]:
            Path(path).write_bytes(b"not an image")
    return StudyData(
        train=train, valid=valid, test=test, classes=("Edema", "Effusion"), multilabel=True, split_sha256="s",
        modality="xray",
    )  # fmt: skip


@pytest.mark.slow
def test_every_training_image_quarantined_names_the_data_and_the_quarantine_report(tmp_path):
    from xrstudy.training import train

    study = _xray_study(tmp_path / "images", unreadable_train=True)
    cfg = RunConfig(
        kind="pretrain", sources=("chexpert",), arch="resnetv2_tiny_bit", image_size=24, steps=2, batch_size=4,
        out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        train.run(cfg, study=study)
    report = next((tmp_path / "out" / "cache").rglob("quarantine.json"))
    assert str(err.value).startswith(
        f"{cfg.name}: all 6 training images of chexpert were quarantined by the image cache (unreadable), so nothing "
        f"is left to train on; the reasons are in {report} (e.g. {tmp_path / 'images' / 'x00.png'}: "
    )
    assert sorted(json.loads(report.read_text())) == sorted(study.train["path"])
    assert not (tmp_path / "out" / "results").exists()  # no result claims a run
    with pytest.raises(ConfigError) as err:
        train.probe_image(list(study.train["path"]), "training images of cifar10")
    assert str(err.value).startswith(
        f"none of the first 6 training images of cifar10 is readable (the first: {tmp_path / 'images' / 'x00.png'}: "
    )


@pytest.mark.slow  # two short training runs
def test_a_damaged_cache_fails_the_cell_and_keeps_the_stored_ok_result(tmp_path):
    """The issue's probe: a cell re-run on a damaged cache used to train on it and replace the good result."""
    from xrstudy.pixels import imagecache
    from xrstudy.results import store
    from xrstudy.training import train

    study = _xray_study(tmp_path / "images")
    cfg = RunConfig(
        kind="pretrain", sources=("chexpert",), arch="resnetv2_tiny_bit", image_size=24, steps=2, batch_size=4,
        out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    train.run(cfg, study=study)
    stored = store.result_path(cfg.run_id, cfg.results_dir)
    good = stored.read_bytes()
    assert store.load(stored)["status"] == "ok"
    (images,) = (tmp_path / "out" / "cache").rglob("images.u8")
    images.write_bytes(bytes(images.stat().st_size))  # zeroed, done bitmap intact
    with pytest.raises(imagecache.CacheCorruptError, match=rf"^image cache {re.escape(str(images.parent))}: "):
        train.run(cfg, study=study)
    assert stored.read_bytes() == good  # the ok result stays, untouched
