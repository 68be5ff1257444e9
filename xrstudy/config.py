"""One frozen `RunConfig` describes one cell of the study.

The same names are used everywhere: sweep YAML keys, the papermill `parameters` cell of
`notebooks/10_pretrain.ipynb` and `notebooks/20_transfer.ipynb`, the CLI, and the `config`
object written into every result JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

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
Head = Literal["linear", "concat"]  # xrstudy.models.HEADS
HeadInit = Literal["default", "zero"]  # fresh head: torch's default init (the authors') | zero (BiT)
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
PRECISIONS: tuple[str, ...] = get_args(Precision)
VIEWS: tuple[str, ...] = get_args(View)

# Fields that do not change what a run computes: where files go, how many loader workers,
# whether the graph is compiled. Everything else feeds `run_id`.
EXECUTION_FIELDS = frozenset(
    {"name", "roots", "out_dir", "cache_dir", "weights_dir", "workers", "compile", "device", "micro_batch"}
)


class ConfigError(ValueError):
    """A RunConfig value or file is not what the study expects."""


@dataclass(frozen=True)
class RunConfig:
    """A study cell: a pre-training run or a transfer run (one init, target, shot count, seed)."""

    name: str = "cell"
    kind: Kind = "transfer"

    # Data. Sources and targets are registry names (xrstudy.sources.SOURCES).
    sources: tuple[str, ...] = ()  # pretrain: e.g. ("chexpert", "mimic", "nih", "padchest")
    roots: tuple[str, ...] = ()  # "name=DIR" for every source / target read by this cell
    labels: LabelSet = "intersection"  # multi-source label set
    views: tuple[View, ...] = ("PA", "AP")
    uncertain: Uncertain = "ignore"  # CheXpert/MIMIC -1: ignore (NaN, the paper's) | ones | zeros
    label_mode: LabelMode = "terms"  # PadChest labels: exact terms | paper (27 pathologies, substrings + synonyms)
    split_mode: SplitMode = "official"  # official | patient | paper (the authors' splits, e.g. PadChest 90/10, seed 42)
    data_fraction: float = 1.0  # nested patient-grouped pre-training subset (data-scale curves)
    metadata_only: bool = False  # read label files only (exploration, counting); no training
    target: str = ""  # transfer: target name, e.g. "cifar10", "padchest-cl"
    shots: int = 0  # transfer: images per class; 0 = full training set
    shots_mode: ShotsMode = "exact"  # exact k per class | paper (the authors' sampler: their sets, short classes allowed)
    sampler: Sampler = "shuffle"  # training order: shuffle | oversample (class-balanced, the authors' full-shot COVIDx/Flowers)

    # Model and initialisation.
    arch: str = "resnetv2_50x1_bit"  # any timm name; BiT ResNet-v2 in the paper
    init: str = "scratch"  # scratch | timm (tag of `arch`, local file) | paper (the authors' checkpoint) | run:<run_id> | path.pt
    init_label: str = ""  # how figures name the init, e.g. "chexpert_mimic"; derived when empty
    head: Head = "linear"  # transfer head: linear (1x1 conv / linear on pooled features) | concat (fastai's)
    head_init: HeadInit = "default"  # fresh head weights: default (torch's init, the authors') | zero (BiT)

    # Recipe (0 = the paper's default for this kind; see xrstudy.hyper).
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
    out_dir: str = "xrstudy-out"
    cache_dir: str = ""
    weights_dir: str = ""

    def __post_init__(self) -> None:
        # YAML and papermill hand over lists; keep the frozen object hashable.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type.startswith("tuple") and not isinstance(value, tuple):
                if isinstance(value, str):
                    value = tuple(v for v in value.split(",") if v)
                object.__setattr__(self, f.name, tuple(value))
        self._check()

    def _check(self) -> None:
        for f in fields(self):  # every Literal-typed field holds one of its values
            allowed = _CHOICES.get(f.name)
            if allowed is None:
                continue
            values = getattr(self, f.name)
            for value in values if isinstance(values, tuple) else (values,):
                if value not in allowed:
                    raise ConfigError(f"RunConfig.{f.name} = {getattr(self, f.name)!r}; expected one of {allowed}")
        if self.shots < 0:
            raise ConfigError(f"RunConfig.shots = {self.shots}; expected 0 (full) or a positive count")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ConfigError(f"RunConfig.data_fraction = {self.data_fraction}; expected 0 < f <= 1")
        if self.kind == "pretrain" and not self.sources:
            raise ConfigError("RunConfig.kind = 'pretrain' needs at least one entry in `sources`")
        if self.kind == "transfer" and not self.target:
            raise ConfigError("RunConfig.kind = 'transfer' needs a `target`")
        for entry in self.roots:
            if "=" not in entry:
                raise ConfigError(f"RunConfig.roots entry {entry!r}; expected 'name=DIR'")

    # ---- identity -------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """Stable id from the fields that change the result: `{kind}-{12 hex}`."""
        keyed = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
        return f"{self.kind}-{digest[:12]}"

    @property
    def root_map(self) -> dict[str, Path]:
        return {name: Path(path) for name, path in (e.split("=", 1) for e in self.roots)}

    def root_of(self, name: str) -> Path:
        try:
            return self.root_map[name]
        except KeyError:
            raise ConfigError(
                f"no root given for {name!r}; add 'roots: [{name}=DIR]' (have: {list(self.root_map)})"
            ) from None

    @property
    def shot_label(self) -> str:
        return "full_shot" if self.shots == 0 else f"{self.shots}_shot"

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

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "config") -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown RunConfig field(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"{origin}: {err}") from None

    @classmethod
    def from_parameters(cls, namespace: dict[str, Any]) -> "RunConfig":
        """Build from a notebook's namespace after papermill injected its parameters."""
        return cls.from_dict({name: namespace[name] for name in FIELD_NAMES if name in namespace},
                             origin="notebook parameters")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of RunConfig fields, got {type(data).__name__}")
        return cls.from_dict(data, origin=str(path))

    def to_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def _literal_values(annotation: str) -> tuple[str, ...] | None:
    """The allowed values of a Literal field (annotations are strings under `from __future__`)."""
    inner = annotation.removeprefix("tuple[").removesuffix(", ...]")
    alias = globals().get(inner)
    return get_args(alias) if alias is not None and getattr(alias, "__origin__", None) is Literal else None


_CHOICES: dict[str, tuple[str, ...]] = {
    f.name: values for f in fields(RunConfig) if (values := _literal_values(str(f.type))) is not None
}
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))
__all__ = [
    "RunConfig", "ConfigError", "FIELD_NAMES", "EXECUTION_FIELDS", "KINDS", "LABEL_SETS", "UNCERTAIN_POLICIES",
    "SPLIT_MODES", "LABEL_MODES", "SHOTS_MODES", "SAMPLERS", "HEADS", "HEAD_INITS", "PRECISIONS", "VIEWS",
]  # fmt: skip
