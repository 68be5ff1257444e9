"""The training layer: loaders streaming cache rows, masked losses, masked MixUp, metrics,
optimiser/AGC/schedule callbacks, gradient accumulation, atomic periodic checkpoints and resume
equality. All on CPU, tiny model, deterministic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from sklearn.metrics import average_precision_score, roc_auc_score
from timm.utils import adaptive_clip_grad

from xrstudy.config import RunConfig
from xrstudy.pixels.loaders import Augment, Batching, EvalLoader, Split, StepLoader
from xrstudy.training.callbacks import (
    AdaptiveGradClip,
    MaskedMixUp,
    _channel_affine,
    load_train_state,
    mix_targets,
    normalise,
    save_train_state,
)
from xrstudy.training.learner import (
    TrainSetup,
    fit,
    make_learner,
    masked_bce_with_logits,
    mean_loss,
    precision_callbacks,
    predict,
    restore,
)
from xrstudy.training.metrics import bootstrap_ci, classification_metrics
from xrstudy.training.models import create_model
from xrstudy.training.recipes import Schedule

TINY = "resnetv2_tiny_bit"


# ---- helpers ----------------------------------------------------------------------------------
def toy_split(n: int = 12, classes: int = 3, multilabel: bool = True, seed: int = 0, size: int = 20) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    if multilabel:
        targets = rng.integers(0, 2, (n, classes)).astype(np.float32)
        targets[rng.random((n, classes)) < 0.25] = np.nan
        return Split.of(images, torch.from_numpy(targets))
    return Split.of(images, torch.from_numpy(rng.integers(0, classes, n)))


def toy_setup(steps: int = 6, multilabel: bool = True, classes: int = 3, **changes) -> TrainSetup:
    values = dict(
        multilabel=multilabel,
        num_classes=classes,
        schedule=Schedule(steps=steps, warmup=2, decays=(4,), base_lr=0.05),
        per_device_batch=4,
        seed=3,
        augment=Augment(out_size=16, crop_fraction=0.8, flip=True),
        eval_size=16,
        weight_decay=1e-4,
        mixup_alpha=0.0,
    )
    values.update(changes)
    return TrainSetup(**values)


def toy_model(classes: int = 3, kind: str = "pretrain", head: str = "linear", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # tests may seed; library code never does
    cfg = (
        RunConfig(kind="pretrain", sources=("demo",), arch=TINY)
        if kind == "pretrain"
        else RunConfig(kind="transfer", target="demo", arch=TINY)
    )
    return create_model(cfg, classes, head=head)


class Stop(Exception):
    """Stands in for a process killed mid-run."""


class StopAfter(Callback):
    order = 99  # after the periodic checkpoint

    def __init__(self, step: int):
        self.stop_step = step

    def after_step(self) -> None:
        if self.learn.step + 1 == self.stop_step:
            raise Stop(self.stop_step)


class RecordLR(Callback):
    order = 25  # after StepSchedule set it

    def before_fit(self) -> None:
        self.lrs, self.steps = [], []

    def before_batch(self) -> None:
        if self.training:
            self.lrs.append(self.learn.opt.opt.param_groups[0]["lr"])
            self.steps.append(self.learn.step)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- masked BCE -------------------------------------------------------------------------------
def _bce(x: float, y: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_masked_bce_equals_a_hand_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -0.5]])
    target = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, 0.25]])
    known = [(0.5, 1.0), (2.0, 0.0), (3.0, 1.0), (-0.5, 0.25)]
    expected = sum(_bce(x, y) for x, y in known) / len(known)
    assert masked_bce_with_logits(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_masked_bce_ignores_unknowns_in_the_gradient_and_all_unknown_is_zero():
    logits = torch.zeros(2, 2, requires_grad=True)
    target = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]])
    masked_bce_with_logits(logits, target).backward()
    assert logits.grad[0, 0] == pytest.approx(-0.5) and torch.count_nonzero(logits.grad) == 1
    nothing = masked_bce_with_logits(torch.ones(2, 2, requires_grad=True), torch.full((2, 2), float("nan")))
    assert nothing.item() == 0.0 and not torch.isnan(nothing)


# ---- masked MixUp ---------------------------------------------------------------------------------
def test_mixed_targets_keep_unknowns_masked():
    nan = float("nan")
    target = torch.tensor([[1.0, nan, 0.0], [0.0, 1.0, nan]])
    perm = torch.tensor([1, 0])
    mixed = mix_targets(target, perm, 0.7, 3, multilabel=True)
    assert mixed[0, 0].item() == pytest.approx(0.7) and mixed[1, 0].item() == pytest.approx(0.3)
    assert torch.isnan(mixed[:, 1]).all() and torch.isnan(mixed[:, 2]).all()  # unknown in either -> masked
    logits = torch.tensor([[0.3, 5.0, -5.0], [-0.2, 7.0, 9.0]])
    expected = (_bce(0.3, 0.7) + _bce(-0.2, 0.3)) / 2
    assert masked_bce_with_logits(logits, mixed).item() == pytest.approx(expected, rel=1e-6)
    single = mix_targets(torch.tensor([0, 2]), perm, 0.75, 3, multilabel=False)
    assert torch.allclose(single, torch.tensor([[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]]))


def test_mixup_draws_are_seeded_per_step_and_the_callback_masks_nans():
    nan = float("nan")
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    target = torch.tensor([[1.0, nan], [0.0, 1.0], [nan, 0.0], [1.0, 1.0]])
    split = Split.of(images, target)
    batching = Batching(per_device_batch=4, seed=7, augment=Augment(out_size=2), mixup_alpha=0.1)

    def apply(step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        _, draws, targets, _ = StepLoader(split, batching, step, step + 1).host_batch(step, 0)
        cb = MaskedMixUp(num_classes=2, multilabel=True)
        xb = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
        cb.learn = SimpleNamespace(xb=(xb,), yb=(targets, torch.tensor(1.0)), draws=draws, step=step, training=True)
        cb.before_batch()
        return cb.learn.xb[0], cb.learn.yb[0], draws

    x1, y1, d1 = apply(5)
    x2, y2, _ = apply(5)
    assert torch.equal(x1, x2) and torch.equal(torch.nan_to_num(y1, -1), torch.nan_to_num(y2, -1))
    assert 0.0 < d1["lam"] <= 1.0 and sorted(d1["perm"].tolist()) == [0, 1, 2, 3]
    assert torch.isnan(y1).sum() >= torch.isnan(target).sum()  # NaNs never disappear
    known = ~torch.isnan(y1)
    assert ((y1[known] >= 0) & (y1[known] <= 1)).all()
    x3, _, _ = apply(6)
    assert not torch.equal(x1, x3)


# ---- metrics ------------------------------------------------------------------------------------
def test_metrics_match_sklearn_on_known_entries():
    rng = np.random.default_rng(0)
    probs = rng.random((40, 3)).astype(np.float32)
    targets = rng.integers(0, 2, (40, 3)).astype(np.float32)
    targets[rng.random((40, 3)) < 0.2] = np.nan
    metrics, per_class = classification_metrics(probs, targets, ("a", "b", "c"), multilabel=True)
    aucs, aps = [], []
    for k in range(3):
        known = ~np.isnan(targets[:, k])
        aucs.append(roc_auc_score(targets[known, k], probs[known, k]))
        aps.append(average_precision_score(targets[known, k], probs[known, k]))
    assert metrics["auc"] == pytest.approx(np.mean(aucs)) and metrics["ap"] == pytest.approx(np.mean(aps))
    assert per_class["auc"]["b"] == pytest.approx(aucs[1])
    known = ~np.isnan(targets)
    assert metrics["acc"] == pytest.approx(((probs >= 0.5) == (targets >= 0.5))[known].mean())


def test_few_shot_metrics_never_crash():
    nan = np.nan
    probs = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.5], [0.8, 0.6, 0.5]], np.float32)
    # column a: both labels; b: only positives; c: all unknown
    targets = np.array([[1, 1, nan], [0, 1, nan], [1, 1, nan]], np.float32)
    metrics, per_class = classification_metrics(probs, targets, ("a", "b", "c"), multilabel=True)
    assert metrics["auc"] == pytest.approx(1.0)  # mean over classes with both labels present: only a
    assert math.isnan(per_class["auc"]["b"]) and math.isnan(per_class["auc"]["c"])
    assert per_class["ap"]["b"] == pytest.approx(1.0) and math.isnan(per_class["ap"]["c"])
    assert metrics["ap"] == pytest.approx(1.0)
    # single-label few-shot test set holding one class only
    single = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]], np.float32)
    metrics, per_class = classification_metrics(single, np.array([0, 0]), ("x", "y", "z"), multilabel=False)
    assert metrics["acc"] == 1.0 and math.isnan(metrics["auc"]) and metrics["ap"] == pytest.approx(1.0)
    assert math.isnan(per_class["ap"]["y"])
    # nothing at all
    empty, _ = classification_metrics(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), ("a", "b"), True)
    assert all(math.isnan(v) for v in empty.values())
    assert bootstrap_ci(np.zeros((0, 2)), np.zeros((0, 2)), True) == {}


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 4, 60)
    probs = rng.random((60, 4)) + np.eye(4)[targets] * 0.6
    probs /= probs.sum(1, keepdims=True)
    first = bootstrap_ci(probs, targets, multilabel=False, seed=5, n_boot=100)
    again = bootstrap_ci(probs, targets, multilabel=False, seed=5, n_boot=100)
    other = bootstrap_ci(probs, targets, multilabel=False, seed=6, n_boot=100)
    assert first == again and first != other
    point, _ = classification_metrics(probs, targets, [str(k) for k in range(4)], multilabel=False)
    for key in ("acc", "auc", "ap"):
        lo, hi = first[key]
        assert lo <= point[key] <= hi and hi - lo < 0.5
    # a column with one label only still gives CIs for what is defined
    few = bootstrap_ci(np.array([[0.2], [0.9]]), np.array([[1.0], [1.0]]), multilabel=True, seed=0, n_boot=20)
    assert "auc" not in few and few["ap"] == [1.0, 1.0]


def test_normalise_is_the_per_channel_affine_map_and_builds_its_constants_once():
    images = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2) * 20  # grey [0, 255]
    for mean, std in (((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        expected = (images.expand(-1, 3, -1, -1) / 255 - mean_t) / std_t
        assert torch.allclose(normalise(images, mean, std, channels_last=False), expected, atol=1e-6)
    _channel_affine.cache_clear()
    for _ in range(3):  # every batch of a cell: the constants are made (and moved to the device) once
        normalise(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), channels_last=True)
    assert _channel_affine.cache_info().misses == 1


# ---- optimiser, AGC, schedule ---------------------------------------------------------------------
@pytest.mark.parametrize("weight_decay", [1e-4, 0.0])
def test_sgd_nesterov_with_recipe_weight_decay(weight_decay):
    learn = make_learner(toy_model(), toy_split(), toy_setup(weight_decay=weight_decay))
    learn.create_opt()
    opt = learn.opt.opt
    assert isinstance(opt, torch.optim.SGD)
    for group in opt.param_groups:
        assert group["momentum"] == 0.9 and group["nesterov"] and group["weight_decay"] == weight_decay


def test_agc_uses_timm_and_leaves_the_head_alone():
    model = toy_model(kind="transfer")
    learn = make_learner(model, toy_split(), toy_setup())
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    head = set(model.get_classifier().parameters())
    body = [p for p in model.parameters() if p not in head]
    expected = [p.grad.clone() for p in body]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in body]
    for r, g in zip(reference, expected):
        r.grad = g.clone()
    adaptive_clip_grad(reference, clip_factor=0.01)
    agc = next(cb for cb in learn.cbs if isinstance(cb, AdaptiveGradClip))
    agc.before_fit()
    agc.before_step()
    assert all(torch.equal(p.grad, r.grad) for p, r in zip(body, reference))
    assert any(not torch.equal(p.grad, g) for p, g in zip(body, expected))  # it did clip
    assert all(torch.equal(p.grad, torch.full_like(p, 100.0)) for p in head)


def test_schedule_callback_sets_every_step_lr():
    setup = toy_setup(steps=6)
    recorder = RecordLR()
    learn = make_learner(toy_model(), toy_split(), setup, [recorder])
    fit(learn)
    assert recorder.steps == list(range(6))
    assert recorder.lrs == pytest.approx([setup.schedule.lr_at(s) for s in range(6)])
    assert recorder.lrs == pytest.approx([0.0, 0.025, 0.05, 0.05, 0.05, 0.005])  # BiT: step 0 at LR 0, decay after 4


def test_training_learns_and_predict_is_nan_safe():
    """Bright top half = class 0, bright bottom half = class 1 (robust to the horizontal flips and
    small crops of the augmentation): the training loss must fall and the model must separate them."""
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 2
    images = rng.integers(0, 60, (32, 20, 20)).astype(np.uint8)
    for i, label in enumerate(labels):
        rows = slice(0, 10) if label == 0 else slice(10, 20)
        images[i, rows] += 150
    split = Split.of(images, torch.from_numpy(labels))
    setup = toy_setup(
        multilabel=False,
        classes=2,
        steps=30,
        per_device_batch=8,
        schedule=Schedule(steps=30, warmup=3, decays=(25,), base_lr=0.1),
    )
    learn = make_learner(toy_model(classes=2, kind="transfer"), split, setup)
    before = mean_loss(learn, split, 16)
    fit(learn)
    after = mean_loss(learn, split, 16)
    probs, targets = predict(learn, split, 16)
    assert probs.shape == (32, 2) and np.allclose(probs.sum(1), 1, atol=1e-5) and targets.dtype == np.int64
    assert after < 0.5 * before, (before, after)
    assert (probs.argmax(1) == targets).mean() >= 0.9
    empty, _ = predict(learn, Split(split.images, split.rows[:0], split.targets[:0]), 16)
    assert empty.shape == (0, 2)


# ---- checkpoints and resume -----------------------------------------------------------------------
def test_periodic_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "state" / "train_state.pt"
    setup = toy_setup(steps=5, checkpoint_path=path, checkpoint_identity={"run_id": "r"}, checkpoint_every_steps=2)
    learn = make_learner(toy_model(), toy_split(), setup)
    fit(learn)
    state = load_train_state(path)
    assert state["step"] == 4 and state["run_id"] == "r" and state["rng"]["seed"] == setup.seed
    assert state["schedule"]["steps"] == 5 and "momentum_buffer" in str(state["opt"]["state"][0].keys())
    assert [p.name for p in path.parent.iterdir()] == ["train_state.pt"]  # no temporary left behind

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_train_state(path, learn, 5, {"run_id": "r"})
    assert load_train_state(path)["step"] == 4  # the previous state is intact
    path.write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="train_state.pt: cannot read the training state"):
        load_train_state(path)


@pytest.mark.parametrize(
    "multilabel, head, mixup",
    [
        (True, "linear", 0.1),
        pytest.param(False, "concat", 0.2, marks=pytest.mark.slow),
    ],
)
def test_resumed_run_ends_with_the_same_weights(tmp_path, multilabel, head, mixup):
    """Killed after step 5 (last checkpoint after step 3), resumed: bit-identical to one straight run.

    The concat head has dropout (torch's RNG), the multi-label case NaN targets and MixUp."""
    steps, path = 7, tmp_path / "train_state.pt"
    split = toy_split(n=10, multilabel=multilabel)
    setup = toy_setup(
        steps=steps,
        multilabel=multilabel,
        mixup_alpha=mixup,
        checkpoint_path=path,
        checkpoint_identity={"run_id": "r"},
        checkpoint_every_steps=3,
    )

    torch.manual_seed(11)
    straight = make_learner(toy_model(kind="transfer", head=head), split, setup)
    fit(straight)
    reference = weights(straight.model)
    path.unlink()

    torch.manual_seed(11)
    killed = make_learner(toy_model(kind="transfer", head=head), split, setup, [StopAfter(5)])
    with pytest.raises(Stop):
        fit(killed)
    state = load_train_state(path)
    assert state["step"] == 3
    assert any(not torch.equal(v, reference[k]) for k, v in killed.model.state_dict().items())

    resumed_setup = toy_setup(**{**setup.__dict__, "start_step": state["step"]})
    resumed = make_learner(toy_model(kind="transfer", head=head, seed=99), split, resumed_setup)
    restore(resumed, state, resumed_setup)
    recorder = RecordLR()
    resumed.add_cb(recorder)
    fit(resumed)
    assert recorder.steps == list(range(3, steps))
    final = resumed.model.state_dict()
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_restore_refuses_another_schedule(tmp_path):
    path = tmp_path / "s.pt"
    setup = toy_setup(steps=4, checkpoint_path=path, checkpoint_every_steps=2)
    fit(make_learner(toy_model(), toy_split(), setup))
    state = load_train_state(path)
    other_setup = toy_setup(steps=8, start_step=state["step"])
    other = make_learner(toy_model(), toy_split(), other_setup)
    with pytest.raises(ValueError, match="schedule"):
        restore(other, state, other_setup)


def test_precision_is_fastais_mixed_precision_and_cpu_runs_fp32():
    """bf16 / fp16 are fastai's MixedPrecision (CUDA autocast; their speed needs a GPU, see
    benchmarks/gpu_suite.sh). On a CPU they are refused: CPU bf16 autocast of this model gave
    intermittent NaN gradients in torch 2.14, which is why precision "auto" means fp32 there."""
    from fastai.callback.fp16 import AMPMode, MixedPrecision

    (bf16,) = precision_callbacks("bf16", torch.device("cuda", 0))
    assert isinstance(bf16, MixedPrecision) and bf16.amp_mode == AMPMode.BF16
    assert precision_callbacks("fp16", torch.device("cuda", 0))[0].amp_mode == AMPMode.FP16
    assert precision_callbacks("fp32", torch.device("cpu")) == []
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_learner(toy_model(), toy_split(), toy_setup(precision="bf16"))
    learn = make_learner(toy_model(), toy_split(), toy_setup(steps=1, channels_last=True))
    assert learn.model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs)
    fit(learn)


