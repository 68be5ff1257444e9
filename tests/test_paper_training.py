"""The authors' training numerics, each checked against an independent re-enactment of their code
(tests/authors_oracles.py, written from SLAMPAI/large-scale-pretraining-transfer at fe6232b):

  1. a network built from scratch has PyTorch's default init (their models/bit.py has no init code)
  2. evaluation runs in fp32 whatever the training precision (their finetune.py / pretrain.py validate)
  3. a pre-training step's loss is the mean over their 16-image GPU groups of each group's masked mean
  4. a transfer step is their batch_split micro-batches of the recycled loader; MixUp pairs inside one
  5. COVIDx / Tuberculosis keep the colour their default_loader keeps; the other X-ray readers one channel

All on the CPU; R152x4 is built on the meta device and its convs initialised one at a time.
"""

from __future__ import annotations

import statistics
from functools import partial
from types import SimpleNamespace

import authors_oracles as authors
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelStepException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from PIL import Image
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2
from torch import nn

from xrstudy.config import RunConfig
from xrstudy.pixels.decoding import load_image, prepare_image
from xrstudy.pixels.loaders import Augment, Batching, EvalLoader, Split, StepLoader
from xrstudy.training import recipes, resolve
from xrstudy.training.callbacks import MaskedMixUp
from xrstudy.training.checkpoints import write_checkpoint
from xrstudy.training.learner import TrainSetup, fit, make_learner, masked_bce_with_logits, predict
from xrstudy.training.models import create_model, standardisation_eps, torch_default_init
from xrstudy.training.recipes import Schedule

TINY = "resnetv2_tiny_bit"
R50X1 = ([3, 4, 6, 3], 1)
R152X4 = ([3, 8, 36, 3], 4)


def _std_matches(weight: torch.Tensor, expected: float) -> bool:
    return abs(weight.std().item() / expected - 1) < authors.std_tolerance(weight.numel())


# ---- 1. weight initialisation ------------------------------------------------------------------------
def test_a_paper_mode_scratch_r50x1_has_pytorchs_default_init_on_every_conv():
    """Every conv's std is a fresh nn.Conv2d's of its shape (within 5 standard errors; timm's init is
    0.53-4.9x), |w| <= 1/sqrt(fan_in), the head's bias drawn, GroupNorm 1 / 0, their standardisation eps."""
    cfg = RunConfig(kind="pretrain", sources=("chexpert",), arch="resnetv2_50x1_bit")
    model = create_model(cfg, num_classes=13)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    theirs = [shape for _, shape, _ in authors.authors_conv_shapes(*R50X1, head_size=13)]
    assert sorted(tuple(m.weight.shape) for m in convs.values()) == sorted(theirs)  # the same 54 convs
    ratios = []
    for name, conv in convs.items():
        weight, shape = conv.weight.detach(), tuple(conv.weight.shape)
        fresh = nn.Conv2d(shape[1], shape[0], shape[2:], bias=False).weight.detach()
        assert _std_matches(weight, authors.torch_default_conv_std(shape)), name
        assert abs(weight.std().item() / fresh.std().item() - 1) < 2 * authors.std_tolerance(weight.numel()), name
        assert weight.abs().max().item() <= authors.torch_default_conv_bound(shape) * (1 + 1e-6), name
        ratios.append(weight.std().item() / authors.torch_default_conv_std(shape))
    assert 0.98 < statistics.median(ratios) < 1.02
    bias = model.head.fc.bias.detach()
    assert 0 < bias.abs().max().item() <= authors.torch_default_bias_bound(model.head.fc.weight.shape)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert standardisation_eps(model) == 1e-10  # bit.py:30


