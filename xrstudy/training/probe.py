"""The linear probe of a transfer cell (`train_mode: probe`): the backbone frozen at its init, its features
extracted once and cached on disk, then an L2-regularised logistic regression on the CPU.

    key      = FeatureKey(image cache, backbone_digest(model), eval view)   what the features are a function of
    features = cached_features(root, key, images, extract)                  every image of the dataset, fp32
    fit      = fit_probe(features[train rows], targets, multilabel, ...)    C chosen on training images only
    probs    = fit.predict_proba(features[test rows])

Features are kept per row of the dataset's image cache (every split, before any k-shot selection), so every
seed and shot count of one (init, target, preprocessing) reads the same file: a k-shot cell takes its rows from
it. The key hashes the backbone's weights themselves (every tensor, and the eps of every normalising layer),
so an init is named by what it computes, whatever it came from (a timm file, the authors' checkpoint, a
pre-training run, a seeded scratch network: a different seed, other features); plus the evaluation view (size,
mean, std, fp32) and the image cache's key (its sorted paths, cache size and mode, i.e. the images and their
preprocessing). The split file does not enter it: a feature belongs to an image, whichever split holds it.
Extraction goes through the evaluation loader over the memory-mapped cache, on the GPU when there is one, in
fp32 (no autocast); it is written in parts, each atomically, so a killed cell resumes where it stopped, and the
finished file is published atomically under a lock (two seeds started together extract once).

The regularisation strength is chosen on the training images only, never on test (CLIP_benchmark's issue #125
is the leak not to repeat): a seeded, per-class stratified `valid_fraction` of the training images is held out,
the C of `c_grid` with the lowest held-out log-loss is kept (ties: the stronger regularisation), and the
regression is refit on every training image. When a class has a single training image (1-shot sets, or a short
class of the authors' k-shot sets), no image can be held out without removing its class: C is then
`default_c` (scikit-learn's 1.0), and the result says so. Features are standardised with the fitting images'
mean and SD. Single-label targets: one multinomial regression. Multi-label targets: one regression per class
over the images where it is known (NaN = unknown, as the masked loss), C chosen by the mean held-out BCE.

What the probe reports as it goes (extraction progress, the held-out loss of each C) goes to a `ProbeLog`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from xrstudy.fileio import atomic_path, atomic_write_json, check_free_space, file_lock
from xrstudy.pixels.loaders import EvalLoader, Split
from xrstudy.training.callbacks import eval_view
from xrstudy.training.recipes import ProbeRecipe

FEATURES_FORMAT = 1  # bump when the stored features would change (extraction, layout)
PART_IMAGES = 2048  # images per part file of a feature build (what an interrupted build loses at most)
_VALID_STREAM = 0x70726F62  # "prob": the held-out draw's stream, apart from every other use of the seed


# ---- what the probe says as it goes -----------------------------------------------------------------
class ProbeLog(Protocol):
    """Where a probe reports progress: the run's history (`xrstudy.training.monitor.ProbeHistory`: history.csv
    and TensorBoard, one row per regression fit, as a fine-tuned run's rows per step)."""

    def extracted(self, images: int, total: int) -> None: ...

    def candidate(self, c: float, valid_loss: float, train_loss: float, images: int) -> None: ...

    def chosen(self, c: float, how: str, train_loss: float, images: int) -> None: ...


class SilentLog:
    def extracted(self, images: int, total: int) -> None:
        pass

    def candidate(self, c: float, valid_loss: float, train_loss: float, images: int) -> None:
        pass

    def chosen(self, c: float, how: str, train_loss: float, images: int) -> None:
        pass


# ---- the backbone -----------------------------------------------------------------------------------
def backbone(model: nn.Module) -> nn.Module:
    """The network without its classifier (timm's `reset_classifier(0)`: the forward pass returns the pooled
    features), frozen: evaluation mode, no gradients. Modifies and returns `model`."""
    if not hasattr(model, "reset_classifier"):
        raise ValueError(f"a probe needs a timm network with reset_classifier; got {type(model).__name__}")
    model.reset_classifier(0)
    model.eval()
    model.requires_grad_(False)
    return model