def test_the_learner_is_plain_fastai():
    """fastai's own Learner and DataLoaders; behaviour comes from callbacks only."""
    learn = make_learner(toy_model(), toy_split(), toy_setup(steps=2))
    assert type(learn) is Learner and type(learn.dls) is DataLoaders
    names = [type(cb).__name__ for cb in learn.cbs.sorted("order")]
    assert names == ["TrainEvalCallback", "StepSchedule", "PrepareBatch", "AdaptiveGradClip"]
    with_mixup = make_learner(toy_model(), toy_split(), toy_setup(steps=2, mixup_alpha=0.1))
    assert "MaskedMixUp" in [type(cb).__name__ for cb in with_mixup.cbs]
    fit(learn)
    assert learn.dls.train.start == 2 and len(learn.dls.train) == 0


# ---- loaders: rows of the cache, gathered per step ----------------------------------------------
def test_step_batches_are_the_split_rows_a_pure_function_of_seed_and_step():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    rows = np.array([3, 7, 11, 12, 19, 20, 21, 25, 29, 0])  # a split is a subset of the cache
    split = Split(source, rows, torch.arange(10))
    batching = Batching(per_device_batch=4, seed=5, augment=Augment(out_size=6), multilabel=False)
    loader = StepLoader(split, batching, 0, 6)
    batches = list(loader)
    assert len(batches) == 6 == len(loader)
    for step, (images, draws, targets, _) in enumerate(batches):
        positions = loader.positions(step, 0, 0)
        assert torch.equal(images[:, 0], torch.from_numpy(source[rows[positions]]))  # read by row
        assert torch.equal(targets, torch.from_numpy(positions))
        assert draws["theta"].shape == (4, 2, 3)
    # every image once per epoch (10 images, batches of 4: the stream wraps into epoch 1)
    first_epoch = np.concatenate([loader.positions(s, 0, 0) for s in range(5)])[:10]
    assert sorted(first_epoch) == list(range(10))
    again = list(StepLoader(split, batching, 3, 6))  # resumed at step 3: the same batches
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1]["theta"], b[1]["theta"]) for a, b in zip(batches[3:], again)
    )
    unthreaded = list(StepLoader(split, Batching(**{**batching.__dict__, "prefetch": 0}), 0, 6))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, unthreaded))


