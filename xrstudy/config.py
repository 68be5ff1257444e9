"""One frozen `RunConfig` describes one cell of the study.

The same names are used everywhere: sweep YAML keys, the papermill `parameters` cell of
`notebooks/10_pretrain.ipynb` and `notebooks/20_transfer.ipynb`, the CLI, and the `config`
object written into every result JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from xrstudy.fileio import NotRegularFileError, atomic_write_text, read_regular_file
from xrstudy.yamlfiles import YamlError, load_yaml_text, shorten

# The allowed values of every choice, defined once: RunConfig's annotations, the CLI's `choices`
# and the modules that act on them (labels, merge, splits, fewshot, models, learner) all read these.
# This module imports nothing heavy, so `xrstudy --help` can build its parser from it.
Kind = Literal["pretrain", "transfer"]
LabelSet = Literal["intersection", "union"]
Uncertain = Literal["ignore", "ones", "zeros"]
SplitMode = Literal["official", "patient", "paper"]
LabelMode = Literal["terms", "paper"]  # PadChest: exact term vocabulary | the authors' 27 substring pathologies
ShotsMode = Literal["exact", "paper"]  # exactly k per class | the authors' k-shot sets (fewer when a class is short)
Sampler = Literal["shuffle", "oversample"]  # training order: plain shuffle | class-balanced, with replacement
Head = Literal["linear", "concat"]  # xrstudy.training.models.HEADS
HeadInit = Literal["default", "zero"]  # fresh head: torch's default init (the authors') | zero (BiT)
WeightInit = Literal["torch", "timm"]  # a network built from scratch: PyTorch's default init (the authors') | timm's
# How a step's images are read and weighed: uniform (every image of a step weighs the same, X-rays one grey
# channel) | paper (the authors' per-GPU / micro-batch groups and their readers' channels; docs/PROTOCOL.md)
LoaderMode = Literal["uniform", "paper"]
TrainMode = Literal["finetune", "probe"]  # transfer: fine-tune the whole network | linear probe on frozen features
Precision = Literal["auto", "fp32", "bf16", "fp16"]
View = Literal["PA", "AP", "AP_SUPINE", "LATERAL", "COSTAL", "OTHER"]

KINDS: tuple[str, ...] = get_args(Kind)
LABEL_SETS: tuple[str, ...] = get_args(LabelSet)
UNCERTAIN_POLICIES: tuple[str, ...] = get_args(Uncertain)
SPLIT_MODES: tuple[str, ...] = get_args(SplitMode)
LABEL_MODES: tuple[str, ...] = get_args(LabelMode)
SHOTS_MODES: tuple[str, ...] = get_args(ShotsMode)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
HEADS: tuple[str, ...] = get_args(Head)
HEAD_INITS: tuple[str, ...] = get_args(HeadInit)
WEIGHT_INITS: tuple[str, ...] = get_args(WeightInit)
LOADER_MODES: tuple[str, ...] = get_args(LoaderMode)
TRAIN_MODES: tuple[str, ...] = get_args(TrainMode)
PRECISIONS: tuple[str, ...] = get_args(Precision)
VIEWS: tuple[str, ...] = get_args(View)

# Fields that do not change what a run computes: where files go, how many loader workers,
# whether the graph is compiled. Everything else feeds `run_id`.
EXECUTION_FIELDS = frozenset(
    {"name", "roots", "out_dir", "cache_dir", "weights_dir", "workers", "compile", "device", "micro_batch", "log_every"}
)
# Fields added after the first results were stored. Each enters `run_id` only at a value that computes
# something else than cells computed before the field existed, so a stored result keeps its run id
# exactly where it still holds (timm's init was the only init; every transfer was a fine-tune).
LEGACY_VALUES: dict[str, Any] = {"weight_init": "timm", "train_mode": "finetune", "loader_mode": "uniform"}


class ConfigError(ValueError):
    """A RunConfig value or file is not what the study expects."""


@dataclass(frozen=True)
class RunConfig:
    """A study cell: a pre-training run or a transfer run (one init, target, shot count, seed)."""

    name: str = "cell"
    kind: Kind = "transfer"

    # Data. Sources and targets are registry names (xrstudy.data.sources.SOURCES).
    sources: tuple[str, ...] = ()  # pretrain: e.g. ("chexpert", "mimic", "nih", "padchest")
    roots: tuple[str, ...] = ()  # "name=DIR" for every source / target read by this cell
    labels: LabelSet = "intersection"  # multi-source label set
    views: tuple[View, ...] = ("PA", "AP")
    uncertain: Uncertain = "ignore"  # CheXpert/MIMIC -1: ignore (NaN, the paper's) | ones | zeros
    # the authors' label rules (PadChest: 27 pathologies by substring) | terms (exact terms)
    label_mode: LabelMode = "paper"
    split_mode: SplitMode = "official"  # official | patient | paper (the authors' splits, e.g. PadChest 90/10, seed 42)
    data_fraction: float = 1.0  # nested patient-grouped pre-training subset (data-scale curves)
    metadata_only: bool = False  # read label files only (exploration, counting); no training
    target: str = ""  # transfer: target name, e.g. "cifar10", "padchest-cl"
    shots: int = 0  # transfer: images per class; 0 = full training set
    # exact k per class | paper (the authors' sampler: their sets, short classes allowed)
    shots_mode: ShotsMode = "exact"
    # uniform: a step's loss is the mean over its whole global batch, X-rays are read as one grey channel |
    # paper: the authors' groups (pre-training: the masked mean of each 16 images, averaged; transfers: their
    # micro-batches of 128 / batch_split images, partial ones included, MixUp within one) and, for the targets
    # they read with torchvision's default loader (COVIDx, Tuberculosis), the channels the file holds
    loader_mode: LoaderMode = "uniform"
    # training order: shuffle | oversample (class-balanced, the authors' full-shot COVIDx/Flowers)
    sampler: Sampler = "shuffle"

    # Model and initialisation.
    arch: str = "resnetv2_50x1_bit"  # any timm name; BiT ResNet-v2 in the paper
    init: str = "scratch"  # scratch | timm (arch tag, local file) | paper (authors') | run:<run_id> | path.pt
    init_label: str = ""  # how figures name the init, e.g. "chexpert_mimic"; derived when empty
    head: Head = "linear"  # transfer head: linear (1x1 conv / linear on pooled features) | concat (fastai's)
    head_init: HeadInit = "default"  # fresh head weights: default (torch's init, the authors') | zero (BiT)
    # Weights of a network built from scratch (init: scratch): torch = PyTorch's default init, as the
    # authors' model (their weight-standardisation eps too); timm = timm's init. Weights loaded from a
    # file leave it nothing to act on: it is then left out of run_id (see `run_id`).
    weight_init: WeightInit = "torch"
    train_mode: TrainMode = "finetune"  # transfer: finetune (the whole network) | probe (frozen backbone + logistic)

    # Recipe (0 = the paper's default for this kind; see xrstudy.training.recipes).
    seed: int = 0
    image_size: int = 0  # training crop; 0 = the recipe's (pretrain 224; transfer BiT-HyperRule 128 / 480)
    epochs: int = 0  # pretrain: 0 = 90
    steps: int = 0  # transfer: 0 = BiT-HyperRule
    batch_size: int = 128  # the global batch (split over processes)
    lr: float = 0.0
    mixup: float = -1.0  # -1 = BiT-HyperRule decides

    # Execution: how, not what.
    precision: Precision = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    device: str = "auto"
    workers: int = 0
    micro_batch: int = 0  # most images per device per forward pass; > 0 accumulates gradients to the global batch
    log_every: int = 0  # training history every N steps; 0 = about 200 points (every step when 200 or fewer)
    out_dir: str = "xrstudy-out"
    cache_dir: str = ""
    weights_dir: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # one check per field, from its annotation and the tables below
            object.__setattr__(self, f.name, _FIELD_CHECKS[f.name](getattr(self, f.name)))
        self._check_kind()

    def _check_kind(self) -> None:
        """Rules between fields: what each kind needs, and no ignored value that would change `run_id`."""
        if self.kind == "pretrain" and not self.sources:
            raise ConfigError("RunConfig.kind = 'pretrain' needs at least one entry in `sources`")
        if self.kind == "transfer" and not self.target:
            raise ConfigError("RunConfig.kind = 'transfer' needs a `target`")
        # A value a kind ignores would still be hashed into run_id: the same computation stored as two
        # runs, one seed counted twice in the figures. So it is refused, not ignored.
        for name, kind in ONLY_FOR_KIND.items():
            value = getattr(self, name)
            if kind != self.kind and value != _DEFAULTS[name]:
                raise ConfigError(
                    f"RunConfig.{name} = {_shown(value)} on a {self.kind} cell; {name} only acts on "
                    f"{kind} cells (leave it at its default {_shown(_DEFAULTS[name])})"
                )
        if self.train_mode == "probe":  # a probe trains no network: the fine-tuning recipe's fields do not act
            for name in FINETUNE_ONLY:
                value = getattr(self, name)
                if value != _DEFAULTS[name]:
                    raise ConfigError(
                        f"RunConfig.{name} = {_shown(value)} on a probe cell (train_mode: probe); {name} only acts "
                        f"when fine-tuning (leave it at its default {_shown(_DEFAULTS[name])})"
                    )
        if self.kind == "pretrain" and self.epochs and self.steps:
            raise ConfigError(
                f"RunConfig.epochs = {self.epochs} and RunConfig.steps = {self.steps} on a pretrain "
                f"cell; steps overrides epochs, so set one of them"
            )
        seen: set[str] = set()
        for entry in self.roots:
            name, _ = _root_parts(entry, "RunConfig.roots")
            if name in seen:
                raise ConfigError(
                    f"RunConfig.roots names {_shown(name)} twice ({_shown(self.roots)}); expected one DIR per name"
                )
            seen.add(name)
        parent_run_id(self.init)  # a malformed `run:<id>` fails here, not when the checkpoint is looked up
        if self.init.startswith(PRETRAIN_REFERENCE):
            raise ConfigError(
                f"RunConfig.init = {_shown(self.init)} names a pre-training cell of a sweep file; only "
                f"`xrstudy sweep` resolves it (to run:<run id>); in a single config use run:<run id>"
            )

    # ---- identity -------------------------------------------------------------------------
    @functools.cached_property
    def run_id(self) -> str:
        """Stable id from the fields that change the result: `{kind}-{12 hex}` (computed once: the
        object is frozen; `replace` makes a new one)."""
        keyed = {
            k: v
            for k, v in self.to_dict().items()
            if k not in EXECUTION_FIELDS and not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])
        }
        if self.init != "scratch":  # weights come from a file: the scratch init does not act
            keyed.pop("weight_init", None)
        digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
        return f"{self.kind}-{digest[:12]}"

    @property
    def root_map(self) -> dict[str, Path]:
        return dict(parse_root(entry, origin="RunConfig.roots") for entry in self.roots)

    def root_of(self, name: str) -> Path:
        try:
            return self.root_map[name]
        except KeyError:
            raise ConfigError(
                f"no root given for {name!r}; add 'roots: [{name}=DIR]' (have: {list(self.root_map)})"
            ) from None

    @property
    def shot_label(self) -> str:
        return shot_label(self.shots)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / "runs" / self.run_id

    @property
    def results_dir(self) -> Path:
        return Path(self.out_dir) / "results"

    # ---- conversions ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples): the papermill parameters and the result's `config`."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    to_parameters = to_dict

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "config") -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known, key=repr)  # a dict from code may mix key types
        if unknown:
            raise ConfigError(f"{origin}: unknown RunConfig field(s) {_shown(unknown)}; known: {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ConfigError) as err:
            raise ConfigError(f"{origin}: {err}") from None

    @classmethod
    def from_parameters(cls, namespace: dict[str, Any]) -> RunConfig:
        """Build from a notebook's namespace after papermill injected its parameters."""
        return cls.from_dict(
            {name: namespace[name] for name in FIELD_NAMES if name in namespace}, origin="notebook parameters"
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        data = read_yaml(path, "config file", "a YAML file of RunConfig fields")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of RunConfig fields, got {type(data).__name__}")
        return cls.from_dict(data, origin=str(path))

    def to_yaml(self, path: str | Path) -> Path:
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---- validation: every field checked once, by its annotation + the two tables below ------------
# Ranges beyond the type, with what is expected (the message names the field and the value).
# A field added without an entry here is still checked against its annotation.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "shots": (lambda v: v >= 0, "an integer >= 0 (0 = the full training set)"),
    "data_fraction": (lambda v: 0.0 < v <= 1.0, "a number with 0 < f <= 1"),
    "seed": (lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"),
    "image_size": (lambda v: v >= 0, "an integer >= 0 (0 = the recipe's)"),
    "epochs": (lambda v: v >= 0, "an integer >= 0 (0 = the recipe's)"),
    "steps": (lambda v: v >= 0, "an integer >= 0 (0 = the recipe's)"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "lr": (lambda v: v >= 0.0, "a number >= 0 (0 = the recipe's)"),
    "mixup": (lambda v: v == -1.0 or v >= 0.0, "-1 (BiT-HyperRule decides) or a MixUp alpha >= 0"),
    "workers": (lambda v: v >= 0, "an integer >= 0"),
    "micro_batch": (lambda v: v >= 0, "an integer >= 0 (0 = the whole per-device batch at once)"),
    "log_every": (lambda v: v >= 0, "an integer >= 0 (0 = about 200 points per run)"),
    "arch": (bool, "a non-empty string: a timm model name"),
    "init": (bool, "a non-empty string: scratch, timm, paper, run:<run id> or a checkpoint path"),
    "device": (bool, "a non-empty string: auto, cpu, cuda or cuda:N"),
    "out_dir": (bool, "a non-empty string: a folder"),
}
# Fields that act on one kind of cell only (xrstudy.data.studydata.prepare, xrstudy.training.recipes.recipe_for,
# xrstudy.training.models.create_model). On the other kind they must keep their default: see _check_kind.
ONLY_FOR_KIND: dict[str, str] = {
    "sources": "pretrain",
    "views": "pretrain",
    "labels": "pretrain",
    "data_fraction": "pretrain",
    "epochs": "pretrain",
    "target": "transfer",
    "shots": "transfer",
    "shots_mode": "transfer",
    "sampler": "transfer",
    "head": "transfer",
    "head_init": "transfer",
    "train_mode": "transfer",
}
# Fields of the fine-tuning recipe. A linear probe (train_mode: probe, xrstudy.training.probe) extracts frozen fp32
# features and fits a logistic regression: on a probe cell these keep their defaults (see _check_kind).
FINETUNE_ONLY: tuple[str, ...] = ("steps", "lr", "mixup", "sampler", "head", "head_init", "precision")
PRETRAIN_REFERENCE = "pretrain:"  # a sweep file's `init: pretrain:<cell name>`, resolved by xrstudy.sweeps.sweepfile
RUN_REFERENCE = "run:"  # `init: run:<run id>`, the checkpoint of an earlier cell in the same out_dir
_RUN_ID = re.compile(rf"(?:{'|'.join(KINDS)})-[0-9a-f]{{12}}")


def parse_root(entry: str, *, origin: str = "root") -> tuple[str, Path]:
    """`"name=DIR"` -> (name, Path(DIR)): the one parser of root entries (RunConfig.roots, `--source`)."""
    name, folder = _root_parts(entry, origin)
    return name, Path(folder)


def _root_parts(entry: str, origin: str) -> tuple[str, str]:
    """(name, DIR) of `"name=DIR"`, both stripped and non-empty (RunConfig's checks need no Path)."""
    name, sep, folder = str(entry).partition("=")
    name, folder = name.strip(), folder.strip()
    if not (sep and name and folder):
        raise ConfigError(
            f"{origin} entry {_shown(entry)}; expected 'name=DIR', e.g. 'chexpert=/data/CheXpert-v1.0-small'"
        )
    return name, folder


def read_yaml(path: str | Path, what: str, expected: str) -> Any:
    """The YAML document in the file `path` (a RunConfig, a sweep). A FIFO is refused, not waited on; a
    missing or unreadable file, a byte that is not UTF-8 (with its line) or bad YAML is a ConfigError
    naming the file; `what` ("config file") and `expected` ("a YAML file of ...") word it. Repeated keys,
    keys that are not strings, deep nesting and large aliases are refused with the line
    (`xrstudy.yamlfiles`)."""
    path = Path(path)
    try:
        return load_yaml_text(read_regular_file(path).decode("utf-8"), str(path))
    except YamlError as err:
        raise ConfigError(str(err)) from None
    except NotRegularFileError as err:
        raise ConfigError(f"{path}: not a regular file (a {err.kind}); expected {expected}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what} ({err.strerror})") from None
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: byte {err.object[err.start]:#04x} is not UTF-8; expected a UTF-8 YAML file"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None


def shot_label(shots: int) -> str:
    """The paper's name of a shot count: 0 -> `full_shot`, 10 -> `10_shot` (result CSVs, tidy table)."""
    return "full_shot" if shots == 0 else f"{shots}_shot"


def base_arch(arch: str) -> str:
    """`resnetv2_50x1_bit.goog_in21k` -> `resnetv2_50x1_bit`: the network, without the tag that names weights."""
    return arch.split(".", 1)[0]


def parent_run_id(init: str) -> str | None:
    """The run id of `init: run:<run id>`; None for every other init. The one parser of that reference."""
    if not str(init).startswith(RUN_REFERENCE):
        return None
    run_id = init[len(RUN_REFERENCE) :]
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"RunConfig.init = {_shown(init)}; expected run:<run id>, a run id being "
            f"'{{kind}}-{{12 hex digits}}' such as run:pretrain-0123456789ab"
        )
    return run_id


def init_checkpoint_path(cfg: RunConfig, init: str) -> Path:
    """The checkpoint file `init` names: `run:<run id>` -> {out_dir}/runs/<run id>/checkpoint.pt, else the path
    (torch-free, so that the sweep's checks before a run find the same file training loads)."""
    parent = parent_run_id(init)
    return Path(init) if parent is None else Path(cfg.out_dir) / "runs" / parent / "checkpoint.pt"


def _shown(value: Any) -> str:
    """A value as messages show it: its repr, cut to a readable length (a YAML alias can make it huge)."""
    return shorten(list(value) if isinstance(value, tuple) else value)


def _type_check(hint: Any) -> tuple[Callable[[Any], Any], str]:
    """(convert or raise TypeError, what is expected) for one annotation. Strict: YAML's `'10'` is not 10,
    `true` is not 1, and a float field takes whole numbers as floats, so `lr: 1` and `lr: 1.0` share a run id."""
    origin = get_origin(hint)

    def fail(value: Any) -> Any:
        raise TypeError(value)

    if hint is bool:
        return (lambda v: v if isinstance(v, bool) else fail(v)), "true or false"
    if hint is int:  # numbers.Integral: numpy integers from a notebook loop are integers too
        return (
            lambda v: int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else fail(v)
        ), "an integer"
    if hint is float:
        return (
            lambda v: (
                float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) else fail(v)
            )
        ), "a finite number"
    if hint is str:
        return (lambda v: v if isinstance(v, str) else fail(v)), "a string"
    if origin is Literal:
        allowed = get_args(hint)
        return (lambda v: v if isinstance(v, str) and v in allowed else fail(v)), f"one of {list(allowed)}"
    if origin is tuple:
        item, what = _type_check(get_args(hint)[0])

        def items(value: Any) -> tuple:
            if isinstance(value, str):  # "PA,AP", as the CLI and papermill's -p may hand it over
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                fail(value)
            return tuple(item(v) for v in value)

        return items, f"a list whose entries are each {what}"
    raise TypeError(f"RunConfig has a field of type {hint!r}; add it to xrstudy.config._type_check")


def _field_check(name: str, hint: Any) -> Callable[[Any], Any]:
    convert, what = _type_check(hint)
    in_range, expected = RANGES.get(name, (None, what))

    def check(value: Any) -> Any:
        try:
            converted = convert(value)
        except (TypeError, ValueError):
            raise ConfigError(f"RunConfig.{name} = {_shown(value)}; expected {expected}") from None
        if in_range is not None and not in_range(converted):
            raise ConfigError(f"RunConfig.{name} = {_shown(value)}; expected {expected}")
        return converted

    return check


_HINTS = get_type_hints(RunConfig)
_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    f.name: _field_check(f.name, _HINTS[f.name]) for f in fields(RunConfig)
}
_DEFAULTS: dict[str, Any] = {f.name: _FIELD_CHECKS[f.name](f.default) for f in fields(RunConfig)}
_unknown = (set(RANGES) | set(ONLY_FOR_KIND) | set(FINETUNE_ONLY)) - set(_FIELD_CHECKS)
assert not _unknown, f"xrstudy.config tables name fields RunConfig does not have: {sorted(_unknown)}"
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))
__all__ = [
    "RunConfig",
    "ConfigError",
    "FIELD_NAMES",
    "EXECUTION_FIELDS",
    "KINDS",
    "LABEL_SETS",
    "UNCERTAIN_POLICIES",
    "SPLIT_MODES",
    "LABEL_MODES",
    "SHOTS_MODES",
    "SAMPLERS",
    "HEADS",
    "HEAD_INITS",
    "WEIGHT_INITS",
    "LOADER_MODES",
    "TRAIN_MODES",
    "LEGACY_VALUES",
    "PRECISIONS",
    "VIEWS",
    "RANGES",
    "ONLY_FOR_KIND",
    "FINETUNE_ONLY",
    "parse_root",
    "parent_run_id",
    "base_arch",
    "read_yaml",
    "shot_label",
]