def test_r152x4_convs_get_pytorchs_default_init_built_on_the_meta_device():
    """R152x4 (~936M parameters) without its memory: the network on the meta device has the authors' 156
    conv shapes; a sample of them (each stage's first unit, stage 3's last, the stem, the head) is
    materialised one at a time and initialised by the same `torch_default_init`."""
    with torch.device("meta"):
        model = timm.create_model("resnetv2_152x4_bit", pretrained=False, num_classes=7)
    shapes = sorted(tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert shapes == sorted(shape for _, shape, _ in authors.authors_conv_shapes(*R152X4, head_size=7))
    sample = ["stem.conv", "head.fc", "stages.2.blocks.35.conv2"] + [
        f"stages.{s}.blocks.0.{c}" for s in range(4) for c in ("conv1", "conv2", "conv3", "downsample.conv")
    ]
    for name in sample:
        conv = model.get_submodule(name).to_empty(device="cpu")
        torch_default_init(conv)
        weight, shape = conv.weight.detach(), tuple(conv.weight.shape)
        assert _std_matches(weight, authors.torch_default_conv_std(shape)), name
        assert weight.abs().max().item() <= authors.torch_default_conv_bound(shape) * (1 + 1e-6), name
        assert isinstance(conv, StdConv2d) == (name != "head.fc") and getattr(conv, "eps", 1e-10) == 1e-10
        conv.to_empty(device="meta")  # give the memory back before the next one


def test_pytorchs_init_draws_in_the_authors_layer_order():
    """With one seed, the timm network gets the very weights their constructor draws (a unit's shortcut
    conv after its conv3, where timm builds it first), compared with their network re-enacted."""
    units, wf = [1, 1, 1, 1], 1
    theirs = authors.authors_resnetv2(units, wf, head_size=10, seed=42).state_dict()
    mine = ResNetV2(
        layers=units, width_factor=wf, num_classes=10, stem_type="fixed", conv_layer=partial(StdConv2d, eps=1e-8)
    )
    torch.manual_seed(42)
    torch_default_init(mine)
    state = mine.state_dict()
    for name, tensor in theirs.items():
        assert torch.equal(state[authors.authors_name_to_timm(name)], tensor), name


def test_timms_init_stays_an_option_and_loaded_weights_ignore_weight_init(tmp_path):
    pretrain = RunConfig(kind="pretrain", sources=("demo",), arch=TINY)
    timm_init = create_model(pretrain.replace(weight_init="timm"), 3)
    stem = timm_init.stem.conv.weight.detach()
    timm_std = authors.timm_init_std(stem.shape)
    assert abs(stem.std().item() / timm_std - 1) < authors.std_tolerance(stem.numel(), "normal")
    assert standardisation_eps(timm_init) == 1e-8  # timm's BiT numerics
    assert (
        recipes.weight_init_of(pretrain) == "torch" and pretrain.replace(weight_init="timm").run_id != pretrain.run_id
    )

    # weights from a file: weight_init has nothing to act on; the numerics are the checkpoint's
    torch_model = create_model(pretrain, 3)
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, torch_model, {"arch": TINY, "std_eps": standardisation_eps(torch_model)})
    transfers = [RunConfig(target="demo", arch=TINY, init=str(path), weight_init=w) for w in ("torch", "timm")]
    built = [create_model(cfg, 2) for cfg in transfers]
    assert transfers[0].run_id == transfers[1].run_id and recipes.weight_init_of(transfers[0]) == "loaded"
    assert all(torch.equal(a, b) for a, b in zip(built[0].state_dict().values(), built[1].state_dict().values()))
    assert standardisation_eps(built[0]) == 1e-10
    write_checkpoint(path, timm_init, {"arch": TINY})  # a checkpoint from before the sidecar recorded it
    assert standardisation_eps(create_model(transfers[0], 2)) == 1e-8


# ---- 2. evaluation precision ---------------------------------------------------------------------------
class CpuBf16(MixedPrecision):
    """fastai's MixedPrecision autocasting the CPU (xrstudy refuses bf16 on a CPU for training, see
    test_training_learner.py; bf16 autocast itself works there, which is all this test needs)."""

    def before_fit(self) -> None:
        super().before_fit()
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)


class KeepWeights(Callback):
    """Skips the optimiser step: CPU bf16 autocast of this model can give NaN gradients (test_training_learner.py)."""

    order = 0

    def before_step(self) -> None:
        raise CancelStepException()


