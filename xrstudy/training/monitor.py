"""Watching a run while it trains: `HistoryLogger`, the fastai callback behind `{run_dir}/history.csv`
and the TensorBoard scalars under `{run_dir}/tensorboard/`, which also stops a diverging run.

    history = HistoryLogger(run_dir, total_steps=..., every=log_interval(...), global_batch=..., train_size=...,
                            hold_segment_ends=True)
    learn = make_learner(model, train_split, setup, [history])
    history.open(start_step)                     # after a resume's restore: rows beyond it are dropped
    for stop in segment_ends:                    # pre-training: one segment per epoch, then validation
        fit(learn, stop)
        history.close_segment(stop, {"loss": valid_loss, ...})
    history.close()

(Without `hold_segment_ends`, `fit(learn)` and `close()` are all it takes.) Per step it adds the loss to
a buffer on the device and nothing else: no host sync. Every `every` steps (and at each fit segment's
last step, whose row can wait for the validation values) it reads the buffer once, and writes one
row (`xrstudy.training.history.COLUMNS`): the mean loss since the previous row, the LR, the gradient
norm before AGC (measured at that step only), images/s, the share of time spent waiting for data,
the CUDA peak memory. A non-finite loss raises `TrainingDiverged`
there: the cell stops within `every` steps, and `PeriodicCheckpoint` never saved the diverged weights.

Under torchrun every rank measures (the loss of a row is averaged over ranks with one all-reduce)
and rank 0 alone writes. The partial interval since the last row travels in the training state
(`state_key`), so a resumed run continues the same history: no step twice, none missing. (After a
multi-GPU resume, that carried part holds rank 0's losses only.)
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from xrstudy.fileio import DiskFullError, is_disk_full
from xrstudy.training.callbacks import LocalCallback
from xrstudy.training.history import (
    HEADER,
    HISTORY_FILE,
    TENSORBOARD_DIR,
    TrainingDiverged,
    format_row,
    keep_until,
    tensorboard_tag,
)

TENSORBOARD_FLUSH_S = 10  # the event file is flushed at least this often (and at every segment end)
EVENTS_PREFIX = "events.out.tfevents."


class HistoryError(OSError):
    """The training history cannot be written where the run keeps it; the message names the path."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _history_error(path: Path, err: OSError, doing: str) -> OSError:
    """One line naming the path: a full disk is DiskFullError (with the space left), anything else HistoryError."""
    if is_disk_full(err):
        return DiskFullError(path)
    reason = err.strerror or str(err) or type(err).__name__
    return HistoryError(
        f"{path}: cannot {doing} the training history there ({reason}); check the folder or choose another out_dir",
        err.errno,
    )