def test_ranks_and_micro_batches_slice_the_same_global_batch():
    split = toy_split(n=40)
    whole = StepLoader(
        split, Batching(per_device_batch=8, seed=1, augment=Augment(out_size=16, crop_fraction=0.8)), 0, 3
    )
    for step in range(3):
        expected = whole.positions(step, 0, 0)
        theta = whole.thetas(step, 0, 0)
        parts, thetas = [], []
        for rank in range(2):
            sliced = StepLoader(
                split,
                Batching(
                    per_device_batch=4,
                    micro_batch=2,
                    seed=1,
                    rank=rank,
                    world=2,
                    augment=Augment(out_size=16, crop_fraction=0.8),
                ),
                0,
                3,
            )
            for micro in range(2):
                parts.append(sliced.positions(step, rank, micro))
                thetas.append(sliced.thetas(step, rank, micro))
        assert np.array_equal(np.concatenate(parts), expected)
        assert torch.equal(torch.cat(thetas), theta)


def test_micro_batches_accumulate_to_the_step_of_the_whole_batch():
    """fastai's GradientAccumulation + the loader's masked-loss denominators: 2 micro-batches of 2
    give the weights of one batch of 4 (NaN targets spread unevenly over the micro-batches)."""
    split = toy_split(n=12)
    whole = make_learner(toy_model(), split, toy_setup(steps=4))
    fit(whole)
    micro = make_learner(toy_model(), split, toy_setup(steps=4, micro_batch=2))
    assert any(type(cb).__name__ == "GradientAccumulation" for cb in micro.cbs)
    fit(micro)
    a, b = weights(whole.model), weights(micro.model)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], weights(toy_model())[k]) for k in a)  # it trained


