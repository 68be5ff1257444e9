"""Models: timm networks by name, initialisations from local files only, and the transfer heads.

    model = create_model(cfg, num_classes)             # cfg.init picks the weights, cfg.kind the head

Inits (`cfg.init`), resolved through the `INITS` registry:
  scratch        timm's own initialisation
  timm           the pretrained tag in `cfg.arch` (e.g. resnetv2_50x1_bit.goog_in21k), read from a local
                 file under `cfg.weights_dir` -- never downloaded
  run:<run_id>   the xrstudy checkpoint of an earlier pre-training cell, `{out_dir}/runs/<run_id>/checkpoint.pt`
  <path>.pt      an xrstudy checkpoint file (weights + `checkpoint.json` sidecar with its RunConfig,
                 split hash and the file's SHA-256)

Heads (`HEADS`): "linear" (a fresh linear / 1x1-conv layer on the pooled features, torch's default
init as in the authors' code, or zero with `head_init: zero` as in BiT; with timm's init it is also
the multi-label head of pre-training) or "concat" (fastai's
concat-pool head).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import nn
from timm.layers import GroupNormAct, StdConv2d
from timm.models import register_model
from timm.models.resnetv2 import ResNetV2

from xrstudy.config import RunConfig

CHECKPOINT_FORMAT = "xrstudy.checkpoint/1"
WEIGHT_FILE_PATTERNS = ("{tag}.safetensors", "{tag}.pth", "{tag}.bin", "{tag}.npz",
                        "{tag}/model.safetensors", "{tag}/pytorch_model.bin", "{tag}/model.npz")


class CheckpointError(RuntimeError):
    """A weight file is missing, unreadable, altered, or for another architecture."""


# ---- a tiny BiT-style ResNet-v2 for CPU demos and tests --------------------------------------
@register_model
def resnetv2_tiny_bit(pretrained: bool = False, **kwargs: Any) -> ResNetV2:
    """BiT ResNet-v2 in miniature: one pre-activation bottleneck per stage, GroupNorm + StdConv2d.

    ~0.3M parameters; `timm.create_model("resnetv2_tiny_bit")` works once xrstudy.models is imported.
    """
    if pretrained:
        raise CheckpointError("resnetv2_tiny_bit has no published weights; use init=scratch or a local file")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    return ResNetV2(
        layers=[1, 1, 1, 1],
        channels=(32, 64, 128, 256),  # bottleneck widths 8, 16, 32, 64
        stem_chs=16,
        stem_type="fixed",
        conv_layer=partial(StdConv2d, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=8),  # 8 divides every width above
        **kwargs,
    )


# ---- names ----------------------------------------------------------------------------------
def base_arch(arch: str) -> str:
    """`resnetv2_50x1_bit.goog_in21k` -> `resnetv2_50x1_bit` (the tag only names weights)."""
    return arch.split(".", 1)[0]


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the classifier (e.g. `head.fc`), the part a transfer replaces."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("classifier", "head.fc") if isinstance(cfg, dict) else "head.fc"


def classifier_parameters(model: nn.Module) -> set[nn.Parameter]:
    """Parameters of the final classifier (AGC leaves them alone, as in NFNets: a zero head
    would otherwise be clipped to ~1e-5 per step and never learn)."""
    model = getattr(model, "module", model)  # DDP
    return set(model.get_classifier().parameters())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A timm-format weight file: safetensors, or a torch pickle read with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing here
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err}); corrupt file?") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def timm_weight_file(cfg: RunConfig) -> Path:
    """The local file holding `cfg.arch`'s pretrained tag; a clear error when it is not there."""
    if "." not in cfg.arch:
        raise CheckpointError(
            f"init='timm' needs a pretrained tag in arch, e.g. 'resnetv2_50x1_bit.goog_in21k' (got {cfg.arch!r})"
        )
    weights_dir = Path(cfg.weights_dir or os.environ.get("XRSTUDY_WEIGHTS", "weights"))
    candidates = [weights_dir / p.format(tag=cfg.arch) for p in WEIGHT_FILE_PATTERNS]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise CheckpointError(
            f"no local weights for {cfg.arch!r}: expected {candidates[0]} (or {candidates[1].name}, "
            f"{candidates[3].name}, {cfg.arch}/model.safetensors) under weights_dir={str(weights_dir)!r}. "
            f"xrstudy never downloads; on a machine with network run e.g. "
            f"`hf download timm/{cfg.arch} model.safetensors --local-dir {weights_dir / cfg.arch}` "
            f"or `python -c \"import timm,torch; torch.save(timm.create_model('{cfg.arch}', pretrained=True)"
            f".state_dict(), '{candidates[1]}')\"` and copy the file here."
        )
    return found


def init_scratch(model: nn.Module, cfg: RunConfig, arg: str) -> None:
    """timm's own initialisation: nothing to load."""


def init_timm(model: nn.Module, cfg: RunConfig, arg: str) -> None:
    path = timm_weight_file(cfg)
    if path.suffix == ".npz":  # original BiT release (JAX/TF); timm converts it
        if not hasattr(model, "load_pretrained"):
            raise CheckpointError(f"{path}: .npz weights need a model with load_pretrained (BiT ResNet-v2)")
        model.load_pretrained(str(path))
        return
    load_backbone(model, _read_state_dict(path), origin=str(path))


@dataclass(frozen=True)
class Checkpoint:
    """An xrstudy checkpoint as read back: weights plus its sidecar."""

    path: Path
    state: dict[str, torch.Tensor]
    sidecar: dict[str, Any]