def test_evaluation_logits_are_fp32_when_training_runs_in_bf16():
    rng = np.random.default_rng(0)
    split = Split.of(rng.integers(0, 256, (12, 20, 20), dtype=np.uint8), torch.from_numpy(rng.integers(0, 3, 12)))
    setup = TrainSetup(
        multilabel=False,
        num_classes=3,
        schedule=Schedule(steps=1, warmup=1, decays=(), base_lr=0.01),
        per_device_batch=4,
        seed=0,
        augment=Augment(out_size=16),
        eval_size=16,
        weight_decay=0.0,
        channels_last=True,
    )
    model = create_model(RunConfig(target="demo", arch=TINY), 3)
    learn = make_learner(model, split, setup, [CpuBf16(amp_mode=AMPMode.BF16), KeepWeights()])
    seen: list[torch.dtype] = []
    learn.model.head.fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    fit(learn)
    assert seen == [torch.bfloat16]  # training ran in bf16
    seen.clear()
    logits, _ = predict(learn, split, 5, logits=True)
    assert seen and set(seen) == {torch.float32} and logits.dtype == np.float32
    assert any(isinstance(cb, MixedPrecision) for cb in learn.cbs)  # put back for the next fit
    assert learn.model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    autocast, _ = learn.get_preds(dl=EvalLoader(split, 5), act=lambda x: x)  # fastai's get_preds alone
    assert not np.array_equal(autocast.float().numpy(), logits)  # bf16-rounded logits
    plain, _ = predict(make_learner(learn.model, split, setup), split, 5, logits=True)
    assert np.array_equal(plain, logits)  # the same numbers as a learner without any mixed precision


def test_every_mode_evaluates_in_fp32():
    cells = [RunConfig(kind="pretrain", sources=("chexpert",)), RunConfig(target="cifar10", loader_mode="paper")]
    assert {recipes.eval_precision(cfg.replace(precision=p)) for cfg in cells for p in ("auto", "bf16")} == {"fp32"}


def test_step_zero_runs_the_optimiser_at_lr_zero_so_its_gradient_enters_step_one():
    """Their SGD_AGC starts the momentum buffer from step 0's gradient (sgd_agc.py:146-148), although the
    BiT schedule gives step 0 LR 0: the weights stay, the buffer holds that gradient."""
    rng = np.random.default_rng(1)
    split = Split.of(rng.integers(0, 256, (8, 20, 20), dtype=np.uint8), torch.from_numpy(rng.integers(0, 2, 8)))
    setup = TrainSetup(
        multilabel=False,
        num_classes=2,
        schedule=Schedule(steps=1, warmup=5, decays=(), base_lr=0.1),
        per_device_batch=4,
        seed=0,
        augment=Augment(out_size=16),
        eval_size=16,
        weight_decay=0.0,
    )
    learn = make_learner(create_model(RunConfig(target="demo", arch=TINY), 2), split, setup)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    fit(learn)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
    buffers = [s["momentum_buffer"] for s in learn.opt.opt.state.values()]
    assert buffers and any(b.abs().sum() > 0 for b in buffers)


# ---- 3. the pre-training loss of their 64 GPUs ------------------------------------------------------
def _multilabel_split(n: int, classes: int = 7, seed: int = 3) -> Split:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, (n, classes)).astype(np.float32)
    targets[rng.random((n, classes)) < 0.5] = np.nan
    targets[:20] = np.nan  # images without any known target: a whole group of them somewhere
    targets[20:40, 1:] = np.nan  # and some with a single known column
    return Split.of(np.zeros((n, 2, 2), np.uint8), torch.from_numpy(targets))


