"""One cell, resolved: every value that decides a cell's numbers, decided here once, torch-free.

    facts = registry_facts(cfg)                  the data's facts without files (`sweep plan` without roots)
    facts = label_file_facts(cfg)                ... from the cell's label files (`sweep plan` with roots)
    facts = study_facts(cfg, study, image_hw)    ... from the tables training built (`train.run`)
    cell  = resolve(cfg, facts, device="H100")   a frozen `ResolvedCell`: recipe, pipeline, image size and cache
                                                 mode, input statistics, flip, k-shot ids, precision, optimiser,
                                                 MixUp group, micro-batch, cost, each with where it came from
    cell.row()                                   those values as flat JSON: the fields of a `sweep plan` row and
                                                 the `resolved` entry of a result JSON
    cfg   = canonical(cfg)                       recipe overrides the static facts make redundant, reset: one run
                                                 id per computation (sweep loading, `xrstudy train`, `train.run`)

`xrstudy.sweeps.plan` prints `cell.row()` (plus the sweep's own columns: dependencies, leaks, warnings);
`xrstudy.training.train.run` trains with the same object and stores its row; so the plan is what runs.

The data's facts are what a cell cannot know from its RunConfig alone: the training-set size (label files, or
the registry's published sizes), the original image size (the first training image, or the registry's
`native_hw`), the k-shot ids drawn, the images of the dataset (cache), and for `init: timm` the tag's
statistics (timm's pretrained cfg, which training reads; without torch the resolver knows Google's BiT tags:
0.5 / 0.5).

Run ids (`canonical`, docs/PROTOCOL.md "the grid, plan, SLURM"): a recipe field (`steps`, `epochs`,
`image_size`, `lr`, `mixup`) spelled out with the value the recipe would pick anyway is reset to its default
before the id is taken, so `steps: 500, image_size: 128, mixup: 0.0, lr: 0.001` on a digits 1-shot cell is the
plain cell. "Would pick anyway" is judged on static facts only, the same on every machine, with or without the
label files: the registry's class counts (k-shot sets hold at most k per class), its native image sizes (an
entry without one holds images larger than 96 px; an unregistered ImageFolder target has no known size), and
its published full training-set sizes for `split_mode: paper` cells (the paper's splits). A value is reset only
when the recipe is the same with and without it for every training-set size and image size those facts allow;
a pre-training `steps` is therefore never reset (its default follows the exact size of the label files).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xrstudy.config import RunConfig
from xrstudy.data import labels
from xrstudy.data.sources import SOURCES, Source, source_of
from xrstudy.training import cost, history, recipes

if TYPE_CHECKING:
    from xrstudy.data.studydata import StudyData

Stats = tuple[tuple[float, ...], tuple[float, ...]]
LARGE_HW = (1024, 1024)  # "larger than 96 x 96": the HyperRule only asks whether images are small
SMALL_HW = (8, 8)  # an image size under 96 x 96 (the HyperRule's other case), for `canonical`'s scenarios
# The recipe fields whose default (0 / -1) lets the recipe decide; `canonical` resets a spelled-out one.
RECIPE_FIELDS = ("epochs", "steps", "image_size", "lr", "mixup")
OPTIMIZER = "sgd"  # SGD_AGC (optim/builder.py): SGD with Nesterov momentum 0.9 + adaptive gradient clipping
MEMORY_NOTE = (
    "xrstudy.training.recipes (uint8 cache at the resize side, shared through the page cache; a rank holds its "
    "tables, a staging ring of micro-batches and the model's host copy)"
)


# ---- the data's facts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataFacts:
    """What a cell's data says (files, registry), as the resolver needs it; `*_from` says where each came from."""

    train_size: int | None  # None: unknown (the plan's row stays unresolved)
    train_size_from: str
    image_hw: tuple[int, int]  # original (height, width) of the training images
    image_hw_from: str
    cache_images: int | None = None  # images of the dataset, all splits (the image cache)
    memory_from: str = "published train size only (valid / test sizes not recorded)"
    shots_ids: tuple[str, ...] | None = None  # the k-shot image ids drawn; None: not drawn here (no label files)
    init_stats: Stats | None = None  # init: timm, the tag's pretrained cfg (read by training, where timm is)
    modality: str | None = None  # "xray" | "natural" of the tables built (else the registry's: `modality_of`)
    errors: tuple[str, ...] = ()  # why a fact is unknown (a label file that cannot be read, a short class)
    warnings: tuple[str, ...] = ()