def read_checkpoint(path: str | Path, arch: str | None = None) -> Checkpoint:
    """Read an xrstudy checkpoint, checking its sidecar, SHA-256 and (optionally) its architecture."""
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not sidecar_path.is_file():
        raise CheckpointError(
            f"{path}: no sidecar {sidecar_path.name} next to it; an xrstudy checkpoint is written by a "
            f"pre-training cell (for timm weight files use init='timm' and weights_dir)"
        )
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{sidecar_path}: not valid JSON ({err})") from None
    if sidecar.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{sidecar_path}: format {sidecar.get('format')!r}; expected {CHECKPOINT_FORMAT!r}")
    actual = sha256_file(path)
    if actual != sidecar.get("sha256"):
        raise CheckpointError(
            f"{path}: SHA-256 {actual[:12]}… does not match its sidecar ({str(sidecar.get('sha256'))[:12]}…); "
            "the file is corrupt or was replaced"
        )
    if arch is not None and base_arch(arch) != sidecar.get("arch"):
        raise CheckpointError(
            f"{path}: checkpoint of architecture {sidecar.get('arch')!r}, but this cell builds {base_arch(arch)!r}"
        )
    state = _read_state_dict(path)
    return Checkpoint(path=path, state=state, sidecar=sidecar)


def write_checkpoint(path: str | Path, model: nn.Module, sidecar: dict[str, Any]) -> dict[str, str]:
    """Atomically write weights + sidecar; returns {"path", "sha256"} for the result JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "model": state}, tmp)
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    meta = {"format": CHECKPOINT_FORMAT, **sidecar, "sha256": digest}
    side_tmp = path.with_suffix(".json.tmp")
    side_tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(side_tmp, path.with_suffix(".json"))
    return {"path": str(path), "sha256": digest}


def checkpoint_path(cfg: RunConfig, init: str) -> Path:
    if init.startswith("run:"):
        return Path(cfg.out_dir) / "runs" / init[len("run:"):] / "checkpoint.pt"
    return Path(init)


def init_checkpoint(model: nn.Module, cfg: RunConfig, arg: str) -> None:
    ckpt = read_checkpoint(checkpoint_path(cfg, arg), arch=cfg.arch)
    load_backbone(model, ckpt.state, origin=str(ckpt.path))


INITS: dict[str, Callable[[nn.Module, RunConfig, str], None]] = {
    "scratch": init_scratch,
    "timm": init_timm,
    "checkpoint": init_checkpoint,  # run:<run_id> or a path
}


def init_kind(init: str) -> str:
    """Registry key for `cfg.init`: the named inits, otherwise an xrstudy checkpoint (run:<id> or path)."""
    return init if init in INITS and init != "checkpoint" else "checkpoint"


# ---- the one entry point --------------------------------------------------------------------
def create_model(cfg: RunConfig, num_classes: int, head: str = "linear", seed: int | None = None) -> nn.Module:
    """The network of a cell: `cfg.arch` from timm, weights from `cfg.init`, then its head.

    Pre-training keeps timm's classifier with `num_classes` multi-label outputs; transfer swaps in
    `HEADS[head]` (default: a fresh linear / 1x1-conv head; `cfg.head_init` = zero gives BiT's zero head). Random initialisation draws from a
    generator seeded with `seed` (default `cfg.seed`) inside `torch.random.fork_rng`, so the same
    cell always starts from the same weights and the caller's global RNG state is left untouched.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {sorted(HEADS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed if seed is None else seed)
        try:
            model = timm.create_model(base_arch(cfg.arch), pretrained=False, num_classes=num_classes)
        except RuntimeError as err:
            raise ValueError(f"arch={cfg.arch!r}: {err}") from None
        INITS[init_kind(cfg.init)](model, cfg, cfg.init)
        if cfg.kind == "transfer":
            model = HEADS[head](model, num_classes)
            if cfg.head_init == "zero":
                for param in model.get_classifier().parameters():
                    nn.init.zeros_(param)
    return model



# ---- input statistics of an init ------------------------------------------------------------
XRAY_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the authors' X-ray configs (data.mean / data.std); BiT's
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # build_transforms' default (their ImageNet runs)


def input_stats(cfg: RunConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the inputs of `cfg`'s init are normalised with, per channel, on [0, 1] pixels.

    scratch, run:<id> and checkpoint files (xrstudy pre-training): 0.5 / 0.5. `init: paper`: the
    authors' configs -- their X-ray models 0.5 / 0.5, their ImageNet models (init_label imagenet*,
    configs/imagenet*.yaml set no mean / std) torchvision's ImageNet mean / std, which finetune.py
    carries over from the pre-training config. `init: timm`: the tag's pretrained_cfg.
    """
    if cfg.init == "timm":
        from timm.models import get_pretrained_cfg

        pretrained = get_pretrained_cfg(cfg.arch)
        if pretrained is None:
            raise CheckpointError(f"init='timm': timm knows no pretrained config for {cfg.arch!r}")
        return tuple(pretrained.mean), tuple(pretrained.std)
    if cfg.init == "paper" and cfg.init_label.startswith("imagenet"):
        return IMAGENET_STATS
    return XRAY_STATS


__all__ = [
    "create_model",
    "input_stats",
    "HEADS",
    "INITS",
    "CheckpointError",
    "Checkpoint",
    "read_checkpoint",
    "write_checkpoint",
    "load_backbone",
    "timm_weight_file",
    "classifier_parameters",
    "base_arch",
    "sha256_file",
    "resnetv2_tiny_bit",
]
