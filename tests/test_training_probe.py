"""The linear probe (`train_mode: probe`): a frozen backbone, features cached once per init and images, an L2
logistic regression whose C is chosen on training images only; resume, failure and the config rules."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from xrstudy import demo
from xrstudy.config import ConfigError, RunConfig
from xrstudy.pixels.imagecache import CacheCorruptError
from xrstudy.pixels.loaders import Split
from xrstudy.results import store
from xrstudy.sweeps import worker
from xrstudy.training import history, probe, recipes, train
from xrstudy.training.models import create_model

TINY = "resnetv2_tiny_bit"


# ---- the demo's data, an X-ray init pre-trained on it (shared by the cell tests) --------------------
@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    return demo.write_sources(tmp_path_factory.mktemp("probe-data"), demo.SIZES["tiny"])


def _roots(data: dict[str, Path]) -> tuple[str, ...]:
    return tuple(f"{name}={path}" for name, path in data.items())


@pytest.fixture(scope="module")
def xray_init(demo_data, tmp_path_factory) -> RunConfig:
    """A short pre-training on the demo's CheXpert + NIH phantoms: the init the probes freeze."""
    out = tmp_path_factory.mktemp("probe-init")
    cfg = RunConfig(
        kind="pretrain",
        name="xray",
        sources=("chexpert", "nih"),
        roots=_roots(demo_data),
        arch=TINY,
        image_size=24,
        steps=3,
        batch_size=16,
        out_dir=str(out),
    )
    train.run(cfg)
    return cfg


def probe_cfg(parent: RunConfig, data: dict[str, Path], out: Path, **changes) -> RunConfig:
    fields = {
        "kind": "transfer",
        "target": "padchest-cl",
        "init": f"run:{parent.run_id}",
        "train_mode": "probe",
        "roots": _roots(data),
        "arch": TINY,
        "image_size": 24,
        "shots": 5,
        "out_dir": parent.out_dir,
        "cache_dir": str(out / "cache"),
        **changes,
    }
    return RunConfig(**fields)


class Extractions:
    """Counts the network passes of probe.extract_features, and checks the weights around each."""

    def __init__(self, monkeypatch):
        self.calls, self.images = 0, 0
        original = probe.extract_features

        def counted(model, images, **kwargs):
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            features = original(model, images, **kwargs)
            after = model.state_dict()
            assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
            self.calls += 1
            self.images += len(images)
            return features

        monkeypatch.setattr(probe, "extract_features", counted)


