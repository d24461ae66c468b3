"""Tests for camjax/train/interrupts.py on one process: the flags Ctrl-C and SIGTERM set, the
stops they ask for, and the handlers put back."""

import os
import signal

import pytest

from camjax import checkpoint
from camjax.train import interrupts


@pytest.fixture
def manager(tmp_path):
    with checkpoint.create_manager(str(tmp_path), 1) as manager:
        yield manager


def _send(signum):
    os.kill(os.getpid(), signum)


def test_a_signal_sets_its_own_flag_and_the_next_one_of_its_kind_acts_at_once():
    """Ctrl-C sets `requested`, SIGTERM `terminated`; each handler is put back after the first
    signal of its kind (a second one acts at once, as usual), and every one on exit."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with interrupts.StopRequest() as stop:
        _send(signal.SIGTERM)
        assert (stop.requested, stop.terminated) == (False, True)
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) == stop._handle
        _send(signal.SIGINT)
        assert (stop.requested, stop.terminated) == (True, True)
        assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_handlers_are_put_back_on_exit_when_no_signal_came():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with interrupts.StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert {s: signal.getsignal(s) for s in before} == before


def test_ctrl_c_stops_before_the_step_unless_a_sigterm_save_comes_first(manager):
    with interrupts.StopRequest() as stop:
        stop.raise_if_requested(5, manager)
        assert not stop.preempted(agreed=True)
        stop.requested = True
        assert not stop.preempted(agreed=True)
        with pytest.raises(
            interrupts.TrainingInterrupted,
            match=r"^stopped by Ctrl-C before step 5; nothing was saved yet \(a rerun starts af",
        ) as stopped:
            stop.raise_if_requested(5, manager)
        assert not isinstance(stopped.value, interrupts.TrainingPreempted)
        stop.terminated = True
        try:
            stop.raise_if_requested(5, manager)
        except interrupts.TrainingInterrupted as stopped:
            pytest.fail(f"stopped before the SIGTERM's save: {stopped}")
        assert stop.preempted(agreed=False)


def test_a_sigterm_stop_names_the_step_it_saved(manager, monkeypatch):
    """Before any save the line said 'the newest checkpoint is step None'."""
    with interrupts.StopRequest() as stop:
        with pytest.raises(interrupts.TrainingPreempted) as stopped:
            stop.raise_preempted(4, manager)
        assert str(stopped.value) == (
            "stopped by SIGTERM after step 4; nothing was saved yet (a rerun starts afresh)."
        )
        monkeypatch.setattr(checkpoint, "last_saved", lambda m: 4 if m is manager else None)
        with pytest.raises(interrupts.TrainingPreempted) as stopped:
            stop.raise_preempted(4, manager)
        assert str(stopped.value) == (
            f"stopped by SIGTERM after step 4; the newest checkpoint is step 4 in "
            f"{manager.directory} (rerun to resume)."
        )


def test_the_next_batch_is_the_iterators_when_no_signal_came(manager):
    with interrupts.StopRequest() as stop:
        assert stop.next_batch(iter([7, 8]), 1, manager) == 7
