"""2-process DDP (gloo, CPU, loopback): the same global batch gives the 1-process result.

Each rank gathers only its slice of the global batch from the (memory-mapped) images (StepLoader),
the augmentation is drawn for the global batch, and the masked BCE divides by the global count of
known targets (counted by the loader from the targets); DDP averages gradients. So
the two runs differ only in floating-point summation order (gradients of two half batches summed by
all_reduce vs one batch). Tolerance tested: every weight within 1e-5 absolute + 1e-4 relative of the
1-process run after 4 SGD steps, and test probabilities within 1e-4 (measured differences are around
1e-7). MixUp is off here: it pairs images within a device's batch, so with MixUp on N processes pair
differently from 1 process (documented in xrstudy.pixels.loaders). A second case runs each rank with
2 micro-batches (fastai's GradientAccumulation): the same 1-process result. The training history
(xrstudy.training.monitor.HistoryLogger) is written by rank 0 alone, with the loss averaged over ranks:
the 1-process history's.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from xrstudy.config import RunConfig
from xrstudy.pixels.loaders import Augment, Split
from xrstudy.training.learner import TrainSetup, fit, make_learner, predict
from xrstudy.training.models import create_model
from xrstudy.training.recipes import Schedule

STEPS, GLOBAL_BATCH = 4, 8


def _data() -> Split:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 20, 20), dtype=np.uint8)
    targets = rng.integers(0, 2, (20, 3)).astype(np.float32)
    targets[rng.random((20, 3)) < 0.3] = np.nan  # ranks hold different numbers of unknowns
    return Split.of(images, torch.from_numpy(targets))


def _setup(world: int, rank: int, micro_batch: int = 0) -> TrainSetup:
    return TrainSetup(
        multilabel=True,
        num_classes=3,
        schedule=Schedule(steps=STEPS, warmup=1, decays=(3,), base_lr=0.1),
        per_device_batch=GLOBAL_BATCH // world,
        seed=1,
        augment=Augment(out_size=16, crop_fraction=0.8),
        eval_size=16,
        weight_decay=1e-4,
        rank=rank,
        world=world,
        micro_batch=micro_batch,
    )


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(RunConfig(kind="pretrain", sources=("demo",), arch="resnetv2_tiny_bit"), 3)


def _train(
    world: int, rank: int, micro_batch: int = 0, run_dir: Path | None = None
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    from xrstudy.training.monitor import HistoryLogger

    watch = (
        HistoryLogger(
            run_dir, total_steps=STEPS, every=1, global_batch=GLOBAL_BATCH, train_size=20, rank=rank, world=world
        )
        if run_dir is not None
        else None
    )
    learn = make_learner(_model(), _data(), _setup(world, rank, micro_batch), [watch] if watch else [])
    if watch:
        watch.open(0)
    try:
        fit(learn)
    finally:
        if watch:
            watch.close()
    model = getattr(learn.model, "module", learn.model)
    learn.model = model
    probs, _ = predict(learn, _data(), 16)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, probs


def _worker(rank: int, world: int, port: int, out: str, micro_batch: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        state, probs = _train(world, rank, micro_batch, Path(out) / "run-ddp")
        torch.save({"state": state, "probs": torch.from_numpy(probs)}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo on loopback")
@pytest.mark.parametrize("micro_batch", [0, 2])
def test_two_process_gloo_matches_one_process(tmp_path, micro_batch):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), micro_batch), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, probs = _train(1, 0, run_dir=tmp_path / "run-single")
    finally:
        torch.set_num_threads(threads)
    for key, value in single.items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key  # ranks agree exactly
        assert torch.allclose(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5), key
    assert any(not torch.equal(single[k], _model().state_dict()[k]) for k in single)  # it trained
    assert np.allclose(ranks[0]["probs"].numpy(), probs, atol=1e-4)
    from xrstudy.training import history

    ddp_rows = history.read_rows(tmp_path / "run-ddp" / history.HISTORY_FILE)
    single_rows = history.read_rows(tmp_path / "run-single" / history.HISTORY_FILE)
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows] == [1, 2, 3, 4]  # rank 0 alone wrote
    assert [r["train/loss"] for r in ddp_rows] == pytest.approx([r["train/loss"] for r in single_rows], rel=1e-4)
    diff = max((ranks[0]["state"][k] - v).abs().max().item() for k, v in single.items() if v.is_floating_point())
    print(f"max |w_ddp - w_single| = {diff:.2e}")