def cell_sources(cfg: RunConfig) -> tuple[str, ...]:
    """The datasets a cell reads: its pre-training sources, or its transfer target."""
    return tuple(cfg.sources) if cfg.kind == "pretrain" else (cfg.target,)


def pipeline_of(cfg: RunConfig) -> str:
    """ "xray" (pre-training, and targets that transfer with it) or "bit" (BiT-HyperRule resolution)."""
    return source_of(cfg.target).transfer_pipeline if cfg.kind == "transfer" else "xray"


def flip_of(cfg: RunConfig) -> bool:
    """Whether training crops may be mirrored (`Source.mirror_invariant` of a transfer's target; pre-training
    always flips)."""
    return source_of(cfg.target).mirror_invariant if cfg.kind == "transfer" else True


def modality_of(cfg: RunConfig) -> str:
    """ "xray" (cached grayscale) when every dataset of the cell is an X-ray set, else "natural" (colour)."""
    return "xray" if all(source_of(name).modality == "xray" for name in cell_sources(cfg)) else "natural"


def cache_mode(cfg: RunConfig, recipe: recipes.Recipe | None, modality: str | None = None) -> str | None:
    """The image cache's mode: X-ray images grayscale ("L"), natural images colour ("RGB"), the X-ray targets
    the authors read in colour kept so in loader_mode paper (`recipes.image_colour`); the BiT pipeline
    caches the whole image squashed to a square (its evaluation view): ":squash". `modality`: the tables' own
    (`StudyData.modality`), else the registry's."""
    if recipe is None:
        return None
    keeps_colour = cfg.kind == "transfer" and source_of(cfg.target).paper_keeps_colour
    colour = recipes.image_colour(cfg, modality or modality_of(cfg), keeps_colour)
    return colour + (":squash" if recipe.cache_fit == "squash" else "")


def _paper_classes(cfg: RunConfig, source: Source) -> tuple[int | None, str]:
    """(classes a k-shot set draws from, what the count is): the registry's class count, less the classes the
    authors' reading leaves without an image (label_mode paper)."""
    classes = source.published_classes
    if classes is None or cfg.label_mode != "paper" or not source.paper_empty_classes:
        return classes, f"{classes} classes"
    empty = list(source.paper_empty_classes)
    return classes - len(empty), f"{classes - len(empty)} classes with an image ({', '.join(empty)} has none)"


def published_train_size(cfg: RunConfig) -> tuple[int | None, str, tuple[str, ...]]:
    """(training images, where from, warnings) by the registry's published facts: per-view counts of the
    pre-training sources, a target's full training set, k x classes for a k-shot set (at most: a class shorter
    than k gives fewer)."""
    if cfg.kind == "pretrain":
        total, missing = 0, []
        for name in cfg.sources:
            by_view = dict(source_of(name).published_train_by_view)
            if not by_view:
                missing.append(name)
            views = set(cfg.views)
            if cfg.label_mode == "paper":  # the authors' view names (e.g. MIMIC has no "L"), as data.prepare reads
                views &= labels.SOURCE_VIEWS_NAMED_AS_AUTHORS.get(name, set(labels.AUTHORS_VIEW_NAMES))
            total += sum(by_view.get(view, 0) for view in views)
        if missing:
            return None, f"unresolved: no published per-view counts for {missing} (give their roots)", ()
        how = "published per-view counts (xrstudy.data.sources)"
        if cfg.data_fraction < 1:
            total, how = int(total * cfg.data_fraction), how + f" x data_fraction {cfg.data_fraction}"
        return total, how, ()
    source = source_of(cfg.target)
    full, where = source.published_train_size, "published (registry)"
    if full is None:
        return None, f"unresolved: {cfg.target!r} has no published train size (give its root)", ()
    if cfg.shots == 0:
        return full, where, ()
    classes, counted = _paper_classes(cfg, source)
    if classes is None:
        return None, f"unresolved: class count of {cfg.target!r} unknown (give its root)", ()
    warnings: tuple[str, ...] = ()
    if cfg.shots_mode == "exact" and classes != source.published_classes:
        warnings = (
            f"shots_mode exact: {', '.join(source.paper_empty_classes)} of {cfg.target} has no image in the "
            f"authors' reading (label_mode paper), so an exact k-shot draw fails on the real files; "
            f"shots_mode paper draws from the others",
        )
        classes, counted = source.published_classes, f"{source.published_classes} classes"
    # At most: a class shorter than k gives fewer (paper k-shot sets); the HyperRule only asks < 20k.
    size = min(full, cfg.shots * classes)
    return size, f"at most {cfg.shots} x {counted} (capped by the {where} full size)", warnings