def backbone_digest(model: nn.Module) -> str:
    """SHA-256 of what the network computes with: every tensor of its state dict (name, dtype, shape, bytes)
    and the eps of every layer that has one (weight standardisation, GroupNorm)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    eps = [(name, float(m.eps)) for name, m in model.named_modules() if isinstance(getattr(m, "eps", None), float)]
    digest.update(json.dumps(sorted(eps)).encode())
    return digest.hexdigest()


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    images: Split,
    *,
    eval_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch: int,
    device: torch.device,
) -> np.ndarray:
    """fp32 features (N x D) of every row of `images`, in order, through the evaluation view, streamed from
    the memory-mapped cache. `model` is a frozen `backbone` already on `device`."""
    channels_last = device.type == "cuda"
    parts = []
    with torch.autocast(device.type, enabled=False):  # fp32 whatever the caller's context
        for raw, _draws, _targets in EvalLoader(images, batch, device):
            out = model(eval_view(raw, eval_size, mean, std, channels_last))
            parts.append(out.float().cpu().numpy())
    if not parts:
        return np.zeros((0, int(getattr(model, "num_features", 0))), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


# ---- the feature cache ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureKey:
    """What a feature file is a function of; `digest` names it on disk."""

    images: str  # ImageCache.content_key: sorted paths, cache size and mode, and the pixels as built
    weights: str  # backbone_digest of the frozen network
    arch: str
    eval_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    precision: str = "fp32"
    format: int = FEATURES_FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Features:
    """A finished feature file: `values` N x D float32 (memory-mapped), row i = image-cache row i."""

    values: np.ndarray
    key: FeatureKey
    folder: Path
    extracted: int  # images this call ran through the network (0: every feature came from disk)
    reused: int  # images whose features were on disk already (a finished file, or parts of a killed build)


def _finished(folder: Path, key: FeatureKey, count: int) -> np.ndarray | None:
    """The features of a finished file (meta.json names the key and is written last), else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key.digest:
            return None
        values = np.load(folder / "features.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    if values.dtype != np.float32 or values.ndim != 2 or len(values) != count:
        return None
    return values


def _read_part(path: Path, count: int) -> np.ndarray | None:
    try:
        part = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    return part if part.dtype == np.float32 and part.ndim == 2 and len(part) == count else None


def _save_npy(path: Path, values: np.ndarray) -> None:
    with atomic_path(path, needed_bytes=values.nbytes) as temp, open(temp, "wb") as handle:
        np.save(handle, values)  # a handle: np.save would add ".npy" to the temporary name


def cached_features(
    root: str | Path,
    key: FeatureKey,
    images: Split,
    extract: Callable[[Split], np.ndarray],
    *,
    log: ProbeLog | None = None,
    part_images: int | None = None,
) -> Features:
    """The features of every row of `images` under `root/{digest[:16]}/`: read when finished, else extracted
    part by part (`extract(sub_split)`, parts already on disk reused; `part_images` per part, default
    PART_IMAGES) and published atomically under a lock."""
    log = log or SilentLog()
    part_images = part_images or PART_IMAGES
    root, count = Path(root), len(images)
    folder = root / key.digest[:16]
    values = _finished(folder, key, count)
    if values is not None:
        return Features(values, key, folder, extracted=0, reused=count)
    with file_lock(root / f"{key.digest[:16]}.lock"):
        values = _finished(folder, key, count)  # finished by another process while this one waited
        if values is not None:
            return Features(values, key, folder, extracted=0, reused=count)
        parts_dir = folder / "parts"
        pieces, extracted, reused = [], 0, 0
        for index, start in enumerate(range(0, count, part_images)):
            stop = min(count, start + part_images)
            path = parts_dir / f"{index:05d}.npy"
            piece = _read_part(path, stop - start)
            if piece is None:
                piece = extract(
                    Split(images.images, images.rows[start:stop], images.targets[start:stop], check=images.check)
                )
                if not extracted:  # the first part this call writes: the parts and the final copy must fit
                    check_free_space(root, 2 * count * piece.shape[1] * 4, f"the probe features {folder}")
                _save_npy(path, piece)
                extracted += stop - start
            else:
                reused += stop - start
            pieces.append(piece)
            log.extracted(stop, count)
        total = np.concatenate(pieces) if pieces else np.zeros((0, 0), np.float32)
        _save_npy(folder / "features.npy", total)
        atomic_write_json(folder / "meta.json", {"key": key.digest, **asdict(key), "images_n": count})
        shutil.rmtree(parts_dir, ignore_errors=True)
    values = _finished(folder, key, count)
    if values is None:
        raise OSError(f"{folder}: the feature file just written does not read back")
    return Features(values, key, folder, extracted=extracted, reused=reused)


# ---- the regression ---------------------------------------------------------------------------------
class _Standardise:
    """Features minus the fitting images' mean, over their SD (a constant feature keeps SD 1); statistics in
    float64, features kept float32 (scikit-learn's lbfgs fits float32 as it is: half the memory of a copy)."""

    def __init__(self, x: np.ndarray):
        sd = x.std(axis=0, dtype=np.float64)
        self.mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.sd = np.where(sd > 1e-12, sd, 1.0).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.sd


class _Classifier:
    """One scikit-learn LogisticRegression (L2, lbfgs; multinomial over the classes it saw) whose
    probabilities are spread over `num_classes` columns; a single class seen gives that class probability 1."""

    def __init__(self, num_classes: int, max_iter: int):
        from sklearn.linear_model import LogisticRegression

        self.num_classes = num_classes
        self.model = LogisticRegression(max_iter=max_iter, warm_start=True)
        self.only: int | None = None
        self.not_converged = 0

    def fit(self, z: np.ndarray, y: np.ndarray, c: float) -> _Classifier:
        from sklearn.exceptions import ConvergenceWarning

        seen = np.unique(y)
        self.only = int(seen[0]) if len(seen) == 1 else None
        if self.only is None:
            self.model.set_params(C=c)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                self.model.fit(z, y)
            self.not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        return self

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        probs = np.zeros((len(z), self.num_classes), np.float64)
        if self.only is not None:
            probs[:, self.only] = 1.0
        else:
            probs[:, self.model.classes_.astype(int)] = self.model.predict_proba(z)
        return probs


class _PerClass:
    """Multi-label: one binary regression per class over the rows where that class is known (a class with a
    single label value there predicts that value; a class never known, 0.5)."""

    def __init__(self, num_classes: int, max_iter: int):
        self.models = [_Classifier(2, max_iter) for _ in range(num_classes)]
        self.known = [False] * num_classes

    @property
    def not_converged(self) -> int:
        return sum(m.not_converged for m in self.models)

    def fit(self, z: np.ndarray, y: np.ndarray, c: float) -> _PerClass:
        for k, model in enumerate(self.models):
            known = ~np.isnan(y[:, k])
            self.known[k] = bool(known.any())
            if self.known[k]:
                model.fit(z[known], y[known, k].astype(np.int64), c)
        return self

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        columns = [m.predict_proba(z)[:, 1] if ok else np.full(len(z), 0.5) for m, ok in zip(self.models, self.known)]
        return np.stack(columns, 1)


def _log_loss(probs: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    """Mean held-out log-loss: cross-entropy of the true class, or BCE over the known (image, class) pairs."""
    probs = np.clip(probs, 1e-12, 1 - 1e-12)
    if multilabel:
        known = ~np.isnan(y)
        truth = np.nan_to_num(y)
        losses = -(truth * np.log(probs) + (1 - truth) * np.log(1 - probs))
        return float(losses[known].mean()) if known.any() else float("nan")
    return float(-np.log(probs[np.arange(len(y)), y.astype(np.int64)]).mean())


def held_out(y: np.ndarray, multilabel: bool, fraction: float, seed: int) -> np.ndarray | None:
    """Rows of the training set held out to choose C (a bool mask), or None when none can be: single-label,
    per class max(1, round(fraction x n)) of its n images when every class has two or more; multi-label,
    a `fraction` of the images when five or more."""
    rng = np.random.default_rng([seed, _VALID_STREAM])
    mask = np.zeros(len(y), bool)
    if multilabel:
        if len(y) < 5:
            return None
        mask[rng.permutation(len(y))[: max(1, round(fraction * len(y)))]] = True
        return mask
    classes, counts = np.unique(y, return_counts=True)
    if not len(classes) or counts.min() < 2:
        return None
    for label, count in zip(classes, counts):
        rows = np.flatnonzero(y == label)
        mask[rng.permutation(rows)[: min(count - 1, max(1, round(fraction * count)))]] = True
    return mask


@dataclass
class ProbeFit:
    """The chosen regression: C, how it was chosen, the held-out loss of every C tried."""

    c: float
    chosen_by: str
    valid_loss: dict[float, float]
    held_out: int  # training images held out to choose C (0: the default C)
    standardise: _Standardise
    model: Any
    not_converged: int = 0

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.standardise(x))


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    multilabel: bool,
    num_classes: int,
    recipe: ProbeRecipe,
    seed: int,
    log: ProbeLog | None = None,
) -> ProbeFit:
    """An L2 logistic regression on training features `x` (N x D) and targets `y` (class indices, or N x K
    with NaN unknown), its C chosen on a held-out part of these images only (module doc)."""
    log = log or SilentLog()
    kind = _PerClass if multilabel else _Classifier

    def make() -> Any:
        return kind(num_classes, recipe.max_iter)

    mask = held_out(y, multilabel, recipe.valid_fraction, seed)
    losses: dict[float, float] = {}
    not_converged = 0
    if mask is None:
        c, how = recipe.default_c, "default: a class has a single training image, none can be held out"
    else:
        standardise = _Standardise(x[~mask])
        fit_z, valid_z = standardise(x[~mask]), standardise(x[mask])
        model = make()
        for c in sorted(recipe.c_grid):  # weak to strong fits, each warm-started from the last
            model.fit(fit_z, y[~mask], c)
            losses[c] = _log_loss(model.predict_proba(valid_z), y[mask], multilabel)
            fitted = _log_loss(model.predict_proba(fit_z), y[~mask], multilabel)
            log.candidate(c, losses[c], fitted, int((~mask).sum()))
        not_converged += model.not_converged
        finite = {c: v for c, v in losses.items() if math.isfinite(v)}
        c = min(finite, key=lambda k: (finite[k], k)) if finite else recipe.default_c
        how = f"held-out log-loss on {int(mask.sum())} of {len(y)} training images"
    standardise = _Standardise(x)
    model = make().fit(standardise(x), y, c)
    log.chosen(c, how, _log_loss(model.predict_proba(standardise(x)), y, multilabel), len(y))
    return ProbeFit(
        c=c,
        chosen_by=how,
        valid_loss=losses,
        held_out=0 if mask is None else int(mask.sum()),
        standardise=standardise,
        model=model,
        not_converged=not_converged + model.not_converged,
    )