def check_writable(run_dir: str | os.PathLike[str]) -> None:
    """Fail at the start of a cell, naming the folder, when the history cannot be written (the run folder
    or its tensorboard/ folder: missing permissions, a file in the folder's place, a full disk)."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / TENSORBOARD_DIR):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as err:
            if isinstance(err, FileExistsError) or (folder.exists() and not folder.is_dir()):
                raise HistoryError(
                    f"{folder}: not a folder; the run's training history goes there", err.errno
                ) from None
            raise _history_error(folder, err, "write") from None
    target = run_dir / HISTORY_FILE
    if target.exists() and not target.is_file():
        raise HistoryError(f"{target}: not a regular file; the run's training history goes there")


def _after_existing_event_files(folder: Path) -> None:
    """Wait, at most a second, until a new event file would sort after every file in `folder`. TensorBoard reads
    a run's files in name order, `events.out.tfevents.{unix seconds}.{host}.{pid}...`, and applies a resumed
    writer's purge to what it read before: a resume within the second of the killed attempt's start, from a
    lower pid, would sort first and show the purged steps again (after the resumed ones)."""
    stamps = [int(p.name.split(".")[3]) for p in folder.glob(f"{EVENTS_PREFIX}*") if p.name.split(".")[3].isdigit()]
    wait = max(stamps) + 1 - time.time() if stamps else 0.0
    if 0 < wait <= 1.5:  # a clock set back, or a file from elsewhere, is not worth waiting for
        time.sleep(wait)


class HistoryLogger(LocalCallback):
    """history.csv + TensorBoard scalars every `every` steps; stops the run when the loss is no longer finite."""

    # before_step: after fastai's GradientAccumulation (6, cancels micro-steps) and MixedPrecision (10,
    # unscales), before AGC (30): the gradient norm is that of the step, before clipping.
    order = 20
    state_key = "history"

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        total_steps: int,
        every: int,
        global_batch: int,
        train_size: int,
        rank: int = 0,
        world: int = 1,
        tensorboard: bool = True,
        hold_segment_ends: bool = False,
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / HISTORY_FILE
        self.tensorboard_dir = self.run_dir / TENSORBOARD_DIR
        self.total_steps, self.every, self.global_batch = int(total_steps), max(1, int(every)), int(global_batch)
        self.train_size, self.rank, self.world, self.tensorboard = max(1, int(train_size)), rank, world, tensorboard
        # train.run validates after each fit segment and closes the segment's row with those values
        # (close_segment); without that, a segment's last row is written at once like any other.
        self.hold_segment_ends = hold_segment_ends
        self.file: Any = None
        self.writer: Any = None
        # The interval since the last row: losses on the device (per micro-batch) + those carried over a resume.
        self.buffer: torch.Tensor | None = None
        self.count = 0
        self.carried: list[float] = []
        self.interval_start = 0  # step of the previous row
        self.interval_s = 0.0  # training seconds of the interval before this fit segment
        self.elapsed_s = 0.0  # training seconds of the run, rows written
        self.last_finite: tuple[int, float] | None = None  # (step, loss) of the last finite row
        self.last_written = 0
        self.held: dict[str, Any] | None = None  # a segment's last row, waiting for its validation values
        self.grad_norm: torch.Tensor | None = None
        self._t0 = time.perf_counter()
        self._wait0 = 0.0
        self._last_flush = time.monotonic()
        self._events: list[tuple[dict[str, Any], float]] = []  # rows not yet handed to TensorBoard

    # ---- files (rank 0) ---------------------------------------------------------------------------
    def open(self, start_step: int = 0) -> None:
        """Open the history for a run that starts (or resumes) at `start_step`: rows of later steps
        (run again now) are dropped, and TensorBoard hides its events of those steps (`purge_step`)."""
        if not start_step:  # a fresh start (a resume's interval came with the training state)
            self.interval_start = 0
        if self.rank != 0:
            return
        check_writable(self.run_dir)
        # A row held at the resumed step (saved before its segment's validation) is written again once that
        # validation has run: the copy the interrupted attempt may have written goes, here and in TensorBoard.
        keep = start_step - 1 if start_step and self.held_step == start_step else start_step
        try:
            kept = keep_until(self.path, keep)
            self.last_written = kept[-1]["step"] if kept else 0
            self.file = open(self.path, "a")  # noqa: SIM115 - appended to for the whole run, closed by close()
            if self.path.stat().st_size == 0:
                self.file.write(HEADER)
                self.file.flush()
        except OSError as err:
            raise _history_error(self.path, err, "write") from None
        if not self.tensorboard:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter

        self._summary = Summary

        try:
            if not start_step:  # a fresh start: the events of a discarded attempt go
                for old in self.tensorboard_dir.glob(f"{EVENTS_PREFIX}*"):
                    old.unlink()
            else:
                _after_existing_event_files(self.tensorboard_dir)
            self.writer = SummaryWriter(
                str(self.tensorboard_dir),
                purge_step=keep + 1 if start_step else None,
                flush_secs=TENSORBOARD_FLUSH_S,
            )
        except OSError as err:
            raise _history_error(self.tensorboard_dir, err, "write") from None

    def close(self) -> None:
        """Flush and close the files (also after an error: what was written stays readable)."""
        try:
            self.flush()
        except OSError:
            pass  # the run is ending on an error already, or the next open reports the folder
        file, writer, self.file, self.writer = self.file, self.writer, None, None
        if file is not None:
            file.close()
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass

    def _write(self, row: dict[str, Any]) -> None:
        self.last_written = row["step"]
        if row.get("train/loss") is not None and math.isfinite(row["train/loss"]):
            self.last_finite = (row["step"], row["train/loss"])
        if self.rank != 0 or self.file is None:
            return
        try:
            self.file.write(format_row(row))
            self.file.flush()
        except OSError as err:
            raise _history_error(self.path, err, "append to") from None
        if self.writer is not None:
            self._events.append((row, time.time()))
            if time.monotonic() - self._last_flush > TENSORBOARD_FLUSH_S:
                self.flush()

    def flush(self) -> None:
        """Hand the pending TensorBoard events to the writer and push them to disk (every
        TENSORBOARD_FLUSH_S, at segment ends and training-state saves; the CSV is flushed at every row)."""
        if self.writer is not None:
            # One event per row holding all its scalars, handed over in batches: add_scalar per value wakes
            # the SummaryWriter's writer thread each time, which cost a short CPU step ~20 % when every step logs.
            events, self._events = self._events, []
            try:
                for row, walltime in events:
                    values = [
                        self._summary.Value(tag=tensorboard_tag(name), simple_value=float(value))
                        for name, value in row.items()
                        if name not in ("step", "total_steps") and value is not None
                    ]
                    self.writer.file_writer.add_summary(self._summary(value=values), row["step"], walltime)
                self.writer.flush()
            except OSError as err:
                raise _history_error(self.tensorboard_dir, err, "write") from None
        self._last_flush = time.monotonic()

    # ---- fastai events ----------------------------------------------------------------------------
    def before_fit(self) -> None:
        model = self.learn.model
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._device = next(iter(model.parameters())).device
        self._t0 = time.perf_counter()
        self._wait0 = self._wait_s()
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)

    def _wait_s(self) -> float:
        stats = getattr(self.learn.dls.train, "stats", None) or {}
        return float(stats.get("wait_s", 0.0))

    def _logs_at(self, done: int) -> bool:
        return done % self.every == 0 or done == self.learn.dl.stop

    def after_loss(self) -> None:
        if not self.learn.training:
            return
        if self.buffer is None or self.count == len(self.buffer):
            grown = torch.empty(max(64, 2 * self.count), dtype=torch.float32, device=self.learn.loss.device)
            if self.buffer is not None:
                grown[: self.count] = self.buffer
            self.buffer = grown
        self.buffer[self.count] = self.learn.loss.detach()  # a device copy: no host sync
        self.count += 1

    def before_step(self) -> None:
        if not self._logs_at(self.learn.step + 1):
            return
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:  # one fused pass over the gradients, at logged steps only
            self.grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())

    def after_step(self) -> None:
        done = self.learn.step + 1
        if not self._logs_at(done):
            return
        row = self._row(done)
        if self.hold_segment_ends and done == self.learn.dl.stop:
            self.held = row  # written by close_segment, with the validation values when there are
        else:
            self._write(row)

    def close_segment(self, step: int, valid: dict[str, float] | None = None) -> None:
        """End of a fit segment at `step`: write its row, with the validation values when given."""
        row = self.held if self.held is not None and self.held["step"] == step else None
        self.held = None
        if row is None:
            if not valid or step <= self.last_written:
                return
            row = self._base_row(step)
        row.update({f"valid/{name}": value for name, value in (valid or {}).items()})
        self._write(row)
        self.flush()
        self._t0 = time.perf_counter()  # validation is not training time
        self._wait0 = self._wait_s()

    # ---- one row ----------------------------------------------------------------------------------
    def _base_row(self, step: int) -> dict[str, Any]:
        images = step * self.global_batch
        return {
            "step": step,
            "epoch": images / self.train_size,
            "images": images,
            "elapsed_s": self.elapsed_s,
            "total_steps": self.total_steps,
        }

    def _row(self, done: int) -> dict[str, Any]:
        """The row at step `done` from the interval since the previous row (one host sync); raises
        TrainingDiverged when a loss of the interval is not finite."""
        count, losses = self.count, self.buffer[: self.count] if self.count else None
        if losses is not None and self.world > 1 and dist.is_available() and dist.is_initialized():
            losses = losses.clone()
            dist.all_reduce(losses)
            losses /= self.world
        extra = [] if self.grad_norm is None else [self.grad_norm.reshape(1)]
        device_values = (
            torch.cat([*([losses] if losses is not None else []), *extra]).tolist() if count or extra else []
        )
        values = self.carried + device_values[:count]
        grad_norm = device_values[count] if extra else None
        seconds = self.interval_s + time.perf_counter() - self._t0
        wait = self._wait_s() - self._wait0
        steps = done - self.interval_start
        micro = max(1, len(values) // max(1, steps))
        mean = sum(values) / len(values) if values else float("nan")
        row = self._base_row(done)
        row.update(
            {
                "train/loss": mean,
                "train/lr": float(self.learn.opt.opt.param_groups[0]["lr"]),
                "train/grad_norm": grad_norm,
                "train/images_per_s": steps * self.global_batch / seconds if seconds > 0 else None,
                "train/data_wait": min(1.0, wait / seconds) if seconds > 0 else None,
                "train/gpu_peak_gib": self._gpu_peak_gib(),
                "elapsed_s": self.elapsed_s + seconds,
            }
        )
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        # The next interval starts here.
        self.elapsed_s += seconds
        self.interval_s, self.carried, self.count, self.grad_norm = 0.0, [], 0, None
        self.interval_start = done
        self._t0, self._wait0 = time.perf_counter(), self._wait_s()
        if bad is not None:
            self._diverged(row, values, bad, micro, done - steps)
        return row

    def _diverged(self, row: dict[str, Any], values: list[float], bad: int, micro: int, first: int) -> None:
        """Write the row that shows it and stop the run."""
        step = first + bad // micro + 1
        last = self.last_finite
        if bad >= micro:  # a whole finite step before it in this interval
            prior = first + (bad - 1) // micro + 1
            step_values = values[(prior - first - 1) * micro : (prior - first) * micro]
            last = (prior, sum(step_values) / len(step_values))
        self.held = None
        self._write(row)
        self.flush()
        raise TrainingDiverged(step, values[bad], last)

    def _gpu_peak_gib(self) -> float | None:
        device = getattr(self, "_device", None)
        if device is None or device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return peak

    # ---- the training state (xrstudy.training.callbacks.save_train_state / learner.restore) ------------
    def state_dict(self) -> dict[str, Any]:
        """The interval since the last row and what the next rows continue from (one host sync). Called
        as the training state is saved: the rows and events written so far reach the disk first."""
        carried = self.carried + (self.buffer[: self.count].tolist() if self.count else [])
        if self.file is not None:
            try:
                os.fsync(self.file.fileno())
            except OSError as err:
                raise _history_error(self.path, err, "write") from None
        self.flush()
        return {
            "carried": carried,
            "interval_start": self.interval_start,
            "interval_s": self.interval_s + time.perf_counter() - self._t0,
            "elapsed_s": self.elapsed_s,
            "last_finite": list(self.last_finite) if self.last_finite else None,
            "held": dict(self.held) if self.held else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.carried = [float(v) for v in state.get("carried", [])]
        self.interval_start = int(state.get("interval_start", 0))
        self.interval_s = float(state.get("interval_s", 0.0))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        last = state.get("last_finite")
        self.last_finite = (int(last[0]), float(last[1])) if last else None
        self.held = dict(state["held"]) if state.get("held") else None
        self.count, self.buffer = 0, None

    @property
    def held_step(self) -> int | None:
        return None if self.held is None else int(self.held["step"])


class ProbeHistory:
    """A linear probe's history (`xrstudy.training.probe.ProbeLog`), written as a fine-tuned run's is (history.csv
    and TensorBoard, through HistoryLogger's files): one row per regression fit in the order fitted, C from weak
    to strong on the training images left after the held-out part (train/loss on those, valid/loss on the
    held-out ones), then the chosen C fitted on every training image (its train/loss, no valid/loss). A rerun
    (the features come back from the feature cache) writes the rows again from the first."""

    def __init__(self, run_dir: str | os.PathLike[str], fits: int):
        self.logger = HistoryLogger(run_dir, total_steps=fits, every=1, global_batch=0, train_size=1)
        self.logger.open()
        self.step, self.fits, self._t0 = 0, fits, time.perf_counter()

    def extracted(self, images: int, total: int) -> None:
        pass  # the features are part of the result (`probe.features`); a row is a fit

    def _row(self, c: float, train_loss: float, valid_loss: float | None, images: int) -> None:
        self.step += 1
        finite = [v if v is not None and math.isfinite(v) else None for v in (train_loss, valid_loss)]
        row = {"step": self.step, "images": images, "train/loss": finite[0], "valid/loss": finite[1]}
        row.update({"probe/C": c, "elapsed_s": round(time.perf_counter() - self._t0, 3), "total_steps": self.fits})
        self.logger._write(row)

    def candidate(self, c: float, valid_loss: float, train_loss: float, images: int) -> None:
        self._row(c, train_loss, valid_loss, images)

    def chosen(self, c: float, how: str, train_loss: float, images: int) -> None:
        self.fits = self.step + 1  # 1-shot: no candidate could be held out, the chosen fit is the only row
        self._row(c, train_loss, None, images)
        self.logger.close()


__all__ = ["HistoryLogger", "HistoryError", "ProbeHistory", "check_writable", "TrainingDiverged"]
