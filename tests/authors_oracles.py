"""Independent re-enactments of the authors' rules (issue 18): test oracles for tests/test_paper_training.py.

Written from SLAMPAI/large-scale-pretraining-transfer at commit fe6232b (paths below are files of
that repository, "file:line" at that commit). Nothing here imports xrstudy; only numpy, torch, PIL
(and, when installed, skimage / cv2, which the authors used -- the PIL equivalents were checked equal to
opencv-python-headless 4.10 / 5.1 and scikit-image 0.26 on every case below, see `_pil_as_cv2_imread_color`).
A test helper module, not part of the package: it must stay independent of xrstudy's code.

What each oracle reproduces is the *structure* of the authors' computation (group sizes, weights,
formulas, pixel values). Random draws (permutations, MixUp lambdas, replacement draws) are made with
numpy generators seeded by the caller: the authors' draws came from torch / numpy global RNGs and are
not reproducible by xrstudy's counter-based RNG anyway.

Contents
  1. initialisation      torch_default_conv_std, torch_default_conv_bound, torch_default_bias_bound,
                         timm_init_std, std_ratio_timm_over_torch, std_tolerance,
                         authors_std_conv_weight, authors_conv_shapes, authors_resnetv2,
                         authors_name_to_timm, reset_like_authors
  2. pre-training loss   authors_pretrain_loss, authors_pretrain_groups, authors_pretrain_epoch
  3. transfer steps      AUTHORS_FINETUNE, authors_micro_batch, authors_hyperrule_steps,
                         authors_mixup_alpha, authors_transfer_steps, authors_step_weights,
                         authors_step_loss, authors_paper_train_size, authors_mixup_cells
  4. MixUp               authors_mixup, authors_mixup_loss, authors_mixup_step
  5. X-ray pixels        authors_load_xray
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "torch_default_conv_std",
    "torch_default_conv_bound",
    "torch_default_bias_bound",
    "timm_init_std",
    "std_ratio_timm_over_torch",
    "std_tolerance",
    "authors_std_conv_weight",
    "authors_conv_shapes",
    "authors_resnetv2",
    "authors_name_to_timm",
    "reset_like_authors",
    "authors_pretrain_loss",
    "authors_pretrain_groups",
    "authors_pretrain_epoch",
    "AUTHORS_FINETUNE",
    "authors_micro_batch",
    "authors_hyperrule_steps",
    "authors_mixup_alpha",
    "MicroBatch",
    "Step",
    "authors_transfer_steps",
    "authors_step_weights",
    "authors_step_loss",
    "PAPER_FULL_SIZES",
    "PAPER_CLASSES",
    "PAPER_SHOTS",
    "authors_paper_train_size",
    "authors_mixup_cells",
    "authors_mixup",
    "authors_mixup_loss",
    "authors_mixup_step",
    "authors_load_xray",
]


# =================================================================================================
# 1. Initialisation
# =================================================================================================
def _fans(shape: Sequence[int]) -> tuple[int, int]:
    """torch.nn.init._calculate_fan_in_and_fan_out for a weight of `shape` (OIHW / (out, in))."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"fan in/out needs a weight with >= 2 dims, got {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def torch_default_conv_std(shape: Sequence[int]) -> float:
    """Expected std of torch's default init of a Conv2d / Linear weight of `shape` (groups=1).

    The authors' `transfer_learning/models/bit.py` has no init code (StdConv2d:25-32, ResNetV2:110-158),
    so every `nn.Conv2d` / `StdConv2d` (a subclass, no override) keeps `_ConvNd.reset_parameters`:
    `init.kaiming_uniform_(weight, a=math.sqrt(5))` -> gain = sqrt(2 / (1 + a^2)) = sqrt(1/3),
    std = gain / sqrt(fan_in) = 1 / sqrt(3 fan_in); the draws are U(-bound, bound) with
    bound = sqrt(3) std = 1 / sqrt(fan_in). fan_in = in_channels / groups * kh * kw (here groups=1,
    as in every conv of their model). `nn.Linear` uses the same rule (fan_in = in_features).
    """
    fan_in, _ = _fans(shape)
    return 1.0 / math.sqrt(3.0 * fan_in)


def torch_default_conv_bound(shape: Sequence[int]) -> float:
    """Bound of torch's default U(-b, b) conv / linear weight init: b = 1 / sqrt(fan_in) (see above)."""
    fan_in, _ = _fans(shape)
    return 1.0 / math.sqrt(fan_in)


def torch_default_bias_bound(weight_shape: Sequence[int]) -> float:
    """Bias of a default-initialised Conv2d / Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Only their head conv has a bias (`bit.py:152`, `nn.Conv2d(2048*wf, head_size, 1, bias=True)`, and
    the fresh transfer head of `models/builder.py:21`); every StdConv2d has `bias=False` (bit.py:35-42, 120).
    """
    fan_in, _ = _fans(weight_shape)
    return 1.0 / math.sqrt(fan_in)


def timm_init_std(shape: Sequence[int], name: str = "") -> float:
    """Expected std of timm's ResNetV2 init (`timm/models/resnetv2.py` `_init_weights`, applied by
    `ResNetV2.init_weights` through `named_apply` at the end of `__init__`): nn.Conv2d (StdConv2d
    included) -> `kaiming_normal_(mode='fan_out', nonlinearity='relu')`, std = sqrt(2 / fan_out);
    the classifier ('head.fc', a 1x1 nn.Conv2d) -> normal(0, 0.01), bias 0. GroupNorm: ones / zeros
    (the same as torch's default)."""
    if "head.fc" in name:
        return 0.01
    _, fan_out = _fans(shape)
    return math.sqrt(2.0 / fan_out)


def std_ratio_timm_over_torch(shape: Sequence[int]) -> float:
    """timm-init std / torch-default std of a non-head conv: sqrt(6 fan_in / fan_out)."""
    return timm_init_std(shape) / torch_default_conv_std(shape)


def std_tolerance(numel: int, distribution: str = "uniform", z: float = 5.0) -> float:
    """Relative tolerance (z standard errors) for comparing a sample std of `numel` i.i.d. draws with
    its expectation: SE(s)/sigma ~= sqrt((kurtosis - 1) / (4 n)); kurtosis 1.8 (uniform), 3 (normal).
    The smallest conv of R50x1 / R152x4 (the stem, 3*64*49 = 9,408 weights at x1) gives 2.3 % at z=5,
    while the closest timm/torch ratio is 1.22 (or 0.53 / 0.27 for the stem): no overlap."""
    kurt = {"uniform": 1.8, "normal": 3.0}[distribution]
    return z * math.sqrt((kurt - 1.0) / (4.0 * numel))


def authors_std_conv_weight(w: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Their weight standardisation (`bit.py:27-30`):
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
    timm's StdConv2d computes the same with `F.batch_norm(training=True, eps=self.eps)` (biased
    variance); timm's BiT models set eps=1e-8 (`_create_resnetv2_bit`), theirs is 1e-10."""
    v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
    return (w - m) / torch.sqrt(v + eps)


def authors_conv_shapes(block_units: Sequence[int], wf: int, head_size: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(their state-dict name, weight shape, kind) of every conv in the order their constructor creates
    them (= the order their default init consumes torch's CPU RNG). kind: 'std' (StdConv2d, no bias)
    or 'head' (plain nn.Conv2d with bias). From `bit.py:61-76` (PreActBottleneck: gn1, conv1, gn2,
    conv2, gn3, conv3, downsample) and `bit.py:119-153` (root conv, body block1..4, head gn + conv)."""
    out: list[tuple[str, tuple[int, ...], str]] = [("root.conv.weight", (64 * wf, 3, 7, 7), "std")]
    cins = [64 * wf, 256 * wf, 512 * wf, 1024 * wf]
    couts = [256 * wf, 512 * wf, 1024 * wf, 2048 * wf]
    cmids = [64 * wf, 128 * wf, 256 * wf, 512 * wf]
    strides = [1, 2, 2, 2]
    for b, units in enumerate(block_units):
        for u in range(1, units + 1):
            cin = cins[b] if u == 1 else couts[b]
            cout, cmid = couts[b], cmids[b]
            p = f"body.block{b + 1}.unit{u:02d}."
            out.append((p + "conv1.weight", (cmid, cin, 1, 1), "std"))
            out.append((p + "conv2.weight", (cmid, cmid, 3, 3), "std"))
            out.append((p + "conv3.weight", (cout, cmid, 1, 1), "std"))
            stride = strides[b] if u == 1 else 1
            if stride != 1 or cin != cout:
                out.append((p + "downsample.weight", (cout, cin, 1, 1), "std"))
    out.append(("head.conv.weight", (head_size, 2048 * wf, 1, 1), "head"))
    return out


class _StdConv2d(nn.Conv2d):
    """bit.py:25-32, verbatim semantics."""

    def forward(self, x):
        return F.conv2d(
            x, authors_std_conv_weight(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class _PreActBottleneck(nn.Module):
    """bit.py:52-91 (forward and construction order)."""

    def __init__(self, cin, cout=None, cmid=None, stride=1):
        super().__init__()
        cout = cout or cin
        cmid = cmid or cout // 4
        self.gn1 = nn.GroupNorm(32, cin)
        self.conv1 = _StdConv2d(cin, cmid, kernel_size=1, stride=1, padding=0, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid)
        self.conv2 = _StdConv2d(cmid, cmid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cmid)
        self.conv3 = _StdConv2d(cmid, cout, kernel_size=1, stride=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = _StdConv2d(cin, cout, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x):
        out = self.relu(self.gn1(x))
        residual = self.downsample(out) if hasattr(self, "downsample") else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.gn2(out)))
        out = self.conv3(self.relu(self.gn3(out)))
        return out + residual


class _ResNetV2(nn.Module):
    """bit.py:110-158: no init code anywhere -> torch's default init at construction."""

    def __init__(self, block_units, width_factor, head_size=21843):
        super().__init__()
        wf = width_factor
        self.root = nn.Sequential(
            OrderedDict(
                [
                    ("conv", _StdConv2d(3, 64 * wf, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("pad", nn.ConstantPad2d(1, 0)),
                    ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=0)),
                ]
            )
        )
        spec = [
            (64 * wf, 256 * wf, 64 * wf, 1),
            (256 * wf, 512 * wf, 128 * wf, 2),
            (512 * wf, 1024 * wf, 256 * wf, 2),
            (1024 * wf, 2048 * wf, 512 * wf, 2),
        ]
        blocks = []
        for b, ((cin, cout, cmid, stride), units) in enumerate(zip(spec, block_units)):
            unit_list = [("unit01", _PreActBottleneck(cin=cin, cout=cout, cmid=cmid, stride=stride))]
            unit_list += [
                (f"unit{i:02d}", _PreActBottleneck(cin=cout, cout=cout, cmid=cmid)) for i in range(2, units + 1)
            ]
            blocks.append((f"block{b + 1}", nn.Sequential(OrderedDict(unit_list))))
        self.body = nn.Sequential(OrderedDict(blocks))
        self.head = nn.Sequential(
            OrderedDict(
                [
                    ("gn", nn.GroupNorm(32, 2048 * wf)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("avg", nn.AdaptiveAvgPool2d(output_size=1)),
                    ("conv", nn.Conv2d(2048 * wf, head_size, kernel_size=1, bias=True)),
                ]
            )
        )

    def forward(self, x):
        x = self.head(self.body(self.root(x)))
        return x[..., 0, 0]


def authors_resnetv2(
    block_units: Sequence[int], width_factor: int, head_size: int, seed: int | None = None
) -> nn.Module:
    """Their network as `build_model` creates it (`models/builder.py:4-7` -> `bit.py` KNOWN_MODELS:
    BiT-S-R50x1 = ([3, 4, 6, 3], 1), BiT-S-R152x4 = ([3, 8, 36, 3], 4)). With `seed`, torch's global
    RNG is seeded first, as `pretrain.py:211` does (`torch.manual_seed(config.seed)`, seed 42 in every
    config) before `build_model` (`pretrain.py:266`; nothing between draws from torch's RNG, and
    `hvd.broadcast_parameters` at :293 copies rank 0's draw to every rank). Build R152x4 under
    `with torch.device("meta"):` unless you have ~4 GB to spare."""
    if seed is not None:
        torch.manual_seed(seed)
    return _ResNetV2(list(block_units), width_factor, head_size)


def authors_name_to_timm(name: str) -> str:
    """Their state-dict name -> timm ResNetV2's (the key map of PROTOCOL.md / xrstudy.paper_weights)."""
    import re

    if name.startswith("root.conv."):
        return "stem.conv." + name[len("root.conv.") :]
    if name.startswith("head.gn."):
        return "norm." + name[len("head.gn.") :]
    if name.startswith("head.conv."):
        return "head.fc." + name[len("head.conv.") :]
    m = re.fullmatch(r"body\.block(\d+)\.unit(\d+)\.(.+)", name)
    if not m:
        raise KeyError(name)
    s, b, rest = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3)
    rest = re.sub(r"^gn(\d)", r"norm\1", rest)
    rest = re.sub(r"^downsample\.", "downsample.conv.", rest)
    return f"stages.{s}.blocks.{b}.{rest}"


def reset_like_authors(timm_model: nn.Module, block_units: Sequence[int], wf: int, seed: int | None = None) -> None:
    """Give a timm ResNetV2 torch's default init *in the authors' draw order*: optionally seed, then
    `reset_parameters()` of each conv in `authors_conv_shapes` order (GroupNorm needs no draw: ones /
    zeros, which timm already has). Under one torch version this reproduces `authors_resnetv2(seed=s)`
    weight for weight (tested on a small arch in test_oracles.py). `reset_parameters` on timm's
    StdConv2d is nn.Conv2d's (no override): kaiming_uniform(a=sqrt(5)); its `eps` attribute is not
    touched (set it to 1e-10 separately for their standardisation)."""
    if seed is not None:
        torch.manual_seed(seed)
    modules = dict(timm_model.named_modules())
    for name, _shape, _kind in authors_conv_shapes(block_units, wf, head_size=1):  # names only
        mod = modules[authors_name_to_timm(name).rsplit(".", 1)[0]]
        mod.reset_parameters()  # weight (and the head's bias) in their order


# =================================================================================================
# 2. Pre-training loss (pretrain.py compute_loss + Horovod averaging)
# =================================================================================================
def _bce_with_logits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Element-wise BCE with logits, the stable form torch uses: max(x,0) - x*y + log1p(exp(-|x|))."""
    return torch.clamp(x, min=0) - x * y + torch.log1p(torch.exp(-torch.abs(x)))


def authors_pretrain_groups(n_rows: int, gpu_batch: int = 16) -> list[slice]:
    """Consecutive groups of `gpu_batch` rows (the last one shorter when n_rows is not a multiple).
    In their run each group is one GPU's loader batch (`dataloaders/builder.py:15`:
    train_local_batch_size 16 x gradient_accumulate 1). Which images share a GPU is a shard of a
    random permutation (DistributedSampler, rank r takes indices[r::64]), so any fixed partition of a
    randomly ordered global batch into groups of 16 is distributed as theirs."""
    return [slice(i, min(i + gpu_batch, n_rows)) for i in range(0, n_rows, gpu_batch)]


def authors_pretrain_loss(
    logits, targets, gpu_batch: int = 16, empty_group: str = "zero", groups: Iterable[slice] | None = None
):
    """The loss whose gradient their 64-GPU step applies (`pretrain.py:97-107, 57-86, 276-281`).

    Per GPU (one group of `gpu_batch` images):
        mask = ~torch.isnan(target_batch); output = output[mask]; target_batch = target_batch[mask]
        loss = F.binary_cross_entropy_with_logits(output, target_batch)      # mean over KNOWN targets
        loss.div_(math.ceil(float(len(data)) / local_batch_size))             # = 1 (len(data) <= 16)
    then `hvd.DistributedOptimizer(..., op=hvd.Average)` averages the GPUs' gradients: the step's
    gradient is that of  mean over groups g of [ sum_{known in g} BCE / count_known(g) ].

    A group without any known target: their BCE is the mean of an empty tensor = NaN (the logged loss
    is NaN), but its backward yields exactly zero gradients (the empty selection scatters nothing), the
    GradScaler sees finite gradients and steps, and Horovod still divides by the number of GPUs.
    `empty_group="zero"` (default) returns the gradient-equivalent value: such a group adds 0 and still
    counts in the denominator. `empty_group="nan"` returns what their code would log (NaN).

    Accepts torch tensors (differentiable, float64 recommended) or numpy arrays; returns a 0-d tensor.
    `groups` overrides the consecutive partition (e.g. the authors' last step: 64 groups of r images).
    """
    x = torch.as_tensor(logits)
    y = torch.as_tensor(targets, dtype=x.dtype)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"logits {tuple(x.shape)} and targets {tuple(y.shape)} must be equal 2-D shapes")
    groups = list(groups) if groups is not None else authors_pretrain_groups(x.shape[0], gpu_batch)
    known = ~torch.isnan(y)
    y0 = torch.where(known, y, torch.zeros_like(y))
    per = _bce_with_logits(x, y0) * known
    terms = []
    for g in groups:
        n_known = int(known[g].sum())
        if n_known == 0:
            if empty_group == "nan":
                terms.append(x.new_tensor(float("nan")))
            elif empty_group == "zero":
                terms.append(per[g].sum() * 0.0)  # zero, keeps the graph
            else:
                raise ValueError("empty_group must be 'zero' or 'nan'")
        else:
            terms.append(per[g].sum() / n_known)
    return torch.stack(terms).mean()


def authors_pretrain_epoch(n_train: int, world: int = 64, gpu_batch: int = 16) -> dict:
    """One pre-training epoch as their DistributedSampler + per-rank DataLoader cut it
    (`dataloaders/builder.py:138-151`; torch's DistributedSampler, drop_last=False):
      per_rank  = ceil(n / world) images per rank (the shuffled index list is padded by repeating its
                  first `padded` entries so that every rank gets the same count)
      steps     = ceil(per_rank / gpu_batch) optimiser steps (= ceil(n / (world * gpu_batch)))
      last_group= per_rank - gpu_batch * (steps - 1): every rank's last loader batch has this size, so
                  the last step averages `world` groups of `last_group` images (world*last_group images,
                  `padded` of them repeats).
    The epoch's sampler is re-seeded by `set_epoch(epoch)` (`pretrain.py:312-315`)."""
    per_rank = -(-n_train // world)
    steps = -(-per_rank // gpu_batch)
    last_group = per_rank - gpu_batch * (steps - 1)
    return {
        "per_rank": per_rank,
        "padded": per_rank * world - n_train,
        "steps": steps,
        "last_group": last_group,
        "last_global": world * last_group,
        "full_global": world * gpu_batch,
    }


# =================================================================================================
# 3. Transfer: micro-batches, steps, HyperRule
# =================================================================================================
# configs/finetune/*.yaml at fe6232b (batch, batch_split, base_lr, weight_decay, oversampling)
AUTHORS_FINETUNE = {
    "cifar10": dict(
        config="configs/finetune/cifar10.yaml",
        batch=128,
        batch_split=2,
        base_lr=0.001,
        weight_decay=0,
        oversampling=False,
        augmentation="bit",
        nb_classes=10,
    ),
    "cifar100": dict(
        config="configs/finetune/cifar100.yaml",
        batch=128,
        batch_split=2,
        base_lr=0.001,
        weight_decay=0,
        oversampling=False,
        augmentation="bit",
        nb_classes=100,
    ),
    "covidx": dict(
        config="configs/finetune/covidx_cxr2.yaml",
        batch=128,
        batch_split=32,
        base_lr=0.001,
        weight_decay=0,
        oversampling=True,
        augmentation="bit",
        nb_classes=2,
    ),
    "flowers102": dict(
        config="configs/finetune/flowers_oversampling.yaml",
        batch=128,
        batch_split=32,
        base_lr=0.001,
        weight_decay=0,
        oversampling=True,
        augmentation="bit",
        nb_classes=102,
    ),
    "padchest-cl": dict(
        config="configs/finetune/padchest.yaml",
        batch=128,
        batch_split=32,
        base_lr=0.001,
        weight_decay=0,
        oversampling=False,
        augmentation="chexpert",
        nb_classes=27,
    ),
    "pets": dict(
        config="configs/finetune/pets.yaml",
        batch=128,
        batch_split=32,
        base_lr=0.001,
        weight_decay=0,
        oversampling=False,
        augmentation="bit",
        nb_classes=37,
    ),
    "tuberculosis": dict(
        config="configs/finetune/tuberculosis_full.yaml",
        batch=128,
        batch_split=32,
        base_lr=0.001,
        weight_decay=0,
        oversampling=False,
        augmentation="bit",
        nb_classes=2,
    ),
}


def authors_micro_batch(target: str) -> int:
    """`micro_batch_size = config.optim.batch // config.optim.batch_split` (`finetune.py:170`):
    64 for CIFAR-10/100, 4 for every other target."""
    c = AUTHORS_FINETUNE[target]
    return c["batch"] // c["batch_split"]


def authors_hyperrule_steps(train_size: int) -> int:
    """Last step of `bit_hyperrule.get_schedule(len(train_set))` (`bit_hyperrule.py:49-55`;
    `finetune.py:434-437`, no config sets `optim.steps`): < 20k -> 500, < 500k -> 10,000, else 20,000."""
    return 500 if train_size < 20_000 else 10_000 if train_size < 500_000 else 20_000


def authors_mixup_alpha(train_size: int) -> float:
    """`bit_hyperrule.get_mixup` (`bit_hyperrule.py:36-37`): 0.0 if size < 20,000 else 0.1."""
    return 0.0 if train_size < 20_000 else 0.1


@dataclass(frozen=True)
class MicroBatch:
    size: int  # images in this forward pass
    weight: float  # weight of this micro-batch's MEAN loss in the step's gradient (1/batch_split)
    pass_index: int  # which pass over the loader (a fresh iterator of `recycle`) it came from
    indices: tuple  # dataset positions (random: illustrative draws, not the authors')

    @property
    def image_weight(self) -> float:
        """Weight of one image's loss in the step: 1 / (batch_split * size)."""
        return self.weight / self.size


@dataclass(frozen=True)
class Step:
    micro_batches: tuple

    @property
    def sizes(self) -> tuple:
        return tuple(mb.size for mb in self.micro_batches)

    @property
    def n_images(self) -> int:
        return sum(self.sizes)


def authors_transfer_steps(
    n_images: int,
    batch: int = 128,
    batch_split: int = 32,
    steps: int | None = None,
    seed: int = 0,
    sampler: str = "shuffle",
    class_weights=None,
    keep_indices: bool = True,
) -> list[Step]:
    """The micro-batches of every optimiser step of one transfer run (`finetune.py`):

    * micro = batch // batch_split (:170).
    * n >= micro (:183-194): DataLoader(batch_size=micro, shuffle=True, drop_last=False) -- one pass is
      a fresh permutation cut into floor(n/micro) full micro-batches + one of n % micro if non-zero.
      With `oversampling: true` and no k-shot (:105-131) the sampler is WeightedRandomSampler(w, n)
      (n draws with replacement per pass, w = n / count(class)): same sizes (`sampler="oversample"`,
      `class_weights` = per-image weights).
    * n < micro (:195-209): RandomSampler(replacement=True, num_samples=micro): one pass = ONE full
      micro-batch of `micro` draws with replacement.
    * `for (x, y) in recycle(train_loader)` (:65-69, :474) restarts the loader whenever it is exhausted,
      so an optimiser step can span passes; every micro-batch adds `(c / batch_split).backward()` (:521)
      with c its mean loss, and `optim.step()` runs when `accum_steps == batch_split` (:537-544): a step
      is exactly `batch_split` consecutive micro-batches, a partial one weighing 1/batch_split like a
      full one. Training stops when `get_lr(step)` is None, i.e. after `steps` optimiser steps
      (default: `authors_hyperrule_steps(n)`), :490-503.

    This assumes their non-Horovod path (`USE_HOROVOD = False`, sampler None): with Horovod importable
    every cell with micro <= n < batch crashes at `step // steps_per_epoch` (steps_per_epoch =
    n // 128 = 0, :473-479), yet such cells (e.g. Pets 1-shot) are published; see docs/PROTOCOL.md,
    "sampler and micro-batches".
    `keep_indices=False` stores empty index tuples (fast for 10,000-step cells).
    """
    micro = batch // batch_split
    if steps is None:
        steps = authors_hyperrule_steps(n_images)
    rng = np.random.default_rng(seed)
    need = steps * batch_split
    mbs: list[MicroBatch] = []
    p = 0
    w = 1.0 / batch_split
    if n_images <= 0:
        raise ValueError("n_images must be positive")
    while len(mbs) < need:
        if n_images < micro:
            idx = rng.integers(0, n_images, size=micro)
            mbs.append(MicroBatch(micro, w, p, tuple(idx.tolist()) if keep_indices else ()))
        else:
            if sampler == "shuffle":
                order = rng.permutation(n_images)
            elif sampler == "oversample":
                cw = np.ones(n_images) if class_weights is None else np.asarray(class_weights, dtype=float)
                order = rng.choice(n_images, size=n_images, replace=True, p=cw / cw.sum())
            else:
                raise ValueError("sampler must be 'shuffle' or 'oversample'")
            for i in range(0, n_images, micro):
                chunk = order[i : i + micro]
                mbs.append(MicroBatch(len(chunk), w, p, tuple(chunk.tolist()) if keep_indices else ()))
                if len(mbs) == need:
                    break
        p += 1
    return [Step(tuple(mbs[s * batch_split : (s + 1) * batch_split])) for s in range(steps)]


def authors_step_weights(sizes: Sequence[int], batch_split: int) -> np.ndarray:
    """Per-image weights of one step's concatenated images (sum = len(sizes)/batch_split = 1 for a
    full step): image in a micro-batch of size s gets 1 / (batch_split * s)."""
    return np.concatenate([np.full(s, 1.0 / (batch_split * s)) for s in sizes])


def authors_step_loss(per_image_loss, sizes: Sequence[int], batch_split: int):
    """sum over micro-batches of mean(loss of the micro-batch) / batch_split -- the quantity whose
    gradient one optimiser step applies (`finetune.py:514-521`), for a single-label CE loss (mean over
    the micro-batch's images; no class weights in any paper config)."""
    t = torch.as_tensor(per_image_loss)
    out, i = t.new_zeros(()), 0
    for s in sizes:
        out = out + t[i : i + s].mean() / batch_split
        i += s
    if i != t.shape[0]:
        raise ValueError(f"sizes sum to {i}, loss has {t.shape[0]} entries")
    return out


# Paper cells: full training-set sizes and classes (PROTOCOL.md / registry facts; PadChest-Cl counted
# on the real label file with their rules: 37,387 train, Consolidation has 0 images)
PAPER_FULL_SIZES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "pets": 3_680,
    "flowers102": 6_149,
    "covidx": 15_952,
    "tuberculosis": 679,
    "padchest-cl": 37_387,
}
PAPER_CLASSES = {
    "cifar10": 10,
    "cifar100": 100,
    "pets": 37,
    "flowers102": 102,
    "covidx": 2,
    "tuberculosis": 2,
    "padchest-cl": 26,
}  # padchest-cl: 27 outputs, 26 non-empty classes
PAPER_SHOTS = {
    "cifar10": (1, 5, 10, 100, 500, 0),
    "cifar100": (1, 5, 10, 100, 500, 0),
    "pets": (1, 5, 10, 0),
    "flowers102": (1, 5, 10, 0),
    "covidx": (1, 5, 10, 100, 500, 0),
    "tuberculosis": (1, 5, 10, 100, 0),
    "padchest-cl": (1, 5, 10, 100, 0),
}  # 0 = full


def authors_paper_train_size(target: str, shots: int) -> int:
    """len(train_set) of a paper cell: k x non-empty classes (every class of every paper target has
    >= k training images for the published k, PadChest-Cl's smallest non-empty class has 130), capped
    by the full size; full = the full training set."""
    full = PAPER_FULL_SIZES[target]
    return full if shots == 0 else min(full, shots * PAPER_CLASSES[target])


def authors_mixup_cells() -> list[tuple[str, int]]:
    """(target, shots) of the paper grid where MixUp (alpha 0.1) is on: len(train_set) >= 20,000.
    -> cifar10 full, cifar100 500-shot and full, padchest-cl full."""
    return [
        (t, k) for t, ks in PAPER_SHOTS.items() for k in ks if authors_mixup_alpha(authors_paper_train_size(t, k)) > 0
    ]


# =================================================================================================
# 4. MixUp (finetune.py:302-312, 470, 508-514, 546)
# =================================================================================================
def authors_mixup(x, y, lam: float, perm):
    """`mixup_data` (`finetune.py:302-308`), per micro-batch:
        indices = torch.randperm(x.shape[0]); mixed_x = l * x + (1 - l) * x[indices]
        y_a, y_b = y, y[indices]
    `perm` is the micro-batch's permutation (self-pairs allowed: randperm may fix points; a 1-image
    micro-batch is always paired with itself). Returns (mixed_x, y_a, y_b)."""
    perm = torch.as_tensor(perm, dtype=torch.long)
    x = torch.as_tensor(x)
    if perm.shape[0] != x.shape[0] or sorted(perm.tolist()) != list(range(x.shape[0])):
        raise ValueError("perm must be a permutation of the micro-batch's positions")
    mixed = lam * x + (1 - lam) * x[perm]
    y = torch.as_tensor(y)
    return mixed, y, y[perm]


def authors_mixup_loss(logits, y_a, y_b, lam: float, multilabel: bool = False):
    """`mixup_criterion` (`finetune.py:311-312`): l * cri(pred, y_a) + (1 - l) * cri(pred, y_b).
    Single-label: cri = CrossEntropyLoss() (mean over the micro-batch; :464). Multi-label: cri is the
    masked BCE (:456-461), each term masked by ITS OWN target's NaNs (no paper transfer is multi-label)."""
    logits = torch.as_tensor(logits)
    if not multilabel:
        return lam * F.cross_entropy(logits, torch.as_tensor(y_a)) + (1 - lam) * F.cross_entropy(
            logits, torch.as_tensor(y_b)
        )

    def cri(out, t):
        t = torch.as_tensor(t, dtype=out.dtype)
        m = ~torch.isnan(t)
        return F.binary_cross_entropy_with_logits(out[m], t[m])

    return lam * cri(logits, y_a) + (1 - lam) * cri(logits, y_b)


def authors_mixup_step(x, y, sizes: Sequence[int], lam: float, perms: Sequence):
    """MixUp of one optimiser step: ONE lambda for all its micro-batches (drawn by
    `np.random.beta(mixup, mixup)` before the loop, :470, and after every optimiser step, :546), and a
    separate `randperm` inside each micro-batch (:304). `x`, `y` are the step's images concatenated in
    micro-batch order; `perms[i]` permutes micro-batch i. Returns (mixed_x, y_a, y_b) concatenated."""
    xs, ya, yb, i = [], [], [], 0
    for s, p in zip(sizes, perms):
        m, a, b = authors_mixup(torch.as_tensor(x)[i : i + s], torch.as_tensor(y)[i : i + s], lam, p)
        xs.append(m)
        ya.append(a)
        yb.append(b)
        i += s
    return torch.cat(xs), torch.cat(ya), torch.cat(yb)


# =================================================================================================
# 5. X-ray pixels as their dataset classes read them
# =================================================================================================
_CV2_SOURCES = ("chexpert", "mimic", "nih")
_SKIMAGE_SOURCES = ("padchest",)
_PIL_RGB_SOURCES = ("covidx", "tuberculosis")


def _pil_as_cv2_imread_color(path) -> np.ndarray:
    """cv2.imread(path) (flag IMREAD_COLOR) emulated with PIL: H x W x 3 uint8 in B, G, R order.
    - 8-bit L / LA: grey copied to 3 channels (alpha dropped);
    - RGB / RGBA / P / PA: colours (alpha dropped, no compositing), reversed to BGR;
    - 16-bit grey (PIL I;16* / I): cv2 reduces to 8 bits by keeping the HIGH byte (libpng
      png_set_strip_16): v >> 8 -- NOT v / 257 rounded;
    - EXIF orientation is applied (cv2.imread does, PIL does not by itself).
    Checked equal to opencv-python-headless 4.10.0 and 5.1.0 on L, LA, P, RGB, RGBA, 16-bit grey and
    16-bit RGB PNGs, grey and colour JPEGs (4:2:0 and 4:4:4) and an EXIF-rotated JPEG."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            a = np.asarray(im).astype(np.int64)
            g = (a >> 8).astype(np.uint8)
            return np.repeat(g[..., None], 3, axis=2)
        if im.mode in ("1", "L", "LA"):
            g = np.asarray(im.convert("L"))
            return np.repeat(g[..., None], 3, axis=2)
        rgb = np.asarray(im.convert("RGB"))
        return np.ascontiguousarray(rgb[..., ::-1])


def _cv2_imread(path) -> np.ndarray:
    try:
        import cv2  # noqa: F401  (the authors' reader, if installed)
    except ImportError:
        return _pil_as_cv2_imread_color(path)
    img = cv2.imread(str(path))
    if img is None:
        raise OSError(f"{path}: cv2.imread could not read it")
    return img


def _skimage_imread(path) -> np.ndarray:
    """skimage.io.imread(path) (their padchest.py:9, 202); PIL fallback: np.asarray(Image.open(path))
    (16-bit grey -> uint16, 8-bit grey -> uint8, RGB(A) -> H x W x 3(4) uint8: what skimage's imageio /
    pillow plugins return for these PNGs)."""
    try:
        from skimage.io import imread
    except ImportError:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return np.asarray(im)
    return imread(str(path))


def authors_load_xray(path: str | os.PathLike, dataset: str) -> np.ndarray:
    """The array their dataset class hands to its transform.

    chexpert / mimic / nih (`datasets/chexpert.py:116-125`, `mimic.py:117-128`, `nih.py:134-146`):
        img = cv2.imread(img_path); img = img / 255.0; if len(img.shape) > 2: img = img[:, :, 0]
        img = img[None, :, :]
      -> (1, H, W) float64 in [0, 1]: channel 0 of cv2's BGR = the BLUE channel (= grey for grey files;
      16-bit files arrive as their high byte).
    padchest (`datasets/padchest.py:202-215`):
        img = imread(img_path); img = img / 65535; if len(img.shape) > 2: img = img[:, :, 0]
      -> (1, H, W) float64: 16-bit grey / 65535; an 8-bit file would become <= 255/65535 (near black);
      a colour file its RED channel / 65535.
    covidx / tuberculosis (`covidx_cxr2.py:21`, `tuberculosis.py:27`): torchvision's `default_loader`
      -> PIL `Image.open(f).convert("RGB")` (torchvision 0.8 pil_loader) -> returned here as
      np.asarray: (H, W, 3) uint8, colour kept (ToTensor later divides by 255). 16-bit grey files are
      clipped at 255 by PIL's I -> RGB conversion (Pillow-version dependent; none known in these sets).
    The 3-channel copy (`img * np.ones((3,1,1))`, chexpert.py:138 etc.) happens after the transform.
    """
    d = dataset.lower()
    if d in _CV2_SOURCES:
        img = _cv2_imread(path) / 255.0
        if img.ndim > 2:
            img = img[:, :, 0]
        return img[None, :, :]
    if d in _SKIMAGE_SOURCES:
        img = _skimage_imread(path) / 65535
        if img.ndim > 2:
            img = img[:, :, 0]
        return img[None, :, :]
    if d in _PIL_RGB_SOURCES:
        from PIL import Image

        with open(path, "rb") as f:
            img = Image.open(f)
            return np.asarray(img.convert("RGB"))
    raise ValueError(f"unknown X-ray dataset {dataset!r}; one of {_CV2_SOURCES + _SKIMAGE_SOURCES + _PIL_RGB_SOURCES}")