def test_oversampling_balances_classes_and_is_deterministic():
    labels = np.array([0] * 90 + [1] * 10)
    split = Split.of(np.zeros((100, 2, 2), np.uint8), torch.from_numpy(labels))
    batching = Batching(
        per_device_batch=100, seed=2, augment=Augment(out_size=2), multilabel=False, sampler="oversample"
    )
    loader = StepLoader(split, batching, 0, 40)
    drawn = np.concatenate([labels[loader.epoch_order(e)] for e in range(40)])
    assert len(loader.epoch_order(0)) == 100  # n draws per epoch, with replacement
    assert abs(drawn.mean() - 0.5) < 0.03  # weights n / count(class): classes drawn equally often
    assert np.array_equal(loader.epoch_order(7), StepLoader(split, batching, 0, 1).epoch_order(7))
    with pytest.raises(ValueError, match="single-label"):
        StepLoader(
            toy_split(), Batching(per_device_batch=4, seed=0, augment=Augment(out_size=2), sampler="oversample"), 0, 1
        ).epoch_order(0)


def test_eval_batches_cover_the_split_in_order():
    split = toy_split(n=11)
    seen = list(EvalLoader(split, 4))
    assert [len(b[0]) for b in seen] == [4, 4, 3]
    assert torch.equal(torch.cat([b[0][:, 0] for b in seen]), torch.from_numpy(split.images))