def registry_image_hw(cfg: RunConfig) -> tuple[tuple[int, int], str] | None:
    """(original image size, where from) without the files, or None when only an image can tell."""
    if cfg.kind == "pretrain":
        return (recipes.PRETRAIN_IMAGE_SIZE,) * 2, "pre-training pipeline"
    source = source_of(cfg.target)
    if source.native_hw is not None:
        return source.native_hw, "registry (native_hw)"
    return None


def registry_facts(cfg: RunConfig) -> DataFacts:
    """The cell's facts from the registry alone (`sweep plan` without roots)."""
    size, size_from, warnings = published_train_size(cfg)
    full = size
    if size is not None and cfg.kind == "transfer" and cfg.shots:  # the full training set is the cache we know of
        full = published_train_size(cfg.replace(shots=0))[0]
    hw, hw_from = registry_image_hw(cfg) or (LARGE_HW, "assumed larger than 96 x 96 px")
    return DataFacts(size, size_from, hw, hw_from, cache_images=full, warnings=warnings)


def _header_hw(path: str) -> tuple[int, int] | None:
    """(height, width) from an image file's header (no pixels decoded); None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError):
        return None


def label_file_facts(cfg: RunConfig) -> DataFacts:
    """The cell's facts from its label files (`sweep plan` with roots): the training set `prepare` would build
    (`xrstudy.data.studydata.training_set`, cached per full table) and, where the BiT pipeline needs the image
    size and the registry does not know it, the first training image's header."""
    from xrstudy.data import studydata

    try:
        built = studydata.training_set(cfg)
    except (ValueError, OSError) as err:  # ConfigError, SourceError, FewShotError
        hw, hw_from = registry_image_hw(cfg) or (LARGE_HW, "assumed larger than 96 x 96 px")
        return DataFacts(None, f"unresolved: {err}", hw, hw_from, errors=(str(err),))
    known = registry_image_hw(cfg)
    needed = known is None and pipeline_of(cfg) == "bit"  # as training: only the BiT pipeline asks (HyperRule)
    header = _header_hw(built.first_path) if needed and built.first_path else None
    hw, hw_from = known or (
        (header, "first training image's header") if header else (LARGE_HW, "assumed larger than 96 x 96 px")
    )
    return DataFacts(
        built.size,
        "label files",
        hw,
        hw_from,
        cache_images=built.universe or built.size + built.evaluated,
        memory_from="label files",
        shots_ids=built.shots_ids if cfg.kind == "transfer" and cfg.shots else None,
    )


def study_facts(
    cfg: RunConfig,
    study: StudyData,
    image_hw: tuple[int, int] | None = None,
    *,
    image_hw_from: str = "first readable training image",
    init_stats: Stats | None = None,
) -> DataFacts:
    """The cell's facts from the tables training built (`data.prepare`); `image_hw`: the first readable training
    image's size (training probes it where the pipeline needs it, the BiT pipeline), else the registry's."""
    known = registry_image_hw(cfg)
    if image_hw is not None:
        hw, hw_from = image_hw, image_hw_from
    else:
        hw, hw_from = known or (LARGE_HW, "assumed larger than 96 x 96 px")
    return DataFacts(
        len(study.train),
        "label files",
        hw,
        hw_from,
        cache_images=len(study.universe) or len(study.train) + len(study.valid) + len(study.test),
        memory_from="label files",
        shots_ids=tuple(study.shots_ids) if cfg.kind == "transfer" and cfg.shots else None,
        init_stats=init_stats,
        modality=study.modality,
    )


