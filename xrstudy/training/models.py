"""Models: timm networks by name, initialisations from local files only, and the transfer heads.

    model = create_model(cfg, num_classes)             # cfg.init picks the weights, cfg.kind the head

Inits (`cfg.init`), resolved through the `INITS` registry:
  scratch        a network built from scratch: `cfg.weight_init` "torch" (PyTorch's default init, as the
                 authors' network, with their weight-standardisation eps: `torch_default_init`) or
                 "timm" (timm's own)
  timm           the pretrained tag in `cfg.arch` (e.g. resnetv2_50x1_bit.goog_in21k), read from a local
                 file under `cfg.weights_dir` -- never downloaded
  paper          the authors' released checkpoint `{weights_dir}/{init_label}_bit{50x1|152x4}/model.pth.tar`,
                 renamed from big_transfer's naming to timm's (xrstudy.training.paper_weights)
  run:<run_id>   the xrstudy checkpoint of an earlier pre-training cell, `{out_dir}/runs/<run_id>/checkpoint.pt`
  <path>.pt      an xrstudy checkpoint file (weights + `checkpoint.json` sidecar with its RunConfig,
                 split hash and the file's SHA-256)

Heads (`HEADS`): "linear" (a fresh linear / 1x1-conv layer on the pooled features, torch's default
init as in the authors' code, or zero with `head_init: zero` as in BiT; with timm's init it is also
the multi-label head of pre-training) or "concat" (fastai's
concat-pool head).

Checkpoint files (xrstudy's own and any state-dict file) are `xrstudy.training.checkpoints`, the authors'
files `xrstudy.training.paper_weights`, the tiny test architecture `xrstudy.training.archs`; their public
names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

from xrstudy.config import RunConfig
from xrstudy.fileio import sha256_file
from xrstudy.training import paper_weights, resolve
from xrstudy.training.archs import resnetv2_tiny_bit
from xrstudy.training.checkpoints import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointError,
    base_arch,
    checkpoint_path,
    read_checkpoint,
    read_state_dict,
    tensor_bytes,
    unwrap,
    weights_dir,
    write_checkpoint,
)

WEIGHT_FILE_PATTERNS = (
    "{tag}.safetensors",
    "{tag}.pth",
    "{tag}.bin",
    "{tag}.npz",
    "{tag}/model.safetensors",
    "{tag}/pytorch_model.bin",
    "{tag}/model.npz",
)


# ---- names ----------------------------------------------------------------------------------
def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the classifier (e.g. `head.fc`), the part a transfer replaces."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("classifier", "head.fc") if isinstance(cfg, dict) else "head.fc"


# ---- heads ----------------------------------------------------------------------------------
class ConcatPoolClassifier(nn.Module):
    """timm backbone + fastai's concat-pool head (avg ‖ max pooling, BN-dropout-linear layers)."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        from fastai.vision.learner import create_head

        self.backbone = backbone
        self.head = create_head(backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def linear_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh classifier on pooled features (BiT ResNet-v2: a 1x1 conv), torch's default init --
    what the authors' finetune.py builds; `head_init: zero` zeroes it afterwards, as BiT does."""
    model.reset_classifier(num_classes)
    return model


def concat_pool_head(model: nn.Module, num_classes: int) -> nn.Module:
    model.reset_classifier(0)
    return ConcatPoolClassifier(model, num_classes)


HEADS: dict[str, Callable[[nn.Module, int], nn.Module]] = {
    "linear": linear_head,
    "concat": concat_pool_head,
}


# ---- loading weights into a freshly built model ---------------------------------------------
def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Copy every non-classifier tensor of `state` into `model`; anything else is a wrong architecture."""
    own = model.state_dict()
    head = classifier_prefix(model) + "."
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.startswith(head))
    reshaped = sorted(
        k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape) and not k.startswith(head)
    )
    if unexpected or missing or reshaped:
        raise CheckpointError(
            f"{origin}: weights do not fit {type(model).__name__} "
            f"({len(unexpected)} unexpected keys e.g. {unexpected[:3]}, {len(missing)} missing e.g. {missing[:3]}, "
            f"{len(reshaped)} with other shapes e.g. {reshaped[:3]}); wrong architecture?"
        )
    keep = {k: v for k, v in state.items() if tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(keep, strict=False)


def timm_weight_file(cfg: RunConfig) -> Path:
    """The local file holding `cfg.arch`'s pretrained tag; a clear error when it is not there."""
    if "." not in cfg.arch:
        raise CheckpointError(
            f"init='timm' needs a pretrained tag in arch, e.g. 'resnetv2_50x1_bit.goog_in21k' (got {cfg.arch!r})"
        )
    folder = weights_dir(cfg)
    candidates = [folder / p.format(tag=cfg.arch) for p in WEIGHT_FILE_PATTERNS]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise CheckpointError(
            f"no local weights for {cfg.arch!r}: expected {candidates[0]} (or {candidates[1].name}, "
            f"{candidates[3].name}, {cfg.arch}/model.safetensors) under weights_dir={str(folder)!r}. "
            f"xrstudy never downloads; on a machine with network run e.g. "
            f"`hf download timm/{cfg.arch} model.safetensors --local-dir {folder / cfg.arch}` "
            f"or `python -c \"import timm,torch; torch.save(timm.create_model('{cfg.arch}', pretrained=True)"
            f".state_dict(), '{candidates[1]}')\"` and copy the file here."
        )
    return found


# Layers PyTorch initialises itself (their constructors call `reset_parameters`); timm's StdConv2d and
# GroupNormAct are subclasses that keep torch's method.
TORCH_INIT_LAYERS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)
_SHORTCUT = ".downsample.conv"  # timm's projection shortcut of a BiT unit (big_transfer: `unitNN.downsample`)