# ---- a probe cell -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeOutcome:
    """Probabilities and targets per split ("valid", "test"), and what the result records about the probe."""

    predictions: dict[str, tuple[np.ndarray, np.ndarray]]
    details: dict[str, Any]
    extract_s: float
    fit_s: float


def run_probe(
    model: nn.Module,
    everything: Split,
    image_cache_key: str,
    splits: dict[str, Split],
    *,
    arch: str,
    multilabel: bool,
    num_classes: int,
    recipe: ProbeRecipe,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    seed: int,
    feature_root: str | Path,
    log: ProbeLog | None = None,
) -> ProbeOutcome:
    """Freeze `model`, read or extract the features of every image-cache row (`everything`), fit the regression
    on the rows of `splits["train"]` and predict those of "valid" and "test"."""
    log = log or SilentLog()
    net = backbone(model)
    weights = backbone_digest(net)
    key = FeatureKey(image_cache_key, weights, arch, recipe.eval_size, tuple(mean), tuple(std))
    started = time.perf_counter()
    on_device = False

    def extract(part: Split) -> np.ndarray:
        nonlocal net, on_device
        if not on_device:  # the network goes to the device only when something must be extracted
            net = net.to(device)
            if device.type == "cuda":
                net = net.to(memory_format=torch.channels_last)
            on_device = True
        return extract_features(
            net,
            part,
            eval_size=recipe.eval_size,
            mean=tuple(mean),
            std=tuple(std),
            batch=recipe.feature_batch,
            device=device,
        )

    features = cached_features(feature_root, key, everything, extract, log=log)
    extract_s = time.perf_counter() - started
    after = backbone_digest(net)
    if after != weights:
        raise RuntimeError(f"the probe's backbone changed while extracting features ({weights[:12]} -> {after[:12]})")

    started = time.perf_counter()
    train = splits["train"]
    fit = fit_probe(
        np.asarray(features.values[train.rows]),
        train.targets.numpy(),
        multilabel=multilabel,
        num_classes=num_classes,
        recipe=recipe,
        seed=seed,
        log=log,
    )
    fit_s = time.perf_counter() - started
    predictions = {
        name: (fit.predict_proba(np.asarray(features.values[split.rows])).astype(np.float32), split.targets.numpy())
        for name, split in splits.items()
        if name != "train" and len(split)
    }
    details = {
        "C": fit.c,
        "C_chosen_by": fit.chosen_by,
        "valid_log_loss": {f"{c:g}": v for c, v in fit.valid_loss.items()},
        "held_out": fit.held_out,
        "not_converged": fit.not_converged,
        "feature_cache": key.digest,
        "feature_dir": str(features.folder),
        "features": {
            "images": int(len(features.values)),
            "dim": int(features.values.shape[1]),
            "extracted": features.extracted,
            "reused": features.reused,
        },
        "backbone_sha256": weights,
        "backbone_unchanged": after == weights,
        "eval_size": recipe.eval_size,
        "feature_batch": recipe.feature_batch,
    }
    return ProbeOutcome(predictions, details, extract_s, fit_s)


__all__ = [
    "FeatureKey",
    "Features",
    "ProbeFit",
    "ProbeOutcome",
    "ProbeLog",
    "backbone",
    "backbone_digest",
    "extract_features",
    "cached_features",
    "fit_probe",
    "held_out",
    "run_probe",
    "FEATURES_FORMAT",
    "PART_IMAGES",
]
