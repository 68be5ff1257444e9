"""`xrstudy demo`: the whole study loop in miniature, offline, on a CPU.

sources (phantoms written in the real CheXpert / NIH / PadChest layouts, natural-like shapes,
scikit-learn's digits) → the real adapters and merge → pre-training cells → transfer cells at
several shots and seeds from three inits, fine-tuned and linearly probed → results store → the
paper's figures.

Every cell is a papermill execution of `notebooks/10_pretrain.ipynb` or `20_transfer.ipynb`
driven by `xrstudy.sweeps.sweepfile`, exactly as on a GPU node; finished cells are reused on a re-run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from xrstudy.data import layouts, phantoms
from xrstudy.plots import render
from xrstudy.results import store
from xrstudy.sweeps import runner, sweepfile


class DemoError(RuntimeError):
    """The demo cannot run with the arguments given (bad output directory, ...)."""


@dataclass(frozen=True)
class DemoSize:
    """How big the miniature study is. `tiny` is CI's smoke run; `small` is the default.

    The paper's recipe (BiT-HyperRule: 500 steps at batch 128, LR 0.001 for every training set under
    20k images; pre-training LR 0.01 per 256 images) suits big models trained for hours. A 0.3M-parameter
    network trained for seconds on a CPU learns nothing with it, so the demo sets its own numbers:
    few-shot cells (at most 10 images per class) take fewer, smaller steps than full-shot cells, and the
    LR is high because adaptive gradient clipping (lambda 0.01) caps every backbone update at about
    lr x 1 % of the weights' norm (the head is exempt).
    """

    patients: int  # per pre-training source
    target_per_class: int  # PadChest-Cl images per class
    shapes_per_class: int
    image_size: int
    pretrain_epochs: int
    fewshot_steps: int
    full_steps: int
    shots: tuple[int, ...]
    seeds: tuple[int, ...]  # of full-shot cells
    # Of few-shot cells: more, since a 1-shot cell's result turns on which image each class drew, and
    # a few-shot cell costs ~1 s of training (the paper: seeds 0-4 everywhere).
    fewshot_seeds: tuple[int, ...]
    fewshot_batch: int = 32
    full_batch: int = 64
    pretrain_batch: int = 64
    lr: float = 1.0  # full-shot cells
    fewshot_lr: float = 0.1  # a few images per class: gentler steps (at 0.3 and above 10-shot fell below 1-shot)
    pretrain_lr: float = 0.5
    # Linear probes (train_mode probe) beside the fine-tuned cells: every init on both targets at these shots
    # and seeds. A probe costs little (one feature pass per init and target, then a logistic regression), so
    # its cells add mostly the per-cell overhead.
    probe_shots: tuple[int, ...] = ()
    probe_seeds: tuple[int, ...] = (0, 1)


SIZES = {
    "tiny": DemoSize(
        patients=60,
        target_per_class=40,
        shapes_per_class=40,
        image_size=24,
        pretrain_epochs=3,
        fewshot_steps=20,
        full_steps=60,
        shots=(1, 0),
        seeds=(0, 1),
        fewshot_seeds=(0, 1),
        probe_shots=(1, 0),
    ),
    "small": DemoSize(
        patients=300,
        target_per_class=120,
        shapes_per_class=150,
        image_size=24,
        pretrain_epochs=8,
        fewshot_steps=60,
        full_steps=500,
        shots=(1, 5, 10, 0),
        seeds=(0, 1),
        fewshot_seeds=(0, 1, 2, 3),
        probe_shots=(1, 5, 10, 0),
    ),
}

# The miniature sources: which registry adapter reads each, where its root lies, how it is drawn.
XRAY_TARGET_CLASSES = ("normal", "Cardiomegaly", "Effusion", "Pneumothorax", "Consolidation")
DONE_MARKER = ".xrstudy-complete"


def check_out_dir(out: Path) -> Path:
    """Fail early and clearly on an output directory we could not finish writing into."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a directory")
    if not out.parent.is_dir():
        raise DemoError(f"--out {out}: parent directory {out.parent} does not exist; create it first")
    probe_dir = out if out.exists() else out.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".xrstudy-write-probe-"):
            pass
    except OSError as err:
        raise DemoError(f"--out {out}: cannot write into {probe_dir} ({err.strerror or err})") from None
    out.mkdir(exist_ok=True)
    return out


def _write_once(root: Path, name: str, make_records) -> Path:
    """Write a miniature source unless a complete copy is already there (re-runs reuse it)."""
    if (root / DONE_MARKER).exists():
        return root
    if root.exists():  # an interrupted earlier write: start this source over
        shutil.rmtree(root)
    layouts.write_layout(name, root, make_records())
    (root / DONE_MARKER).write_text("complete\n")
    return root