def _authors_draw_order(model: nn.Module) -> list[nn.Module]:
    """The model's layers in the order big_transfer's constructor creates them: timm's order, except that a
    unit's shortcut conv comes after its conv3 (their PreActBottleneck builds gn1, conv1, gn2, conv2, gn3,
    conv3, downsample; timm builds the shortcut first)."""
    ordered: list[nn.Module] = []
    deferred: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name.endswith(_SHORTCUT):
            deferred[name[: -len(_SHORTCUT)]] = module
            continue
        ordered.append(module)
        unit, _, last = name.rpartition(".")
        if last == "conv3" and unit in deferred:
            ordered.append(deferred.pop(unit))
    return ordered + list(deferred.values())


def torch_default_init(model: nn.Module) -> nn.Module:
    """PyTorch's default initialisation, as the authors' network has it (their models/bit.py holds no init
    code): every conv / linear / norm layer's own `reset_parameters` (convs and linears
    kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)), a bias U(+-1/sqrt(fan_in)); norms 1 / 0), drawn from
    torch's RNG in the order their constructor creates the layers, so their seed gives their weights; and
    big_transfer's weight-standardisation eps (1e-10). Returns `model`, changed in place."""
    for module in _authors_draw_order(model):
        if isinstance(module, TORCH_INIT_LAYERS):
            module.reset_parameters()
    return paper_weights.use_bit_numerics(model)


def standardisation_eps(model: nn.Module) -> float | None:
    """The weight-standardisation eps of `model`'s StdConv2d layers (None without any): a checkpoint
    records it, so the weights are read back with the numerics they were trained with."""
    from timm.layers import StdConv2d

    return next((float(m.eps) for m in model.modules() if isinstance(m, StdConv2d)), None)


def set_standardisation_eps(model: nn.Module, eps: float) -> nn.Module:
    from timm.layers import StdConv2d

    for module in model.modules():
        if isinstance(module, StdConv2d):
            module.eps = eps
    return model


def init_scratch(model: nn.Module, cfg: RunConfig, arg: str) -> None:
    """Nothing to load: PyTorch's default init (`weight_init: torch`, the authors') or timm's own (`timm`,
    what `timm.create_model` drew)."""
    if cfg.weight_init == "torch":
        torch_default_init(model)


def init_timm(model: nn.Module, cfg: RunConfig, arg: str) -> None:
    path = timm_weight_file(cfg)
    if path.suffix == ".npz":  # original BiT release (JAX/TF); timm converts it
        if not hasattr(model, "load_pretrained"):
            raise CheckpointError(f"{path}: .npz weights need a model with load_pretrained (BiT ResNet-v2)")
        model.load_pretrained(str(path))
        return
    load_backbone(model, read_state_dict(path), origin=str(path))