# ---- augmentation: the authors' views ---------------------------------------------------------------
def _view(augment: Augment, image: torch.Tensor, u: list[float], hw=None) -> torch.Tensor:
    import torch.nn.functional as F

    theta = augment.thetas(torch.tensor([u], dtype=torch.float32), hw)
    grid = F.affine_grid(theta, [1, 1, augment.out_size, augment.out_size], align_corners=False)
    return F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode=augment.padding, align_corners=False)[
        0, 0
    ]


def test_xray_shift_is_applied_after_rotation_and_zoom_like_albumentations():
    """ShiftScaleRotate shifts in output coordinates: the image centre lands at centre + shift *
    size whatever the rotation and zoom (a shift applied before rotating would move it elsewhere)."""
    size = 41
    dot = torch.zeros(size, size)
    dot[20, 20] = 1.0
    augment = Augment(out_size=size, shift=0.25, scale=0.1, rotate_deg=45.0, flip=False, padding="reflection")
    for rotation in (-1.0, 0.0, 0.7):
        out = _view(augment, dot, [0.5, rotation, 0.4, -0.8, 1.0])  # zoom 1.05, shift (+0.1, -0.2) of the side
        y, x = divmod(int(out.argmax()), size)
        assert (x - 20, y - 20) == (round(0.1 * size), round(-0.2 * size)), rotation