def write_sources(data_dir: Path, size: DemoSize) -> dict[str, Path]:
    """The demo's sources on disk, in the layouts the real datasets are distributed in."""
    data_dir.mkdir(parents=True, exist_ok=True)
    split = (("train", 0.85), ("valid", 0.15))
    styles = {  # different scanners: the sources are related domains, not copies
        "chexpert": phantoms.PhantomStyle(contrast=1.0, noise=0.04),
        "nih": phantoms.PhantomStyle(contrast=0.85, noise=0.05),
        "padchest": phantoms.PhantomStyle(contrast=1.1, noise=0.03, bits=16),
    }
    roots = {
        "chexpert": _write_once(
            data_dir / "CheXpert-v1.0-small",
            "chexpert",
            lambda: phantoms.xray_records(size.patients, seed=1, style=styles["chexpert"], splits=split),
        ),
        "nih": _write_once(
            data_dir / "ChestX-ray14",
            "nih",
            lambda: phantoms.xray_records(
                size.patients,
                seed=2,
                style=styles["nih"],
                uncertain_share=0.0,
                blank_share=0.0,
                splits=(("train", 0.8), ("test", 0.2)),
            ),
        ),
        "padchest-cl": _write_once(
            data_dir / "PadChest",
            "padchest",
            lambda: phantoms.single_finding_records(
                size.target_per_class, seed=3, classes=XRAY_TARGET_CLASSES, style=styles["padchest"]
            ),
        ),
        "shapes": _write_once(
            data_dir / "shapes", "imagefolder", lambda: phantoms.shape_records(size.shapes_per_class, seed=4)
        ),
        "digits": _write_once(data_dir / "digits", "imagefolder", lambda: phantoms.digit_records(seed=5)),
    }
    return roots


MINIATURE_PLACES = (Path("xrstudy-demo") / "data", Path("..") / "xrstudy-demo" / "data")


def miniature_roots(data_dir: str | Path | None = None, size: str = "tiny") -> dict[str, Path]:
    """The demo's miniature sources (name → root) for notebooks run as shipped: a complete copy in
    `data_dir` or, when none is given, in a demo's output next to the working directory
    (`xrstudy-demo/data`, or `../xrstudy-demo/data` from `notebooks/`); else a `size` set written
    on the fly to a new temporary folder (a few seconds)."""
    candidates = [Path(data_dir)] if data_dir is not None else list(MINIATURE_PLACES)
    names = {
        "chexpert": "CheXpert-v1.0-small",
        "nih": "ChestX-ray14",
        "padchest-cl": "PadChest",
        "shapes": "shapes",
        "digits": "digits",
    }
    for place in candidates:
        if all((place / folder / DONE_MARKER).is_file() for folder in names.values()):
            return {name: (place / folder).absolute() for name, folder in names.items()}
    target = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="xrstudy-miniature-"))
    return write_sources(target, SIZES[size])


def miniature_sources(data_dir: str | Path | None = None) -> list[str]:
    """The miniature X-ray sources as `name=DIR` entries for exploration (CheXpert, NIH, PadChest)."""
    roots = miniature_roots(data_dir)
    return [f"chexpert={roots['chexpert']}", f"nih={roots['nih']}", f"padchest={roots['padchest-cl']}"]


def demo_sweep(out: Path, roots: dict[str, Path], size: DemoSize) -> dict:
    """The demo's grid as a sweep document (the same format as sweeps/paper.yaml)."""
    root_list = [f"{name}={path}" for name, path in roots.items()]
    grid = {"target": ["padchest-cl", "digits"], "init": ["scratch", "pretrain:xray", "pretrain:natural"]}
    few = [k for k in size.shots if k > 0]
    blocks = (
        [
            {
                "steps": size.fewshot_steps,
                "batch_size": size.fewshot_batch,
                "lr": size.fewshot_lr,
                "grid": {**grid, "shots": few, "seed": list(size.fewshot_seeds)},
            }
        ]
        if few
        else []
    )
    if 0 in size.shots:
        blocks.append(
            {
                "steps": size.full_steps,
                "batch_size": size.full_batch,
                "lr": size.lr,
                "grid": {**grid, "shots": [0], "seed": list(size.seeds)},
            }
        )
    if size.probe_shots:  # the frozen init's features + a logistic regression: no steps, no LR
        blocks.append(
            {"train_mode": "probe", "grid": {**grid, "shots": list(size.probe_shots), "seed": list(size.probe_seeds)}}
        )
    pretrain = {"epochs": size.pretrain_epochs, "batch_size": size.pretrain_batch, "lr": size.pretrain_lr}
    return {
        "defaults": {
            "arch": "resnetv2_tiny_bit",
            "image_size": size.image_size,
            "out_dir": str(out),
            "roots": root_list,
        },
        "pretrain": [
            {
                "name": "xray",
                "sources": ["chexpert", "nih"],
                "labels": "intersection",
                "views": ["PA", "AP"],
                **pretrain,
            },
            {"name": "natural", "sources": ["shapes"], "views": [], **pretrain},
        ],
        "transfer": blocks,
    }