# ---- decisions ----------------------------------------------------------------------------------------
def input_stats(
    cfg: RunConfig, known: Stats | None = None
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str]:
    """(mean, std, why) the cell normalises with: the authors' rule (`xrstudy.training.recipes.input_stats`).
    `init: timm` is the tag's timm pretrained cfg: `known` when the caller read it (training), else Google's BiT
    tags carry 0.5 / 0.5 (tested against timm) and any other tag is read at run time (None)."""
    if cfg.init == "timm":
        if known is not None:
            mean, std = known
            shown = ": 0.5 / 0.5" if (mean, std) == recipes.XRAY_STATS else f": {list(mean)} / {list(std)}"
            return tuple(mean), tuple(std), f"timm pretrained cfg of {cfg.arch}{shown}"
        tag = cfg.arch.partition(".")[2]
        if tag.startswith("goog_"):
            return (*recipes.XRAY_STATS, f"timm pretrained cfg of {cfg.arch}: 0.5 / 0.5")
        return None, None, f"timm pretrained cfg of {cfg.arch} (read at run time)"
    target = source_of(cfg.target).input_stats if cfg.kind == "transfer" else None
    return recipes.input_stats(cfg, target)


def is_cpu(device: str) -> bool:
    return device.lower() == cost.CPU


def precision_of(cfg: RunConfig, device: str) -> tuple[str, str]:
    """(training precision, why): `precision: auto` is bf16 autocast on a GPU, fp32 on a CPU."""
    authors = "the authors: fp16 AMP in pre-training, fp32 in transfers"
    if cfg.precision != "auto":
        return cfg.precision, f"the cell's precision ({authors})"
    if is_cpu(device):
        return "fp32", f"auto on a CPU ({authors})"
    return "bf16", f"auto on a GPU: bf16 autocast, no loss scaling ({authors})"


def weight_init_of(cfg: RunConfig) -> tuple[str, str]:
    """(the cell's weight_init, where it acts): `recipes.weight_init_of` says "loaded" where weights come from a
    file, and the field then does not act."""
    if recipes.weight_init_of(cfg) == "loaded":
        return cfg.weight_init, f"weights from init {cfg.init!r}: it does not act (a fresh head: head_init)"
    rule = "PyTorch's default init, as the authors' model" if cfg.weight_init == "torch" else "timm's init"
    return cfg.weight_init, f"the network is built from scratch: {rule}"


def mixup_group_of(cfg: RunConfig, micro: int, per_device: int) -> tuple[int, str]:
    """(images MixUp pairs within, why): `recipes.mixup_group`: in loader_mode paper the authors' group (a
    transfer: batch // batch_split of the target's config; pre-training: 16 per GPU, where they use no MixUp),
    else what one device holds at once."""
    device_micro = min(micro, per_device) if micro else per_device
    group = recipes.mixup_group(cfg, device_micro)
    if recipes.loss_group(cfg) and cfg.kind == "pretrain":
        return group, "the authors' per-GPU batch (train_local_batch_size; no MixUp in theirs)"
    if recipes.loss_group(cfg):
        split = source_of(cfg.target).paper_batch_split
        return (
            group,
            f"the authors' micro-batch: batch {recipes.PAPER_TRANSFER_BATCH} / batch_split {split} (configs/finetune)",
        )
    return group, "the device's micro-batch" if micro and micro < per_device else "the per-device batch"


