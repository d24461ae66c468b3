"""Multi-host start-up: `jax.distributed.initialize` when the environment asks for it; and
process 0's problems and run ids (it alone reads and writes workdir files) made every
process's.

Set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or CAMJAX_DISTRIBUTED=1 on
clusters jax auto-detects (Cloud TPU pods, SLURM). A single host needs nothing: jax.distributed
must not be initialised there. On CPU devices the cross-process collectives are jax's default
(gloo), which is what a 2-process run on one machine uses (README, "Multi-GPU hosts and TPU
pods").
"""

import os
import signal
from collections.abc import Callable

import jax
import numpy as np


def initialize(save_on_sigterm: bool = False) -> bool:
    """Initialises jax.distributed if the environment names a multi-host job; True if it did.

    Its preemption service then catches SIGTERM, for a training run to save one step on every
    process before it stops (`save_on_sigterm`, see `preemption_service`); anything else has
    nothing to save, and SIGTERM stops it at once, as on one host, not at the scheduler's
    SIGKILL."""
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    requested = os.environ.get("CAMJAX_DISTRIBUTED", "") not in ("", "0")
    if not (explicit or requested):
        return False
    # jax reads JAX_COORDINATOR_ADDRESS itself but not the process count and id: without
    # passing them, it falls back to cluster auto-detection, which fails off a managed cluster.
    count, index = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=count, process_id=index)
    if not save_on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return True


def _env_int(name: str) -> int | None:
    """The integer in environment variable `name`, None where it is unset or empty."""
    value = os.environ.get(name, "")
    try:
        return int(value) if value else None
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {value!r}.") from None


def shared_problem(problem: str, elsewhere: str) -> str:
    """Process 0's `problem` ('' for none) on every process of a multi-host job, `elsewhere`
    standing in for it on the others (their own `problem` is not looked at). Each process
    raises when this is not '': one that went on alone would wait in the next collective (an
    orbax save's barrier) for good."""
    if jax.process_count() == 1:
        return problem
    from jax.experimental import multihost_utils

    if not multihost_utils.broadcast_one_to_all(np.int32(bool(problem))):
        return ""
    return problem if jax.process_index() == 0 else elsewhere


def shared_hex(value: str, digits: int) -> str:
    """Process 0's `value`, a string of `digits` lowercase hex digits (a multiple of 8) or ''
    for none, on every process of a multi-host job."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    # A flag for '' and the digits as words: every process must send arrays of one shape.
    words = np.zeros(1 + digits // 8, np.uint32)
    if value:
        words[0], words[1:] = 1, np.frombuffer(bytes.fromhex(value), np.uint32)
    words = np.asarray(multihost_utils.broadcast_one_to_all(words), np.uint32)
    return bytes(words[1:]).hex() if words[0] else ""


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process of a multi-host job (a collective)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def preemption_service() -> bool:
    """Whether jax's preemption service runs: `jax.distributed.initialize` starts it (unless
    jax_enable_preemption_service is off), and it then catches SIGTERM itself and agrees on
    the step at which every process saves (`multihost_utils.reached_preemption_sync_point`)."""
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


def run_together(
    work: Callable[[], None], describe: Callable[[OSError], str], elsewhere: str, here: bool = True
) -> None:
    """Runs `work` where `here` (e.g. on process 0 alone) and, once it failed on any process of
    a multi-host job, raises on every one (a collective, free on one process): one process
    stopping alone would leave the others in their next collective for good. An OSError is
    raised again as `describe(error)`, one line, and as `elsewhere` on the other processes;
    anything else (a bug) keeps its traceback where it was raised."""
    error = None
    if here:
        try:
            work()
        except Exception as e:  # shared whatever it is: the other processes would wait
            error = e
    if not any_process(error is not None):
        return
    if error is None:
        raise OSError(elsewhere)
    if isinstance(error, OSError):
        raise OSError(describe(error)) from None
    raise error
