"""Where training metrics go: a JSONL file in the workdir (always) and TensorBoard (if installed),
and the progress bar a person watches.

Only process 0 writes, so a multi-host run produces one log.
"""

import contextlib
import errno
import json
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm

from camjax import distributed

_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota: the fix is to free space


class MetricWriter:
    """Appends `{"step": s, **metrics}` lines to workdir/metrics.jsonl (and TensorBoard scalars)."""

    def __init__(self, workdir: str, start_step: int = 0):
        """start_step: the step training (re)starts from. Rows a killed run wrote after it are
        dropped, as they are about to be written again: one record per step and kind."""
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        problem = self._open(workdir, start_step) if self.active else ""
        elsewhere = f"process 0 cannot use {self.path} (its error says why)."
        if problem := distributed.shared_problem(problem, elsewhere):
            raise OSError(problem)

    def _open(self, workdir: str, start_step: int) -> str:
        """Process 0's start: '' once ready, else why not, in one line."""
        try:
            os.makedirs(workdir, exist_ok=True)
            self._truncate_after(start_step)
            with contextlib.suppress(ImportError):  # optional: a TensorBoard writer installed
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except OSError as e:
            fix = "free space there" if e.errno in _NO_ROOM else "restore or remove it"
            return (
                f"cannot read and rewrite {e.filename or self.path} ({e.strerror}); {fix}, or "
                "train in another --workdir."
            )
        return ""

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends the row on process 0. Every process calls it at the same steps: a failure
        stops them all with process 0's one line (one process stopping alone left the others
        in their next collective until jax's shutdown barrier aborted them, 5 minutes later)."""
        clean = {k: _to_python(v) for k, v in metrics.items()}
        problem = self._append(step, clean) if self.active else ""
        elsewhere = f"process 0 could not append to {self.path} (its error says why)."
        if problem := distributed.shared_problem(problem, elsewhere):
            raise OSError(problem)

    def has_row(self, step: int, key: str) -> bool:
        """Whether metrics.jsonl holds a row of `step` with `key`, on every process (process 0
        reads it; a collective)."""
        found = False
        if self.active and os.path.exists(self.path):
            with open(self.path) as f:
                found = any(_row_step(line) == step and key in json.loads(line) for line in f)
        return distributed.any_process(found)

    def _append(self, step: int, clean: dict[str, Any]) -> str:
        """Appends one row; '' once done, else why not, in one line (a line cut short is
        dropped on resume)."""
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": int(step), **clean}) + "\n")
            if self._tb is not None:
                for k, v in clean.items():
                    if isinstance(v, float | int):
                        self._tb.add_scalar(k, v, step)
                self._tb.flush()
        except OSError as e:
            if e.errno in _NO_ROOM:
                fix = "free space there"
            elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                fix = "make it writable"
            else:
                fix = "fix the cause"
            return (  # metrics.jsonl, or TensorBoard's event file
                f"could not append to {e.filename or self.path} ({e.strerror}); {fix} or train "
                "in another --workdir, then rerun: training resumes from its newest checkpoint, "
                "if any."
            )
        return ""

    def _truncate_after(self, step: int) -> None:
        """Keeps the rows up to `step` (and drops a line cut short by a kill), atomically."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            try:
                lines = f.readlines()
            except UnicodeDecodeError:  # its rows are JSON, ASCII as json.dumps writes them
                raise OSError(errno.EILSEQ, "not UTF-8 text: damaged", self.path) from None
        kept = [line for line in lines if (row := _row_step(line)) is not None and row <= step]
        if kept == lines:
            return
        copy = self.path + ".tmp"
        try:
            with open(copy, "w") as f:
                f.writelines(kept)
            os.replace(copy, self.path)
        except OSError as e:  # the log is as it was: no half-written copy is left beside it
            with contextlib.suppress(OSError):
                os.remove(copy)
            raise OSError(e.errno, e.strerror, self.path) from e

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _row_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line cut short (no newline or bad JSON)."""
    if not line.endswith("\n"):
        return None
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _to_python(v: Any) -> Any:
    if isinstance(v, np.ndarray | np.generic | jax.Array):
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()
    return v


class Progress:
    """What a person and the logs see: metrics.jsonl rows and the progress bar (process 0)."""

    def __init__(self, workdir: str, start: int, num_steps: int, fixed_threshold: float):
        self.writer = MetricWriter(workdir, start)
        self.bar = tqdm.tqdm(
            total=num_steps, initial=start, desc="train", disable=jax.process_index() != 0
        )
        self.fixed_threshold = fixed_threshold
        self.t0 = time.time()

    def train(self, step: int, host_sums: dict[str, Any]) -> None:
        metrics = train_metrics(host_sums, time.time() - self.t0)
        self.writer.write(step, metrics)
        loss, acc = metrics["train/loss"], metrics["train/top1_acc"]
        self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.1f}")
        self.bar.update(step - self.bar.n)

    def validation(self, step: int, metrics: dict[str, Any]) -> None:
        self.writer.write(step, metrics)
        self.bar.write(val_line(step, metrics, self.fixed_threshold))

    def restart_clock(self) -> None:
        self.t0 = time.time()  # throughput excludes evaluation and checkpointing

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def train_metrics(host_sums: dict[str, Any], seconds: float) -> dict[str, float]:
    """The logged training metrics of the summed steps since the last log, and throughput."""
    n = host_sums["count"]
    return {
        "train/loss": host_sums["loss"] / n,
        "train/top1_acc": 100 * host_sums["top1"] / n,
        "train/top5_acc": 100 * host_sums["top5"] / n,
        "train/images_per_sec": n / seconds,
    }


def val_line(step: int, metrics: dict[str, Any], fixed_threshold: float) -> str:
    """The line printed under the progress bar for a validation during training."""
    return (
        f"step {step}: val top-1 cls {metrics['val/top1_cls']:.1f}%, GT-known loc "
        f"{metrics['val/gt_known_loc']:.1f}% at its best CAM threshold "
        f"{metrics['val/threshold']:.2f}, {metrics['val/gt_known_loc_fixed']:.1f}% at "
        f"{fixed_threshold:.2f}"
    )
