"""Weight files: xrstudy's own checkpoints (weights + a JSON sidecar with the file's SHA-256, written
atomically through xrstudy.fileio) and any timm-format state-dict file; the error, names and unwrapping that
`xrstudy.training.paper_weights` (the authors' files) and `xrstudy.training.models` (inits) share.

    write_checkpoint(run_dir / "checkpoint.pt", model, {"arch": ..., "run_id": ...})
    read_checkpoint(path, arch=cfg.arch).state                 # checked against its sidecar and the arch
    checkpoint_path(cfg, "run:pretrain-0123456789ab")           # {out_dir}/runs/<run id>/checkpoint.pt
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xrstudy.config import RunConfig, base_arch, init_checkpoint_path
from xrstudy.fileio import (
    NotRegularFileError,
    atomic_path,
    atomic_write_json,
    entry_kind,
    require_regular_file,
    sha256_file,
)

CHECKPOINT_FORMAT = "xrstudy.checkpoint/1"


class CheckpointError(RuntimeError):
    """A weight file is missing, unreadable, altered, or for another architecture."""


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside DistributedDataParallel and / or torch.compile wrappers (either order)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A timm-format weight file: safetensors, or a torch pickle read with weights_only=True."""
    try:
        require_regular_file(path)  # both readers open by name: on a FIFO they would wait forever
    except NotRegularFileError as err:
        raise CheckpointError(f"{path}: not a regular file (a {err.kind}); expected a weight file") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such weight file") from None
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
    kind = entry_kind(path)  # stat only: a FIFO is named, never opened
    if kind != "file":
        raise CheckpointError(
            f"{path}: no such checkpoint file"
            if kind == "absent"
            else f"{path}: not a regular file (a {kind}); expected an xrstudy checkpoint"
        )
    if not sidecar_path.is_file():
        raise CheckpointError(
            f"{path}: no sidecar {sidecar_path.name} next to it; an xrstudy checkpoint is written by a "
            f"pre-training cell (for timm weight files use init='timm' and weights_dir)"
        )
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bytes that are not UTF-8, 100,000 levels
        raise CheckpointError(f"{sidecar_path}: not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None
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
    state = read_state_dict(path)
    return Checkpoint(path=path, state=state, sidecar=sidecar)


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    """The bytes of a state dict's tensors: about what torch.save writes."""
    return sum(v.numel() * v.element_size() for v in state.values())


def write_checkpoint(path: str | Path, model: nn.Module, sidecar: dict[str, Any]) -> dict[str, str]:
    """Atomically write weights + sidecar (xrstudy.fileio); returns {"path", "sha256"} for the result JSON.
    A full disk is a DiskFullError naming the file, also where torch reports it as a bare RuntimeError."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    with atomic_path(path, needed_bytes=tensor_bytes(state)) as temp:
        torch.save({"format": CHECKPOINT_FORMAT, "model": state}, temp)
        digest = sha256_file(temp)
    atomic_write_json(path.with_suffix(".json"), {"format": CHECKPOINT_FORMAT, **sidecar, "sha256": digest})
    return {"path": str(path), "sha256": digest}


def weights_dir(cfg: RunConfig) -> Path:
    """Where local weight files are looked for (timm tags, the authors' checkpoints): `cfg.weights_dir`,
    else `$XRSTUDY_WEIGHTS`, else `weights`."""
    return Path(cfg.weights_dir or os.environ.get("XRSTUDY_WEIGHTS", "weights"))


checkpoint_path = init_checkpoint_path  # the file `init` names (xrstudy.config: the sweep's checks use it too)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "Checkpoint",
    "base_arch",
    "unwrap",
    "tensor_bytes",
    "read_state_dict",
    "read_checkpoint",
    "write_checkpoint",
    "checkpoint_path",
    "weights_dir",
]
