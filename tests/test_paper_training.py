"""The authors' training numerics, each checked against an independent re-enactment of their code
(tests/authors_oracles.py, written from SLAMPAI/large-scale-pretraining-transfer at fe6232b):

  1. a network built from scratch has PyTorch's default init (their models/bit.py has no init code)
  2. evaluation runs in fp32 whatever the training precision (their finetune.py / pretrain.py validate)

All on the CPU; R152x4 is built on the meta device and its convs initialised one at a time.
"""

from __future__ import annotations

import statistics
from functools import partial

import authors_oracles as authors
import numpy as np
import timm
import torch
from fastai.callback.core import Callback, CancelStepException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2
from torch import nn

from xrstudy.config import RunConfig
from xrstudy.pixels.loaders import Augment, EvalLoader, Split
from xrstudy.training import recipes
from xrstudy.training.checkpoints import write_checkpoint
from xrstudy.training.learner import TrainSetup, fit, make_learner, predict
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
    test_learner.py; bf16 autocast itself works there, which is all this test needs)."""

    def before_fit(self) -> None:
        super().before_fit()
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)


class KeepWeights(Callback):
    """Skips the optimiser step: CPU bf16 autocast of this model can give NaN gradients (test_learner.py)."""

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
    cells = [RunConfig(kind="pretrain", sources=("chexpert",)), RunConfig(target="cifar10", shots_mode="paper")]
    assert {recipes.eval_precision(cfg.replace(precision=p)) for cfg in cells for p in ("auto", "bf16")} == {"fp32"}
