"""The authors' released checkpoints, read into timm's BiT ResNet-v2 through an explicit key map.

Cherti & Jitsev released 12 pre-trained models (imagenet1k, imagenet21k, chexpert, chexpert_mimic,
chexpert_mimic_nih, chexpert_mimic_nih_padchest x bit50x1, bit152x4; their `scripts/download_model.sh`)
as `{name}/model.pth.tar`: a torch pickle `{"model": state dict, "optimizer": ..., "epoch": ...}` whose
state dict uses big_transfer's PyTorch names (their `transfer_learning/models/bit.py`). `init: paper`
reads `{weights_dir}/{init_label}_bit{50x1|152x4}/model.pth.tar` (`paper_weight_file`) with
`weights_only=True`, renames every tensor to timm's name and checks names and shapes before anything
is loaded (`read_paper_checkpoint`). `xrstudy models import-paper` writes the renamed state dict.

The key map, timm name -> big_transfer name (stage s and block b count from 0 in timm, from 1 in
big_transfer, whose units are numbered with two digits):

    stem.conv.weight                               root.conv.weight
    stages.{s}.blocks.{b}.norm{i}.{weight|bias}    body.block{s+1}.unit{b+1:02d}.gn{i}.{weight|bias}
    stages.{s}.blocks.{b}.conv{i}.weight           body.block{s+1}.unit{b+1:02d}.conv{i}.weight
    stages.{s}.blocks.{b}.downsample.conv.weight   body.block{s+1}.unit{b+1:02d}.downsample.weight
    norm.{weight|bias}                             head.gn.{weight|bias}
    head.fc.{weight|bias}                          head.conv.{weight|bias}

One tensor each way: both networks are pre-activation bottlenecks with weight-standardised convs
(no bias) and affine GroupNorms (32 groups, eps 1e-5, no running statistics); the stride sits on the
3x3 conv and the projection shortcut reads the pre-activated input in both. One number differs:
timm standardises conv weights with eps 1e-8, big_transfer with 1e-10; `use_bit_numerics` sets 1e-10
on a model that loads the authors' weights, so it computes what their network computed (the tiny
test arch also uses 8 GroupNorm groups instead of 32).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch

from xrstudy.config import RunConfig
from xrstudy.fileio import NotRegularFileError, atomic_path, require_regular_file, sha256_file
from xrstudy.training import archs  # noqa: F401 - registers resnetv2_tiny_bit (key_map builds it)
from xrstudy.training.checkpoints import CheckpointError, base_arch, tensor_bytes, weights_dir

PAPER_FILE = "model.pth.tar"
RELEASED = tuple(
    f"{source}_bit{size}"
    for source in (
        "imagenet1k",
        "imagenet21k",
        "chexpert",
        "chexpert_mimic",
        "chexpert_mimic_nih",
        "chexpert_mimic_nih_padchest",
    )
    for size in ("50x1", "152x4")
)
WRAPPER_PREFIXES = ("module.",)  # DataParallel / DistributedDataParallel; their Horovod files have none
_BIT_ARCH = re.compile(r"resnetv2_(?P<size>\d+x\d+|tiny)_bit")
_BLOCK = r"stages\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\."


def _unit(m: re.Match[str]) -> str:
    return f"body.block{int(m['stage']) + 1}.unit{int(m['block']) + 1:02d}."


# timm name pattern -> big_transfer name; the inverse map is built from these for a given arch.
KEY_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"stem\.conv\.weight"), lambda m: "root.conv.weight"),
    (re.compile(_BLOCK + r"norm(?P<i>[123])\.(?P<p>weight|bias)"), lambda m: f"{_unit(m)}gn{m['i']}.{m['p']}"),
    (re.compile(_BLOCK + r"conv(?P<i>[123])\.weight"), lambda m: f"{_unit(m)}conv{m['i']}.weight"),
    (re.compile(_BLOCK + r"downsample\.conv\.weight"), lambda m: f"{_unit(m)}downsample.weight"),
    (re.compile(r"norm\.(?P<p>weight|bias)"), lambda m: f"head.gn.{m['p']}"),
    (re.compile(r"head\.fc\.(?P<p>weight|bias)"), lambda m: f"head.conv.{m['p']}"),
)
HEAD_KEYS = ("head.fc.weight", "head.fc.bias")  # the pre-training classifier; a transfer replaces it
BIT_STD_EPS = 1e-10  # big_transfer's StdConv2d: (w - mean) / sqrt(var + 1e-10); timm's BiT uses 1e-8


# ---- names ------------------------------------------------------------------------------------
def paper_model_name(init_label: str, arch: str) -> str:
    """`chexpert_mimic`, `resnetv2_152x4_bit` -> `chexpert_mimic_bit152x4` (the authors' folder name)."""
    match = _BIT_ARCH.fullmatch(base_arch(arch))
    if match is None:
        raise CheckpointError(
            f"init 'paper' needs a BiT ResNet-v2 arch (resnetv2_50x1_bit, resnetv2_152x4_bit), got {arch!r}"
        )
    if not init_label:
        raise CheckpointError(
            f"init 'paper' needs init_label, the pre-training source of the checkpoint "
            f"(e.g. chexpert_mimic); released: {', '.join(RELEASED)}"
        )
    return f"{init_label}_bit{match['size']}"


def paper_weight_file(cfg: RunConfig) -> Path:
    """`{weights_dir}/{init_label}_bit{size}/model.pth.tar`; a clear error (with how to get it) when absent."""
    name = paper_model_name(cfg.init_label, cfg.arch)
    folder = weights_dir(cfg)
    path = folder / name / PAPER_FILE
    if not path.is_file():
        released = "" if name in RELEASED else f" ({name} is not one of the 12 released models)"
        raise CheckpointError(
            f"{path}: no such file for init 'paper', arch {base_arch(cfg.arch)!r}{released}. xrstudy never "
            f"downloads; on a machine with network run the authors' `bash scripts/download_model.sh {name}` "
            f"(SLAMPAI/large-scale-pretraining-transfer) and copy pretrained_models/{name}/ to {folder}/. "
            f"Released: {', '.join(RELEASED)}"
        )
    return path


def bit_name(timm_name: str) -> str:
    """The big_transfer name of one timm BiT ResNet-v2 tensor (CheckpointError for anything else)."""
    for pattern, rename in KEY_RULES:
        if (match := pattern.fullmatch(timm_name)) is not None:
            return rename(match)
    raise CheckpointError(f"{timm_name!r} has no big_transfer name; not a BiT ResNet-v2 tensor")


@lru_cache(maxsize=8)
def key_map(arch: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """big_transfer name -> (timm name, shape) for every tensor of `arch` (built on the meta device:
    no memory, R152x4 included). The pre-training head's shape is the default's, never checked."""
    if _BIT_ARCH.fullmatch(base_arch(arch)) is None:
        raise CheckpointError(
            f"arch {arch!r} is not a BiT ResNet-v2; the authors' checkpoints are "
            f"resnetv2_50x1_bit and resnetv2_152x4_bit"
        )
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # cached: must not move the caller's RNG
        model = timm.create_model(base_arch(arch), pretrained=False)
    mapping = {bit_name(k): (k, tuple(v.shape)) for k, v in model.state_dict().items()}
    if len(mapping) != len(model.state_dict()):
        raise CheckpointError(f"arch {arch!r}: two timm tensors map to one big_transfer name")
    return mapping


def to_paper_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm BiT state dict in big_transfer's names (the authors' format; tests and export)."""
    return {bit_name(k): v for k, v in state.items()}


# ---- reading their files ----------------------------------------------------------------------
def _load_pickle(path: Path, arch: str) -> Any:
    """torch.load with weights_only=True, memory-mapped where the file allows (R152x4 + optimizer: ~7 GB)."""
    try:
        require_regular_file(path)  # torch.load opens by name: on a FIFO it would wait forever
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # an old (pre-zip) torch file cannot be mapped; anything else is fatal
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file (arch {base_arch(arch)!r})") from None
    except NotRegularFileError as err:
        raise CheckpointError(
            f"{path}: not a regular file (a {err.kind}); expected the authors' model.pth.tar"
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated zip, bad pickle, refused global: one meaning here
        raise CheckpointError(
            f"{path}: cannot read the authors' checkpoint for arch {base_arch(arch)!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); truncated or not a "
            f"model.pth.tar?"
        ) from None


def _state_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(loaded)[:5] if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (the authors' format), found {found}")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _problems(state: dict[str, torch.Tensor], mapping: dict[str, tuple[str, tuple[int, ...]]]) -> list[str]:
    head = {bit_name(k) for k in HEAD_KEYS}
    unexpected = [k for k in state if k not in mapping]
    missing = [k for k in mapping if k not in state and k not in head]
    reshaped = [
        f"{k} {tuple(state[k].shape)} (expected {mapping[k][1]})"
        for k in mapping
        if k in state and k not in head and tuple(state[k].shape) != mapping[k][1]
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)):
        if keys:
            problems.append(f"{len(keys)} {what}, first: {', '.join(keys[:3])}")
    return problems


def read_paper_checkpoint(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """The authors' `model.pth.tar` as a timm state dict for `arch` (head.fc = their pre-training head).

    Every backbone tensor must be there with the shape `arch` has; otherwise CheckpointError naming the
    file, the arch and the first missing / unexpected / reshaped keys in the authors' naming.
    """
    path = Path(path)
    state = _state_of(_load_pickle(path, arch), path)
    mapping = key_map(base_arch(arch))
    problems = _problems(state, mapping)
    if problems:
        hint = " (timm names: already converted?)" if "stem.conv.weight" in state else ""
        raise CheckpointError(f"{path}: does not fit arch {base_arch(arch)!r}{hint}: " + "; ".join(problems))
    return {mapping[k][0]: v for k, v in state.items()}


def use_bit_numerics(model: torch.nn.Module) -> torch.nn.Module:
    """Weight standardisation with big_transfer's eps, so the authors' weights compute their features
    (with timm's 1e-8 a conv whose weight variance nears 1e-8 would be scaled differently)."""
    from timm.layers import StdConv2d

    for module in model.modules():
        if isinstance(module, StdConv2d):
            module.eps = BIT_STD_EPS
    return model


# ---- CLI --------------------------------------------------------------------------------------
def import_paper(path: str | Path, arch: str, out: str | Path) -> dict[str, Any]:
    """Convert one `model.pth.tar` to a timm state dict file (`torch.save` of name -> tensor); returns a report."""
    path, out = Path(path), Path(out)
    state = read_paper_checkpoint(path, arch)
    mapping = {timm_key: bit_key for bit_key, (timm_key, _) in key_map(base_arch(arch)).items()}
    state = {k: v.contiguous() for k, v in state.items()}
    with atomic_path(out, needed_bytes=tensor_bytes(state)) as temp:  # a full disk names `out`
        torch.save(state, temp)
    head = state.get("head.fc.weight")
    return {
        "file": str(path),
        "sha256": sha256_file(path),
        "arch": base_arch(arch),
        "out": str(out),
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
        "backbone_parameters": int(sum(v.numel() for k, v in state.items() if k not in HEAD_KEYS)),
        "head_classes": None if head is None else int(head.shape[0]),
        "loaded": [{"from": mapping[k], "to": k, "shape": list(v.shape)} for k, v in state.items()],
    }


__all__ = [
    "RELEASED",
    "KEY_RULES",
    "paper_model_name",
    "paper_weight_file",
    "bit_name",
    "key_map",
    "to_paper_state",
    "read_paper_checkpoint",
    "use_bit_numerics",
    "import_paper",
]