def _step_loss(split: Split, batching: Batching, step: int, per_image: torch.Tensor) -> torch.Tensor:
    """The step's loss as 1 process x M micro-batches / N processes compute it: each micro-batch's weighted
    loss, scaled as fastai's GradientAccumulation (micro / per-device) and averaged over ranks as DDP."""
    total = torch.zeros((), dtype=torch.float64)
    for rank in range(batching.world):
        loader = StepLoader(split, Batching(**{**batching.__dict__, "rank": rank}), step, step + 1)
        for micro in range(batching.micro_steps):
            _, _, targets, weights = loader.host_batch(step, micro)
            logits = per_image[loader.positions(step, rank, micro)]
            part = masked_bce_with_logits(logits, targets, weights).double()
            total += part * batching.micro / batching.per_device_batch / batching.world
    return total


@pytest.mark.parametrize("world, per_device, micro", [(1, 64, 0), (1, 64, 8), (2, 32, 16), (4, 16, 4), (2, 32, 32)])
def test_pretraining_loss_is_the_mean_over_16_image_groups_of_their_masked_means(world, per_device, micro):
    split = _multilabel_split(150)
    logits = torch.from_numpy(np.random.default_rng(4).normal(size=(150, 7)).astype(np.float32))
    cfg = RunConfig(kind="pretrain", sources=("chexpert",), loader_mode="paper")
    batching = Batching(
        per_device_batch=per_device,
        micro_batch=micro,
        world=world,
        seed=1,
        augment=Augment(out_size=2),
        group=recipes.loss_group(cfg),
    )
    assert batching.group == 16
    for step in range(3):  # step 2 wraps into the second epoch
        order = StepLoader(split, batching, 0, 3).plan(step).positions
        theirs = authors.authors_pretrain_loss(logits[order].double(), split.targets[order].double(), gpu_batch=16)
        assert torch.isclose(_step_loss(split, batching, step, logits), theirs, rtol=1e-5), step
        uniform = Batching(**{**batching.__dict__, "group": 0})  # the uniform mode: the batch's masked mean
        everyone = masked_bce_with_logits(logits[order], split.targets[order]).double()
        assert torch.isclose(_step_loss(split, uniform, step, logits), everyone, rtol=1e-5)
        known = (~torch.isnan(split.targets[order])).sum(1).numpy()
        paper_weights = StepLoader(split, batching, 0, 3).plan(step).weights
        uniform_weights = StepLoader(split, uniform, 0, 3).plan(step).weights
        assert np.allclose(uniform_weights * known.sum(), 1)  # every known target of the batch alike
        assert not np.allclose(paper_weights, uniform_weights)  # a target weighs 1 / (groups x its group's known)


def test_paper_groups_train_the_same_on_any_micro_batch():
    split = _multilabel_split(40, classes=3)
    rng = np.random.default_rng(0)
    split = Split.of(rng.integers(0, 256, (40, 20, 20), dtype=np.uint8), split.targets)
    setup = TrainSetup(
        multilabel=True,
        num_classes=3,
        schedule=Schedule(steps=3, warmup=1, decays=(), base_lr=0.05),
        per_device_batch=16,
        seed=2,
        augment=Augment(out_size=16, crop_fraction=0.8),
        eval_size=16,
        weight_decay=1e-4,
        group=4,
    )
    cfg = RunConfig(kind="pretrain", sources=("demo",), arch=TINY)
    whole = make_learner(create_model(cfg, 3), split, setup)
    fit(whole)
    micro = make_learner(create_model(cfg, 3), split, TrainSetup(**{**setup.__dict__, "micro_batch": 2}))
    fit(micro)
    a, b = whole.model.state_dict(), micro.model.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


# ---- 4. their micro-batches in transfer --------------------------------------------------------------
def _single_label_loader(n: int, group: int, mixup: float = 0.0, **changes) -> StepLoader:
    split = Split.of(np.zeros((n, 2, 2), np.uint8), torch.arange(n) % 5)
    values = dict(
        per_device_batch=128,
        seed=0,
        augment=Augment(out_size=2),
        multilabel=False,
        mixup_alpha=mixup,
        group=group,
        group_stream=True,
    )
    values.update(changes)
    return StepLoader(split, Batching(**values), 0, 10_000)


def _step_sizes(plan, group: int) -> tuple[int, ...]:
    return tuple(int(c) for c in plan.real.reshape(-1, group).sum(axis=1))