def shots_digest(ids: Iterable[str]) -> str:
    """SHA-256 of the k-shot image ids in the sampler's order, one per line: one line to compare a plan's draw
    with a run's (the result JSON keeps the ids themselves)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


# ---- the resolved cell ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedCell:
    """Every value that decides a cell's numbers, with where each came from. `row()` is its flat JSON."""

    train_size: int | None
    train_size_from: str
    image_hw: tuple[int, int]
    image_hw_from: str
    pipeline: str  # "bit" | "xray"
    recipe: recipes.Recipe | None  # None when the training-set size is unknown
    global_batch: int
    cache_mode: str | None  # the image cache's mode: L / RGB, ":squash" for the BiT pipeline
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    stats_from: str
    shots_drawn: int | None  # images of the k-shot set drawn (None: full shot, or not drawn without label files)
    shots_sha256: str | None
    precision: str
    precision_from: str
    eval_precision: str
    optimizer: str
    momentum: float
    nesterov: bool
    agc_clip: float
    weight_init: str
    weight_init_from: str
    mixup_group: int
    mixup_group_from: str
    image_steps: int | None
    images_per_s: float | None
    throughput_from: str
    gpu_hours: float | None
    images_per_gpu: int | None
    images_per_gpu_from: str | None
    micro_batch: int
    micro_batch_from: str
    cache_images: int | None
    cache_bytes: int | None
    ram_per_rank_bytes: int | None
    memory_from: str
    train_mode: str | None = "finetune"  # None for pre-training
    log_every: int | None = None  # steps between two training-history rows (`history.log_interval`)
    # train_mode probe: the probe's numbers (no optimiser step: one fp32 forward pass over the dataset's images,
    # then a logistic regression on a CPU; xrstudy.training.probe)
    probe: recipes.ProbeRecipe | None = None

    def row(self) -> dict[str, Any]:
        """Plain JSON (lists, not tuples): the `sweep plan` row's resolved fields, a result's `resolved` entry."""
        r = self.recipe
        recipe = {
            "steps": r.steps if r else None,
            "epochs": r.epochs if r and r.kind == "pretrain" else None,
            "boundaries": list(r.boundaries) if r else None,
            "warmup": r.warmup if r else None,
            "resize": r.resize if r else None,
            "crop": r.crop if r else None,
            "eval_resize": r.eval_size if r else None,
            "augment": r.augment if r else None,
            "flip": r.flip if r else None,
            "mixup_alpha": r.mixup_alpha if r else None,
            "lr": r.base_lr if r else None,
            "weight_decay": r.weight_decay if r else None,
            "valid_every": r.valid_every if r and r.kind == "pretrain" else None,
        }
        probe = {}
        if self.probe is not None:  # no steps, LR or MixUp: the evaluation view's features, then C by validation
            recipe.update(steps=0, boundaries=[], warmup=None, lr=None, mixup_alpha=None, augment="evaluation view")
            probe = {
                "feature_batch": self.probe.feature_batch,
                "feature_images": self.cache_images,
                "probe_c_grid": list(self.probe.c_grid),
            }
        skip = ("recipe", "probe")
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        first = ("train_size", "train_size_from", "image_hw", "image_hw_from", "pipeline")  # the plan's column order
        row = {**{k: values.pop(k) for k in first}, **recipe, **values, **probe}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in row.items()}