def init_checkpoint(model: nn.Module, cfg: RunConfig, arg: str) -> None:
    ckpt = read_checkpoint(checkpoint_path(cfg, arg), arch=cfg.arch)
    load_backbone(model, ckpt.state, origin=str(ckpt.path))
    eps = ckpt.sidecar.get("std_eps")  # the numerics the weights were trained with (checkpoints before it: timm's)
    if eps is not None:
        set_standardisation_eps(model, float(eps))


def init_paper(model: nn.Module, cfg: RunConfig, arg: str) -> None:
    """The authors' released checkpoint `{weights_dir}/{init_label}_bit{size}/model.pth.tar`."""
    path = paper_weights.paper_weight_file(cfg)
    load_backbone(model, paper_weights.read_paper_checkpoint(path, cfg.arch), origin=str(path))
    paper_weights.use_bit_numerics(model)  # their weights were trained with big_transfer's standardisation eps


INITS: dict[str, Callable[[nn.Module, RunConfig, str], None]] = {
    "scratch": init_scratch,
    "timm": init_timm,
    "paper": init_paper,  # the authors' released checkpoints (big_transfer naming, xrstudy.training.paper_weights)
    "checkpoint": init_checkpoint,  # run:<run_id> or a path
}


def init_kind(init: str) -> str:
    """Registry key for `cfg.init`: the named inits, otherwise an xrstudy checkpoint (run:<id> or path)."""
    return init if init in INITS and init != "checkpoint" else "checkpoint"


# ---- the one entry point --------------------------------------------------------------------
def create_model(cfg: RunConfig, num_classes: int, head: str = "linear", seed: int | None = None) -> nn.Module:
    """The network of a cell: `cfg.arch` from timm, weights from `cfg.init`, then its head.

    Pre-training keeps timm's classifier with `num_classes` multi-label outputs; transfer swaps in
    `HEADS[head]` (default: a fresh linear / 1x1-conv head; `cfg.head_init` = zero gives BiT's zero head).
    Random initialisation draws from a generator seeded with `seed` (default `cfg.seed`) inside
    `torch.random.fork_rng`, so the same cell always starts from the same weights and the caller's global RNG
    state is left untouched. `weight_init: torch` draws from the seed afresh, in the authors' layer order:
    with their seed (42) a scratch network gets the weights their constructor drew (under one torch version).
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {sorted(HEADS)}")
    seed = cfg.seed if seed is None else seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(base_arch(cfg.arch), pretrained=False, num_classes=num_classes)
        except RuntimeError as err:
            raise ValueError(f"arch={cfg.arch!r}: {err}") from None
        if init_kind(cfg.init) == "scratch" and cfg.weight_init == "torch":
            torch.manual_seed(seed)  # the authors' draws: their constructor's, from the seed (pretrain.py:211, 266)
        INITS[init_kind(cfg.init)](model, cfg, cfg.init)
        if cfg.kind == "transfer":
            model = HEADS[head](model, num_classes)
            if cfg.head_init == "zero":
                for param in model.get_classifier().parameters():
                    nn.init.zeros_(param)
    return model


# ---- input statistics of an init ------------------------------------------------------------
def timm_input_stats(cfg: RunConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of `cfg.arch`'s pretrained tag in timm's pretrained cfg (`init: timm`)."""
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(cfg.arch)
    if pretrained is None:
        raise CheckpointError(f"init='timm': timm knows no pretrained config for {cfg.arch!r}")
    return tuple(pretrained.mean), tuple(pretrained.std)


def input_stats(cfg: RunConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the inputs of `cfg` are normalised with, per channel, on [0, 1] pixels: the resolver's
    (`xrstudy.training.resolve.input_stats`), told the tag's timm pretrained cfg for `init: timm`."""
    mean, std, _ = resolve.input_stats(cfg, timm_input_stats(cfg) if cfg.init == "timm" else None)
    return mean, std


__all__ = [
    "create_model",
    "input_stats",
    "torch_default_init",
    "standardisation_eps",
    "set_standardisation_eps",
    "TORCH_INIT_LAYERS",
    "timm_input_stats",
    "HEADS",
    "INITS",
    "CheckpointError",
    "Checkpoint",
    "read_checkpoint",
    "write_checkpoint",
    "checkpoint_path",
    "read_state_dict",
    "CHECKPOINT_FORMAT",
    "tensor_bytes",
    "load_backbone",
    "timm_weight_file",
    "unwrap",
    "base_arch",
    "sha256_file",
    "resnetv2_tiny_bit",
]