# ---- a probe cell end to end ------------------------------------------------------------------------
@pytest.mark.slow
def test_probe_cell_runs_end_to_end_and_its_second_seed_reuses_the_features(
    demo_data, xray_init, tmp_path, monkeypatch
):
    extractions = Extractions(monkeypatch)
    first = probe_cfg(xray_init, demo_data, tmp_path, seed=0)
    result = train.run(first)
    saved = store.load(store.result_path(first.run_id, first.results_dir))  # the fine-tune schema, digest checked
    assert saved["metrics"] == result["metrics"] and saved["probe"] == result["probe"]
    assert result["status"] == "ok" and result["last_step"] is None and result["checkpoint"] is None
    assert {"test/acc", "test/auc", "test/ap", "valid/auc"} <= set(result["metrics"])
    assert set(result["ci"]) == {"test/acc", "test/auc", "test/ap"}
    details = result["probe"]
    images = details["features"]["images"]
    assert extractions.calls >= 1 and extractions.images == images  # every image of the dataset, once
    assert details["features"] == {"images": images, "dim": 256, "extracted": images, "reused": 0}
    assert result["counts"]["train"] == result["counts"]["shots_ids"]  # the k-shot rows of the cached features

    # The features are those of the init's weights, unchanged: the digest of the frozen network equals the one
    # of the init as create_model builds it, and the weights were bit-identical around every extraction.
    init_net = probe.backbone(create_model(first, num_classes=len(result["per_class"]["auc"])))
    assert details["backbone_unchanged"] and details["backbone_sha256"] == probe.backbone_digest(init_net)

    # Another seed and the full training set: the same features, no second extraction.
    calls = extractions.calls
    for changes in ({"seed": 1}, {"shots": 0, "seed": 0}):
        again = train.run(probe_cfg(xray_init, demo_data, tmp_path, **changes))
        assert extractions.calls == calls, f"{changes} extracted again"
        assert again["probe"]["feature_cache"] == details["feature_cache"]
        assert again["probe"]["features"] == {"images": images, "dim": 256, "extracted": 0, "reused": images}
    assert again["counts"]["train"] > result["counts"]["train"]

    # Pixels damaged after the image cache was built: an extraction checks them as fine-tuning does, rather
    # than caching features of the damaged pixels for every later seed
    (images,) = (tmp_path / "cache").rglob("images.u8")
    pixels = np.memmap(images, dtype=np.uint8, mode="r+")
    pixels[: pixels.size // 2] = 0
    pixels.flush()
    del pixels
    shutil.rmtree(tmp_path / "cache" / "features" / details["feature_cache"][:16])  # named by the key's digest
    with pytest.raises(CacheCorruptError, match="differ from the checksums recorded"):
        train.run(probe_cfg(xray_init, demo_data, tmp_path, seed=2))

    # Its history, as a fine-tuned run's: a row per regression fit (each C on the images left after the held-out
    # part, with its held-out loss), then the chosen C fitted on every training image.
    rows = history.read_rows(first.run_dir / history.HISTORY_FILE)
    assert [r["step"] for r in rows] == list(range(1, len(recipes.PROBE_C_GRID) + 2))
    assert [r["probe/C"] for r in rows[:-1]] == sorted(recipes.PROBE_C_GRID) and rows[-1]["probe/C"] == details["C"]
    assert all(r["valid/loss"] is not None for r in rows[:-1]) and rows[-1]["valid/loss"] is None
    assert all(math.isfinite(r["train/loss"]) for r in rows) and result["history"]["step"][-1] == len(rows)


@pytest.mark.slow
def test_a_killed_probe_cell_resumes_and_a_failing_one_is_failed_with_its_cause(
    demo_data, xray_init, tmp_path, monkeypatch
):
    """Through the sweep worker's attempt protocol (claim, execute, verify), as any cell."""
    monkeypatch.setitem(worker.EXECUTORS, "direct", lambda cfg, notebook, output: train.run(cfg, resume=True))
    monkeypatch.setattr(probe, "PART_IMAGES", 32)
    cfg = probe_cfg(xray_init, demo_data, tmp_path, shots=0, seed=3)
    original, calls = probe.extract_features, []

    def dies_on_the_second_part(model, images, **kwargs):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C / a kill in the middle of the extraction
        return original(model, images, **kwargs)

    monkeypatch.setattr(probe, "extract_features", dies_on_the_second_part)
    attempt = worker.run_in_process(cfg, "direct", Path("unused.ipynb"))
    assert attempt.outcome == worker.AttemptEnd.FAILED and "KeyboardInterrupt" in attempt.cause
    assert not store.is_done(cfg) and worker.read_attempt(cfg) == attempt.cause

    attempt = worker.run_in_process(cfg, "direct", Path("unused.ipynb"))
    assert attempt.outcome == worker.AttemptEnd.DONE
    features = store.load(store.result_path(cfg.run_id, cfg.results_dir))["probe"]["features"]
    assert features["reused"] == 32 and features["extracted"] == features["images"] - 32  # the first part kept
    # ... and the features equal those of an uninterrupted extraction into another cache.
    resumed = np.load(
        Path(store.load(store.result_path(cfg.run_id, cfg.results_dir))["probe"]["feature_dir"]) / "features.npy"
    )
    monkeypatch.setattr(probe, "extract_features", original)
    fresh = train.run(cfg.replace(cache_dir=str(tmp_path / "fresh-cache")))
    assert fresh["probe"]["features"]["extracted"] == len(resumed)
    assert np.array_equal(resumed, np.load(Path(fresh["probe"]["feature_dir"]) / "features.npy"))

    missing = probe_cfg(xray_init, demo_data, tmp_path, init="run:pretrain-000000000000")
    attempt = worker.run_in_process(missing, "direct", Path("unused.ipynb"))
    assert attempt.outcome == worker.AttemptEnd.FAILED and "pretrain-000000000000" in attempt.cause
    assert "CheckpointError" in attempt.cause and not store.is_done(missing)


# ---- the feature cache -------------------------------------------------------------------------------
def _images(n: int) -> Split:
    return Split(np.zeros((n, 2, 2), np.uint8), np.arange(n), torch.zeros(n))


def _key(**changes) -> probe.FeatureKey:
    fields = {"images": "cache", "weights": "w", "arch": TINY, "eval_size": 24, "mean": (0.5,), "std": (0.5,)}
    return probe.FeatureKey(**{**fields, **changes})


def _fake_extract(counter: list[int]):
    def extract(part: Split) -> np.ndarray:
        counter.append(len(part))
        return np.stack([part.rows, part.rows * 2], 1).astype(np.float32)

    return extract


def test_feature_cache_is_keyed_by_what_the_features_depend_on_and_read_back(tmp_path):
    counter: list[int] = []
    first = probe.cached_features(tmp_path, _key(), _images(10), _fake_extract(counter), part_images=4)
    assert counter == [4, 4, 2] and first.extracted == 10 and first.reused == 0
    again = probe.cached_features(tmp_path, _key(), _images(10), _fake_extract(counter), part_images=4)
    assert counter == [4, 4, 2] and again.extracted == 0 and np.array_equal(again.values, first.values)
    assert not (first.folder / "parts").exists()  # published: the parts are gone
    for change in ({"weights": "w2"}, {"eval_size": 32}, {"mean": (0.4,)}, {"images": "other"}):
        assert _key(**change).digest != _key().digest
        assert probe.cached_features(tmp_path, _key(**change), _images(10), _fake_extract(counter)).extracted == 10


def test_an_interrupted_feature_build_resumes_from_its_parts(tmp_path):
    counter: list[int] = []

    def dies_after_two_parts(part: Split) -> np.ndarray:
        if len(counter) == 2:
            raise KeyboardInterrupt
        return _fake_extract(counter)(part)

    with pytest.raises(KeyboardInterrupt):
        probe.cached_features(tmp_path, _key(), _images(10), dies_after_two_parts, part_images=4)
    assert not (tmp_path / _key().digest[:16] / "meta.json").exists()  # nothing published
    done = probe.cached_features(tmp_path, _key(), _images(10), _fake_extract(counter), part_images=4)
    assert counter == [4, 4, 2] and done.reused == 8 and done.extracted == 2
    assert np.array_equal(done.values, np.stack([np.arange(10), 2 * np.arange(10)], 1))


def test_a_damaged_feature_file_is_rebuilt(tmp_path):
    counter: list[int] = []
    first = probe.cached_features(tmp_path, _key(), _images(6), _fake_extract(counter))
    (first.folder / "features.npy").write_bytes(b"truncated")
    again = probe.cached_features(tmp_path, _key(), _images(6), _fake_extract(counter))
    assert again.extracted == 6 and np.array_equal(again.values[:, 0], np.arange(6))


def test_two_cells_started_together_extract_once(tmp_path):
    counter: list[int] = []
    slow = threading.Event()

    def extract(part: Split) -> np.ndarray:
        slow.wait(0.3)  # the second cell arrives while the first extracts
        return _fake_extract(counter)(part)

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(probe.cached_features(tmp_path, _key(), _images(5), extract)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter == [5] and sorted(r.extracted for r in results) == [0, 5]


# ---- the regression ----------------------------------------------------------------------------------
def _separable(n_per_class: int, classes: int = 3, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.normal(0, 1, (len(y), dim)) + 3 * np.eye(classes, dim)[y]
    return x.astype(np.float32), y


class Recorded:
    def __init__(self):
        self.candidates, self.choices = {}, []

    def extracted(self, images, total):
        pass

    def candidate(self, c, valid_loss, train_loss, images):
        self.candidates[c] = valid_loss

    def chosen(self, c, how, train_loss, images):
        self.choices.append((c, how))


RECIPE = recipes.ProbeRecipe(resize=24, eval_size=24, cache_fit="centre", feature_batch=8)


def test_c_is_chosen_on_a_held_out_part_of_the_training_images():
    x, y = _separable(10)
    log = Recorded()
    fit = probe.fit_probe(x, y, multilabel=False, num_classes=3, recipe=RECIPE, seed=0, log=log)
    assert set(log.candidates) == set(RECIPE.c_grid)
    best = min(log.candidates.values())
    assert fit.c == min(c for c, v in log.candidates.items() if v == best)  # ties: the stronger regularisation
    assert fit.held_out == 6 and log.choices == [(fit.c, fit.chosen_by)]  # 2 of 10 per class
    assert fit.predict_proba(x).shape == (30, 3) and (fit.predict_proba(x).argmax(1) == y).mean() > 0.9


def test_held_out_rows_are_stratified_seeded_and_absent_when_a_class_has_one_image():
    y = np.repeat(np.arange(4), [2, 5, 10, 3])
    mask = probe.held_out(y, False, 0.2, seed=0)
    assert [int(mask[y == k].sum()) for k in range(4)] == [1, 1, 2, 1]  # each class keeps a training image
    assert np.array_equal(mask, probe.held_out(y, False, 0.2, seed=0))
    assert not np.array_equal(mask, probe.held_out(y, False, 0.2, seed=1))
    assert probe.held_out(np.arange(3), False, 0.2, seed=0) is None  # 1-shot
    x, one_shot = _separable(1)
    fit = probe.fit_probe(x, one_shot, multilabel=False, num_classes=3, recipe=RECIPE, seed=0)
    assert fit.c == RECIPE.default_c and fit.held_out == 0 and fit.chosen_by.startswith("default")


def test_a_class_absent_from_training_gets_probability_zero():
    x, y = _separable(4)
    fit = probe.fit_probe(x, y, multilabel=False, num_classes=5, recipe=RECIPE, seed=0)
    probs = fit.predict_proba(x)
    assert probs.shape == (12, 5) and np.allclose(probs.sum(1), 1) and not probs[:, 3:].any()


def test_multilabel_targets_fit_one_regression_per_class_over_known_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 6)).astype(np.float32)
    y = np.stack([(x[:, 0] > 0), (x[:, 1] > 0), np.zeros(40, bool)], 1).astype(np.float32)
    y[rng.random(40) < 0.2, 0] = np.nan  # unknown: left out of class 0's regression
    y[:, 2] = np.nan  # never known
    fit = probe.fit_probe(x, y, multilabel=True, num_classes=3, recipe=RECIPE, seed=0)
    probs = fit.predict_proba(x)
    assert probs.shape == (40, 3) and np.all(probs[:, 2] == 0.5)
    known = ~np.isnan(y[:, 0])
    assert ((probs[known, 0] > 0.5) == (y[known, 0] > 0.5)).mean() > 0.9


# ---- what a probe cell may say ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value", [("lr", 0.1), ("steps", 10), ("mixup", 0.1), ("head", "concat"), ("precision", "bf16")]
)
def test_fields_a_probe_does_not_use_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"RunConfig.{field} = .* on a probe cell"):
        RunConfig(target="cifar10", train_mode="probe", **{field: value})


def test_probe_and_finetune_cells_have_their_own_run_ids():
    finetune = RunConfig(target="cifar10", shots=5)
    assert finetune.replace(train_mode="probe").run_id != finetune.run_id
    with pytest.raises(ConfigError, match="train_mode"):
        RunConfig(kind="pretrain", sources=("chexpert",), train_mode="probe")


def test_probe_recipe_takes_the_evaluation_view_and_twice_a_training_pass():
    recipe = recipes.recipe_for(RunConfig(target="cifar10"), 50_000, (32, 32))
    plan = recipes.probe_recipe(recipe, batch_size=128, micro_batch=32)
    assert (plan.resize, plan.eval_size, plan.cache_fit, plan.feature_batch) == (160, 128, "squash", 64)
    assert recipes.probe_recipe(recipe, batch_size=128).feature_batch == 256