def resolve(
    cfg: RunConfig,
    facts: DataFacts,
    *,
    device: str = cost.DEFAULT_DEVICE,
    world: int = 1,
    planning: bool = True,
) -> ResolvedCell:
    """Every decision of `cfg` given its data's `facts`, on `world` devices named `device` (a row name of the
    cost tables, e.g. "H100"; "cpu" for a run without a GPU). `planning` (the plan's view): a cell without a
    `micro_batch` gets the one the memory table says a GPU holds (`sweep run --gpus` and `sweep submit` set it so),
    and an unreadable cost table is an error. False (a run's view, `train.run`): the cell runs as given (its own
    `micro_batch`, else the whole per-device batch at once), and the cost is estimated where the tables allow."""
    pipeline = pipeline_of(cfg)
    size = facts.train_size
    recipe = (
        recipes.recipe_for(cfg, size, facts.image_hw, pipeline=pipeline, flip=flip_of(cfg))
        if size is not None
        else None
    )
    mean, std, stats_from = input_stats(cfg, facts.init_stats)
    per_device = max(1, cfg.batch_size // world)
    gpu = not is_cpu(device)
    speed, fit, unestimated = None, None, f"no throughput for {cfg.arch} on {device}"
    try:
        speed = cost.throughput(cfg.arch, recipe.crop, device, compiled=cfg.compile) if recipe and gpu else None
        fit = cost.images_per_gpu(cfg.arch, recipe.crop, device) if recipe and gpu else None
    except cost.CostTableError as err:
        if planning:
            raise
        unestimated = f"no estimate: {err}"  # a run only reports its cost: an unreadable table must not stop it
    # loader_mode paper with MixUp: a device pass holds whole groups of the authors' micro-batch (they pair in it)
    whole = recipes.loss_group(cfg) if recipe and recipe.mixup_alpha > 0 else 0
    micro = cfg.micro_batch or (
        cost.micro_batch(fit.images if fit else None, per_device, whole or 1) if planning else 0
    )
    if cfg.micro_batch:
        micro_from = "the sweep file"
    elif not planning:
        micro_from = "the cell sets none: the whole per-device batch at once"
    elif fit:
        micro_from = f"on one GPU ({fit.images} images fit)"
    else:
        micro_from = f"no memory entry for {cfg.arch} on {device}: the whole batch at once"
    image_steps = recipe.steps * recipe.global_batch if recipe else None
    probe = None
    if cfg.train_mode == "probe" and recipe is not None:
        probe = recipes.probe_recipe(recipe, batch_size=cfg.batch_size, micro_batch=micro, world=world)
        image_steps = facts.cache_images  # one forward pass over every image of the dataset, no optimiser step
        if speed is not None:
            speed = cost.Throughput(
                speed.images_per_s / recipes.FORWARD_SHARE,
                f"forward only: {1 / recipes.FORWARD_SHARE:.0f} x the training images/s ({speed.how}); the features "
                f"are fp32, the training figure bf16: not measured, a lower bound on the time",
            )
    mode = cache_mode(cfg, recipe, facts.modality)
    n_cache = facts.cache_images
    side = recipe.resize if recipe else None
    cached = bool(side and n_cache and mode)
    precision, precision_from = precision_of(cfg, device)
    weight_init, weight_init_from = weight_init_of(cfg)
    group, group_from = mixup_group_of(cfg, micro, per_device)
    shots = facts.shots_ids
    return ResolvedCell(
        train_size=size,
        train_size_from=facts.train_size_from,
        image_hw=tuple(facts.image_hw),
        image_hw_from=facts.image_hw_from,
        pipeline=pipeline,
        recipe=recipe,
        global_batch=cfg.batch_size,
        cache_mode=mode,
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        stats_from=stats_from,
        shots_drawn=len(shots) if shots is not None else None,
        shots_sha256=shots_digest(shots) if shots is not None else None,
        precision=precision,
        precision_from=precision_from,
        eval_precision=recipes.eval_precision(cfg),
        optimizer=OPTIMIZER,
        momentum=recipes.MOMENTUM,
        nesterov=True,
        agc_clip=recipes.AGC_CLIP,
        weight_init=weight_init,
        weight_init_from=weight_init_from,
        mixup_group=group,
        mixup_group_from=group_from,
        image_steps=image_steps,
        images_per_s=round(speed.images_per_s, 1) if speed else None,
        throughput_from=f"{device} bf16: {speed.how}" if speed else unestimated,
        gpu_hours=round(cost.gpu_hours(image_steps, speed), 3) if speed and image_steps else None,
        images_per_gpu=fit.images if fit else None,
        images_per_gpu_from=fit.how if fit else None,
        micro_batch=micro,
        micro_batch_from=micro_from,
        cache_images=n_cache,
        cache_bytes=recipes.cache_bytes(n_cache, side, mode) if cached else None,
        ram_per_rank_bytes=_ram_per_rank(cfg, n_cache, side, mode, micro, gpu) if cached else None,
        memory_from=f"{facts.memory_from}; {MEMORY_NOTE}",
        train_mode=cfg.train_mode if cfg.kind == "transfer" else None,
        log_every=history.log_interval(recipe.steps, cfg.log_every) if recipe and not probe else None,
        probe=probe,
    )


def _ram_per_rank(cfg: RunConfig, n_images: int, side: int, mode: str, micro: int, gpu: bool) -> int:
    """Host memory of one training rank (`recipes.ram_per_rank`, measured by benchmarks/bench_memory.py)."""
    params = cost.arch_params().get(cfg.arch.split(".", 1)[0])
    return recipes.ram_per_rank(
        n_images,
        recipes.cache_bytes(1, side, mode),
        micro or cfg.batch_size,
        model_params=int(params * 1e6) if params else 0,
        cuda=gpu,
    )


# ---- one run id per computation ------------------------------------------------------------------------
_HYPERRULE_BOUNDS = (recipes.MIXUP_MIN_TRAIN_SIZE, 500_000)  # where the HyperRule's schedule and MixUp change
_ANY_SIZE = (1, 10**9)


def static_train_sizes(cfg: RunConfig) -> tuple[int, int]:
    """(fewest, most) training images the static facts allow (module doc): exact for a full-shot `split_mode:
    paper` cell with a published size, at most k x classes for a k-shot set (exactly that in `shots_mode:
    exact`, or where every class holds at least k: `Source.class_size`), else anything."""
    if cfg.kind == "pretrain":
        return _ANY_SIZE
    source = source_of(cfg.target)
    full = source.published_train_size if cfg.split_mode == "paper" else None
    if cfg.shots == 0:
        return (full, full) if full is not None else _ANY_SIZE
    classes = _paper_classes(cfg, source)[0] if cfg.label_mode == "paper" or not source.paper_single_label_of else None
    if classes is None:
        return _ANY_SIZE
    most = cfg.shots * classes if full is None else min(full, cfg.shots * classes)
    exactly = cfg.shots_mode == "exact" or (source.class_size is not None and cfg.shots <= source.class_size)
    return (most, most) if exactly else (1, most)


def static_image_hws(cfg: RunConfig) -> tuple[tuple[int, int], ...]:
    """The original image sizes the static facts allow: the registry's `native_hw`; large for a registered source
    without one; for an unregistered ImageFolder target, small or large."""
    known = registry_image_hw(cfg)
    if known is not None or pipeline_of(cfg) == "xray":
        return (known[0] if known else LARGE_HW,)
    unregistered = cfg.target not in SOURCES or source_of(cfg.target).read is SOURCES["imagefolder"].read
    return (SMALL_HW, LARGE_HW) if unregistered else (LARGE_HW,)


def _sizes_between(fewest: int, most: int) -> tuple[int, ...]:
    """One size per HyperRule bracket that [fewest, most] reaches, at both ends of it (the recipe of a transfer
    changes only at those bounds; a pre-training recipe at every size, so its unknown size stays unknown)."""
    sizes = {fewest, most}
    for bound in _HYPERRULE_BOUNDS:
        if fewest < bound <= most:
            sizes |= {bound - 1, bound}
    return tuple(sorted(sizes))


def canonical(cfg: RunConfig) -> RunConfig:
    """`cfg` with every recipe field (`RECIPE_FIELDS`) that only repeats what the recipe picks anyway reset to its
    default, so that a spelled-out cell and the plain one are one RunConfig (one run id, one result file). Judged
    on static facts (module doc); a cell that spells nothing out is returned as is."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    spelled = [name for name in RECIPE_FIELDS if getattr(cfg, name) != defaults[name]]
    if not spelled:
        return cfg
    pipeline, flip = pipeline_of(cfg), flip_of(cfg)
    scenarios = [(size, hw) for size in _sizes_between(*static_train_sizes(cfg)) for hw in static_image_hws(cfg)]

    def computed(cell: RunConfig) -> list[recipes.Recipe]:
        return [recipes.recipe_for(cell, size, hw, pipeline=pipeline, flip=flip) for size, hw in scenarios]

    reference = computed(cfg)
    for name in spelled:
        plain = cfg.replace(**{name: defaults[name]})
        if computed(plain) == reference:
            cfg = plain
    return cfg


__all__ = [
    "DataFacts",
    "ResolvedCell",
    "resolve",
    "registry_facts",
    "label_file_facts",
    "study_facts",
    "canonical",
    "input_stats",
    "pipeline_of",
    "flip_of",
    "modality_of",
    "cache_mode",
    "cell_sources",
    "published_train_size",
    "registry_image_hw",
    "static_train_sizes",
    "static_image_hws",
    "precision_of",
    "mixup_group_of",
    "shots_digest",
    "RECIPE_FIELDS",
    "LARGE_HW",
]