def test_xray_borders_are_reflected_and_bit_crops_are_aspect_true():
    ramp = torch.arange(20, dtype=torch.float32).repeat(20, 1)  # brightness grows to the right
    augment = Augment(out_size=20, shift=0.25, flip=False, padding="reflection")
    shifted = _view(augment, ramp, [0.0, 0.0, -1.0, 0.0, 1.0])  # half the side to the left: no zeros
    assert shifted.min() > 0.0
    # BiT: shorter side 512, random 480 crop of a 375 x 500 image cached as a square: the crop spans
    # 480/512 of the height and 480/(512 * 500/375) of the width, uniformly placed.
    bit = Augment(out_size=480, crop_fraction=480 / 512)
    theta = bit.thetas(torch.tensor([[0.0, 0.0, 1.0, -1.0, 1.0]]), np.array([[375, 500]]))[0]
    assert theta[1, 1].item() == pytest.approx(480 / 512) and theta[0, 0].item() == pytest.approx(480 / 512 * 375 / 500)
    assert theta[0, 2].item() == pytest.approx(1 - 480 / 512 * 375 / 500) and theta[1, 2].item() == pytest.approx(
        -(1 - 480 / 512)
    )
    square = bit.thetas(torch.tensor([[0.0, 0.0, 0.3, 0.3, -1.0]]))[0]
    assert square[0, 0].item() == pytest.approx(-480 / 512) and square[1, 1].item() == pytest.approx(480 / 512)