@pytest.mark.parametrize(
    "n, group",
    [
        (37, 4),  # Pets 1-shot: each pass 9 x 4 + 1, steps of 119 or 116 images
        (26, 4),  # PadChest-Cl 1-shot: 6 x 4 + 2
        (102, 4),  # Flowers 1-shot: 25 x 4 + 2
        (10, 4),  # COVIDx / Tuberculosis 5-shot: 2 x 4 + 2
        (500, 64),  # CIFAR-100 5-shot: 7 x 64 + 52
        (100, 64),  # CIFAR-10 10-shot: 64 + 36, a step is one pass
        (10, 64),  # CIFAR-10 1-shot: smaller than the micro-batch: 64 draws with replacement per pass
        (2, 4),  # COVIDx / Tuberculosis 1-shot: 4 draws with replacement
    ],
)
def test_transfer_steps_are_the_authors_micro_batches(n, group):
    batch_split = 128 // group
    loader = _single_label_loader(n, group)
    steps = 12
    theirs = authors.authors_transfer_steps(n, batch_split=batch_split, steps=steps, seed=0, keep_indices=False)
    per_pass = -(-n // group) if n >= group else 1
    for step, their_step in enumerate(theirs):
        plan = loader.plan(step)
        assert _step_sizes(plan, group) == their_step.sizes, step
        weights = plan.weights[plan.real]  # a partial micro-batch weighs as much as a full one
        assert np.allclose(weights, authors.authors_step_weights(their_step.sizes, batch_split))
        losses = torch.from_numpy(np.random.default_rng(step).random(int(plan.real.sum())))
        ours = (torch.from_numpy(weights) * losses).sum()
        assert torch.isclose(ours, authors.authors_step_loss(losses, their_step.sizes, batch_split))
        assert np.array_equal(plan.positions[~plan.real], np.repeat(plan.positions[::group], group)[~plan.real])
    first_pass = [loader.plan(s // batch_split) for s in range(per_pass)]
    drawn = np.concatenate(
        [p.positions[(s % batch_split) * group : (s % batch_split + 1) * group] for s, p in enumerate(first_pass)]
    )
    real = np.concatenate(
        [p.real[(s % batch_split) * group : (s % batch_split + 1) * group] for s, p in enumerate(first_pass)]
    )
    if n >= group:
        assert sorted(drawn[real]) == list(range(n))  # each pass a permutation, cut into micro-batches
    else:
        assert len(drawn) == group and real.all() and len(set(drawn)) < group  # draws with replacement


def test_pets_one_shot_steps_repeat_119_119_119_119_116_images():
    loader = _single_label_loader(37, 4)
    counts = [int(loader.plan(s).real.sum()) for s in range(500)]
    theirs = authors.authors_transfer_steps(37, batch_split=32, seed=0, keep_indices=False)
    assert counts == [s.n_images for s in theirs] == [119, 119, 119, 119, 116] * 100


@pytest.mark.parametrize("per_device, micro, world", [(128, 32, 1), (64, 8, 2), (32, 4, 4)])
def test_the_authors_steps_do_not_depend_on_the_micro_batch_that_fits_memory(per_device, micro, world):
    one = _single_label_loader(37, 4)
    for step in range(6):
        reference = one.plan(step)
        seen = []
        for rank in range(world):
            loader = _single_label_loader(37, 4, per_device_batch=per_device, micro_batch=micro, world=world, rank=rank)
            assert np.array_equal(loader.plan(step).weights, reference.weights)
            for m in range(per_device // micro):
                _, _, targets, weights = loader.host_batch(step, m)
                seen.append(weights.numpy() * micro / per_device / world)
        assert np.allclose(np.concatenate(seen), reference.weights)


def test_mixup_pairs_within_the_authors_micro_batch_with_one_lambda_per_step():
    """CIFAR-style groups of 8 over a set of 50 (6 x 8 + 2): partners never leave their micro-batch, the
    partial one pairs within itself, self-pairs are allowed; the mixed loss is their mixup_criterion
    per micro-batch, each weighing 1 / batch_split."""
    group, n, batch = 8, 50, 32
    loader = _single_label_loader(n, group, mixup=0.1, per_device_batch=batch, micro_batch=16)
    batch_split = batch // group
    torch.manual_seed(0)
    features = torch.randn(n, 5, dtype=torch.float64)
    logits_of = torch.randn(n, 5, dtype=torch.float64)
    for step in range(8):
        plan = loader.plan(step)
        lam = loader.lam(step)
        for start in range(0, batch, group):  # each micro-batch of theirs
            members = np.arange(start, start + group)[plan.real[start : start + group]]
            assert sorted(plan.partner[members]) == sorted(members)
        ours = torch.zeros((), dtype=torch.float64)
        for micro in range(2):
            _, draws, targets, weights = loader.host_batch(step, micro)
            assert draws["lam"] == lam
            positions = loader.positions(step, 0, micro)
            cb = MaskedMixUp(num_classes=5, multilabel=False)
            cb.learn = SimpleNamespace(
                xb=(features[positions],), yb=(targets, weights), draws=draws, step=step, training=True
            )
            cb.before_batch()
            mixed_x, mixed_y = cb.learn.xb[0], cb.learn.yb[0]
            perm = draws["perm"]
            assert torch.allclose(mixed_x, lam * features[positions] + (1 - lam) * features[positions][perm])
            loss = F.cross_entropy(logits_of[positions], mixed_y.double(), reduction="none")
            ours += (loss * weights.double()).sum() * 16 / batch
        theirs = torch.zeros((), dtype=torch.float64)
        for start in range(0, batch, group):  # finetune.py:508-521 per micro-batch
            real = plan.real[start : start + group]
            positions = plan.positions[start : start + group][real]
            local = plan.partner[start : start + group][real] - start
            _, y_a, y_b = authors.authors_mixup(features[positions], torch.as_tensor(positions) % 5, lam, local)
            c = authors.authors_mixup_loss(logits_of[positions], y_a, y_b, lam)
            theirs += c / batch_split
        assert torch.isclose(ours, theirs), step
    with pytest.raises(ValueError, match="keep whole groups of 8"):
        _single_label_loader(n, group, mixup=0.1, per_device_batch=batch, micro_batch=4)


def test_the_papers_mixup_cells_and_groups():
    """MixUp (alpha 0.1) on exactly CIFAR-10 full, CIFAR-100 500-shot and full, PadChest-Cl full; its group
    is their micro-batch (64 CIFAR, 4 otherwise) in paper mode, the device micro-batch otherwise."""
    mixup_cells = []
    for target, shots_list in authors.PAPER_SHOTS.items():
        for shots in shots_list:
            cfg = RunConfig(target=target, shots=shots, loader_mode="paper", split_mode="paper", shots_mode="paper")
            size = authors.authors_paper_train_size(target, shots)
            recipe = recipes.recipe_for(cfg, size, (500, 500))
            if recipe.mixup_alpha > 0:
                mixup_cells.append((target, shots))
            assert recipes.mixup_group(cfg, device_micro=128) == authors.authors_micro_batch(target)
            assert recipes.loss_group(cfg) == authors.authors_micro_batch(target)
            assert recipes.mixup_group(cfg.replace(loader_mode="uniform"), device_micro=32) == 32
    assert mixup_cells == authors.authors_mixup_cells()
    assert recipes.loss_group(RunConfig(kind="pretrain", sources=("nih",), loader_mode="paper")) == 16
    assert recipes.loss_group(RunConfig(kind="pretrain", sources=("nih",))) == 0


# ---- 5. X-ray pixels as their readers give them ---------------------------------------------------------
@pytest.fixture()
def xray_files(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    colour = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (6, 6), dtype=np.uint16)
    files = {"grey": tmp_path / "grey.png", "rgb": tmp_path / "rgb.png", "rgba": tmp_path / "rgba.png"}
    Image.fromarray(grey, "L").save(files["grey"])
    Image.fromarray(colour[..., :3], "RGB").save(files["rgb"])
    Image.fromarray(colour, "RGBA").save(files["rgba"])
    files["deep"] = tmp_path / "deep.png"
    Image.fromarray(deep).save(files["deep"])
    return files


def _mode(cfg: RunConfig, modality: str = "xray") -> str:
    return resolve.cache_mode(cfg, SimpleNamespace(cache_fit="squash"), modality)


def test_paper_mode_keeps_the_channels_their_default_loader_keeps(xray_files):
    covidx = RunConfig(target="covidx", loader_mode="paper")
    assert _mode(covidx) == "RGB:squash" and _mode(covidx.replace(loader_mode="uniform")) == "L:squash"
    assert _mode(RunConfig(target="tuberculosis", loader_mode="paper")) == "RGB:squash"
    assert _mode(RunConfig(target="padchest-cl", loader_mode="paper")) == "L:squash"  # skimage, channel 0
    assert _mode(RunConfig(kind="pretrain", sources=("chexpert",), loader_mode="paper")) == "L:squash"
    assert _mode(RunConfig(target="cifar10"), modality="natural") == "RGB:squash"
    for name in ("grey", "rgb", "rgba"):  # at the file's own size the cache holds their pixels exactly
        theirs = authors.authors_load_xray(xray_files[name], "covidx")
        assert np.array_equal(prepare_image(xray_files[name], 6, "RGB:squash"), theirs), name
    grey = prepare_image(xray_files["grey"], 6, "L:squash")  # grey files: the same either way
    assert np.array_equal(np.repeat(grey[..., None], 3, axis=2), prepare_image(xray_files["grey"], 6, "RGB:squash"))


def test_grey_xray_files_read_as_their_cv2_and_skimage_readers(xray_files):
    """CheXpert / MIMIC / NIH: cv2.imread channel 0 / 255; PadChest: skimage / 65535 (16-bit)."""
    for source in ("chexpert", "mimic", "nih"):
        theirs = authors.authors_load_xray(xray_files["grey"], source)[0]
        assert np.array_equal(load_image(xray_files["grey"]) * 255, (theirs * 255).astype(np.float32))
    theirs = authors.authors_load_xray(xray_files["deep"], "padchest")[0]
    assert np.allclose(load_image(xray_files["deep"]), theirs, atol=1e-7)


# ---- the whole path -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_paper_mode_cells_run_end_to_end_whatever_the_micro_batch(tmp_path):
    """A loader_mode paper pre-training (a batch of 32: two 16-image groups, which micro-batches of 2 split)
    gives the same checkpoint on any micro-batch, recorded with its numerics (eps 1e-10), which the
    transfer that loads it keeps; the transfer runs the authors' micro-batch stream."""
    from cells import pretrain_cfg, shapes_study, transfer_cfg, xray_study

    from xrstudy.training import train
    from xrstudy.training.models import read_checkpoint

    xray = xray_study(tmp_path / "xray")
    results = [
        train.run(
            pretrain_cfg(tmp_path / f"o{m}", loader_mode="paper", batch_size=32, micro_batch=m, mixup=0.0), study=xray
        )
        for m in (0, 2)
    ]
    checkpoints = [read_checkpoint(r["checkpoint"]["path"]) for r in results]
    assert checkpoints[0].sidecar["std_eps"] == 1e-10 and results[0]["run_id"] == results[1]["run_id"]
    assert all(
        torch.allclose(v, checkpoints[1].state[k], rtol=1e-4, atol=1e-6) for k, v in checkpoints[0].state.items()
    )
    transfer = transfer_cfg(tmp_path / "o0", init=f"run:{results[0]['run_id']}", loader_mode="paper", batch_size=8)
    assert recipes.loss_group(transfer) == 4 and standardisation_eps(create_model(transfer, 3)) == 1e-10
    result = train.run(transfer, study=shapes_study(tmp_path / "shapes"))
    assert result["last_step"] == 4 and 0.0 <= result["metrics"]["test/acc"] <= 1.0