def summary_table(results_dir: Path) -> pd.DataFrame:
    """Mean ± SD over seeds of each target's headline metric: rows target × init × mode (fine-tuned, then
    the linear probe of the same init), columns shots."""
    tidy = store.table(results_dir)
    tidy = tidy[(tidy["kind"] == "transfer") & (tidy["metric"].isin(["test/acc", "test/auc"]))]
    if tidy.empty:
        return pd.DataFrame()
    headline = {"padchest-cl": "test/auc", "digits": "test/acc"}
    tidy = tidy[tidy["metric"] == tidy["target"].map(headline).fillna("test/acc")]
    stats = tidy.groupby(["target", "metric", "init_label", "train_mode", "shot"])["value"].agg(["mean", "std"])
    cell = (100 * stats["mean"]).round(1).astype(str) + " ± " + (100 * stats["std"].fillna(0)).round(1).astype(str)
    table = cell.unstack("shot")
    ordered = [c for c in [f"{k}_shot" for k in (1, 5, 10, 100, 500)] + ["full_shot"] if c in table.columns]
    return table[ordered]


def xray_pretraining_effect(results_dir: Path) -> str:
    """The demo's result, in words: on the X-ray target, fine-tuned X-ray pre-training's mean AUC minus the
    best other fine-tuned init's, per shot count (whatever the sign: it is reported, not tuned)."""
    tidy = store.table(results_dir)
    tidy = tidy[(tidy["kind"] == "transfer") & (tidy["target"] == "padchest-cl") & (tidy["metric"] == "test/auc")]
    tidy = tidy[tidy["train_mode"] == "finetune"]  # fine-tuned inits; probes are their own rows of the table
    means = tidy.groupby(["shot", "init_label"])["value"].mean().unstack("init_label")
    if means.empty or "xray" not in means.columns or len(means.columns) < 2:
        return "X-ray pre-training on the X-ray target: not measured (no X-ray init and other inits in the store)"
    gap = 100 * (means["xray"] - means.drop(columns="xray").max(axis=1))
    order = [s for s in [f"{k}_shot" for k in (1, 5, 10, 100, 500)] + ["full_shot"] if s in gap.index]
    parts = ", ".join(f"{s.replace('_shot', '')}: {gap[s]:+.1f}" for s in order)
    helped = int((gap[order] > 0).sum())
    verdict = "helps" if helped == len(order) else ("does not help" if helped == 0 else "helps at some shot counts")
    return (
        f"X-ray pre-training {verdict} on the X-ray target: mean AUC x100 minus the best other init's, "
        f"per shots {parts} ({helped} of {len(order)} shot counts better)"
    )


def run_demo(
    out: str | Path,
    size: str = "small",
    *,
    workers: int = 2,
    progress: bool = True,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    """Run the miniature study into `out`; return paths and the summary table. `say` receives one line
    per stage (`xrstudy demo` prints them)."""
    if size not in SIZES:
        raise DemoError(f"--size {size!r}; expected one of {sorted(SIZES)}")
    out = check_out_dir(Path(out))
    started = time.perf_counter()
    say(f"[1/4] writing miniature sources in their real layouts under {out / 'data'}")
    roots = write_sources(out / "data", SIZES[size])
    sweep_path = out / "demo-sweep.yaml"
    sweep_path.write_text(yaml.safe_dump(demo_sweep(out, roots, SIZES[size]), sort_keys=False))
    cells = sweepfile.load_sweep(sweep_path)
    say(f"[2/4] running {len(cells)} study cells ({sweep_path}); finished cells are reused")
    summary = runner.run_sweep(cells, workers=workers, progress=progress)
    say("[3/4] drawing figures")
    rendered = render.render_all(out / "results", out / "figures")
    table = summary_table(out / "results")
    elapsed = time.perf_counter() - started
    say(f"[4/4] done in {elapsed:.0f} s")
    return {
        "out": out,
        "sweep": sweep_path,
        "summary": summary,
        "figures": rendered.files,
        "table": table,
        "seconds": elapsed,
    }
