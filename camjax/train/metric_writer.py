"""Where training metrics go: a JSONL file in the workdir (always) and TensorBoard (if installed).

Only process 0 writes, so a multi-host run produces one log.
"""

import json
import os
from typing import Any

import jax
import numpy as np


class MetricWriter:
    """Appends `{"step": s, **metrics}` lines to workdir/metrics.jsonl (and TensorBoard scalars)."""

    def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, filename)
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            try:  # optional: only when the user has a TensorBoard writer installed
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self._tb = None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        clean = {k: _to_python(v) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float | int):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _to_python(v: Any) -> Any:
    if isinstance(v, np.ndarray | np.generic | jax.Array):
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()
    return v
