"""How a training run stops on request: Ctrl-C between steps, SIGTERM after saving the step.

Used by `loop.train_and_evaluate`; train.py turns the exceptions into exit codes 130 and 143.
"""

import signal
import threading

import jax

from camjax import checkpoint, distributed


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training between steps, after any save in flight completed."""


class TrainingPreempted(TrainingInterrupted):
    """SIGTERM (a scheduler's preemption or time limit) stopped training after the step it
    reached was saved and verified finite: rerunning resumes from there."""


class StopRequest:
    """Turns Ctrl-C (SIGINT) and SIGTERM into flags the loop reads between steps.

    Ctrl-C stops before the next step (in a multi-host job, the next step all processes sync
    at), keeping what was saved. SIGTERM, what schedulers send before they kill a job (SLURM,
    Kubernetes, preemptible VMs), saves the step just taken first: a preempted run loses no
    work. A KeyboardInterrupt raised wherever the signal lands can be swallowed (inside a
    garbage collector callback of XLA's, Python only prints "Exception ignored") and training
    goes on; a flag cannot be lost. A second signal of either kind acts at once, as usual
    (but for SIGTERM in a multi-host job, which jax's preemption service keeps catching).
    Used as a context manager: the handlers are put back on exit.
    """

    def __init__(self):
        self.requested = False  # Ctrl-C
        self.terminated = False  # SIGTERM, where jax's preemption service does not catch it
        # Multi-host, jax's service has its own SIGTERM handler (a Python one would replace
        # it) and agrees on one step for every process at no cost per step.
        self._jax_notices = distributed.preemption_service()
        self._checks = 0  # the service's sync counter: one per check, the same in every process
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            signals = [signal.SIGINT] + ([] if self._jax_notices else [signal.SIGTERM])
            for signum in signals:
                previous = signal.signal(signum, self._handle)
                # None: a handler installed outside Python, which cannot be put back.
                self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.requested = True
        else:
            self.terminated = True
        signal.signal(signum, self._previous.pop(signum))

    def raise_if_requested(self, step: int, manager, agreed: bool = False) -> None:
        """Raises TrainingInterrupted if Ctrl-C came. A multi-host job's processes get it at
        different moments, and one stopping alone would leave the others in their next
        collective: they stop together, only at the steps they all check (`agreed`), once
        any of them got it."""
        requested = self.requested and not self.terminated  # a SIGTERM's save comes first
        if jax.process_count() > 1:
            if not agreed:
                return
            requested = distributed.any_process(requested)
        if requested:
            raise TrainingInterrupted(_stopped("Ctrl-C", f"before step {step}", manager))

    def preempted(self, agreed: bool) -> bool:
        """Whether training stops here (after each step, and between a validation's batches),
        once the step reached is saved: SIGTERM came, to any process. Every process of a
        multi-host job answers the same at every check: jax's service picks the check; without
        it (turned off), the checks they all sync at (`agreed`) decide."""
        if self._jax_notices:
            from jax.experimental import multihost_utils

            # The service wants an id that every process advances alike at each call: a count
            # of the checks, since a validation's checks fall between two steps.
            self._checks += 1
            return multihost_utils.reached_preemption_sync_point(self._checks)
        if jax.process_count() > 1:
            return agreed and distributed.any_process(self.terminated)
        return self.terminated

    def next_batch(self, batches, step: int, manager):
        """next(batches), or the stop a signal asked for when the input workers died of it:
        the group's signal can reach them while they start, before they ignore it."""
        try:
            return next(batches)
        except RuntimeError:
            if not (self.terminated or self.requested):
                raise
            if self.terminated:
                raise TrainingPreempted(
                    _stopped("SIGTERM", f"before step {step}", manager)
                ) from None
            raise TrainingInterrupted(_stopped("Ctrl-C", f"before step {step}", manager)) from None

    def raise_preempted(self, step: int, manager) -> None:
        """Raises TrainingPreempted once `step`'s save has completed (or failed: the message
        names the newest complete step either way)."""
        raise TrainingPreempted(_stopped("SIGTERM", f"after step {step}", manager))

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _stopped(signal_name: str, when: str, manager) -> str:
    """The one line a stopped run ends with, once any save in flight has completed."""
    last = checkpoint.last_saved(manager)
    if last is None:
        return f"stopped by {signal_name} {when}; nothing was saved yet (a rerun starts afresh)."
    return (
        f"stopped by {signal_name} {when}; the newest checkpoint is step {last} in "
        f"{manager.directory} (rerun to resume)."
    )
