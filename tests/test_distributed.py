"""Tests for camjax/distributed.py in one process: jax's multi-process calls are stubs.

`jax.process_count` / `jax.process_index` say which process of a job this one plays;
`multihost_utils.broadcast_one_to_all` and `process_allgather` record what this process sends
and return what the job's processes would have sent; `jax.distributed.initialize` and
`signal.signal` record their calls. The real multi-process runs are tests/train/test_multihost.py
(slow).
"""

import signal
import sys

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from camjax import distributed

ENVIRONMENT = (
    "JAX_COORDINATOR_ADDRESS",
    "CAMJAX_DISTRIBUTED",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
)


def _as_process(monkeypatch, index: int, count: int = 2) -> None:
    monkeypatch.setattr(jax, "process_count", lambda: count)
    monkeypatch.setattr(jax, "process_index", lambda: index)


def _no_collective(*args, **kwargs):
    raise AssertionError("a collective on a single process")


class _Broadcast:
    """broadcast_one_to_all: records what this process sends, returns process 0's value
    (this process's own on process 0, `received` elsewhere)."""

    def __init__(self, received=None):
        self.received, self.sent = received, []

    def __call__(self, value):
        self.sent.append(np.asarray(value).copy())
        return value if jax.process_index() == 0 else self.received


class _Allgather:
    """process_allgather: records what this process sends, returns every process's flag."""

    def __init__(self, flags):
        self.flags, self.sent = flags, []

    def __call__(self, value):
        self.sent.append(np.asarray(value).copy())
        return np.asarray(self.flags, np.int32)


@pytest.fixture
def environment(monkeypatch):
    """No multi-host variables; jax.distributed.initialize and signal.signal record calls."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    calls = {"initialize": [], "signal": []}
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda **kwargs: calls["initialize"].append(kwargs)
    )
    monkeypatch.setattr(signal, "signal", lambda *args: calls["signal"].append(args))
    return calls


@pytest.fixture
def preemption_service_flag():
    """Restores jax_enable_preemption_service after a test changes it."""
    before = jax.config.jax_enable_preemption_service
    yield
    jax.config.update("jax_enable_preemption_service", before)


def test_initialize_does_nothing_on_a_single_host(monkeypatch, environment):
    """No JAX_COORDINATOR_ADDRESS and CAMJAX_DISTRIBUTED unset, empty or 0: one host, where
    jax.distributed must not be initialised and SIGTERM is left alone."""
    assert distributed.initialize() is False
    for value in ("", "0"):
        monkeypatch.setenv("CAMJAX_DISTRIBUTED", value)
        monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
        assert distributed.initialize() is False
    assert environment == {"initialize": [], "signal": []}


def test_initialize_passes_the_process_count_and_id_as_ints(monkeypatch, environment):
    """jax reads the coordinator address itself but not the count and id: they are passed as
    ints (JAX_PROCESS_ID=0 included), and SIGTERM stops the process at once again."""
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.initialize() is True
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert distributed.initialize() is True
    assert environment["initialize"] == [
        {"num_processes": 4, "process_id": 3},
        {"num_processes": 4, "process_id": 0},
    ]
    assert all(type(v) is int for call in environment["initialize"] for v in call.values())
    assert environment["signal"] == [(signal.SIGTERM, signal.SIG_DFL)] * 2


def test_initialize_on_request_leaves_the_counts_to_jax_and_sigterm_to_a_saving_run(
    monkeypatch, environment
):
    """CAMJAX_DISTRIBUTED=1 alone: jax auto-detects the cluster (no count, no id). A training
    run that saves on SIGTERM keeps the preemption service's handler."""
    monkeypatch.setenv("CAMJAX_DISTRIBUTED", "1")
    assert distributed.initialize(save_on_sigterm=True) is True
    assert environment["initialize"] == [{"num_processes": None, "process_id": None}]
    assert environment["signal"] == []


@pytest.mark.parametrize(
    "initialized, enabled, expected",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_preemption_service_runs_only_after_initialize_with_the_service_enabled(
    monkeypatch, preemption_service_flag, initialized, enabled, expected
):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: initialized)
    jax.config.update("jax_enable_preemption_service", enabled)
    assert distributed.preemption_service() is expected


def test_a_single_process_keeps_its_own_values_without_collectives(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", _no_collective)
    monkeypatch.setattr(multihost_utils, "process_allgather", _no_collective)
    assert distributed.shared_problem("disk full", "elsewhere") == "disk full"
    assert distributed.shared_problem("", "elsewhere") == ""
    assert distributed.shared_hex("0123456789abcdef", 16) == "0123456789abcdef"
    assert distributed.shared_hex("", 16) == ""
    assert distributed.any_process(True) is True
    assert distributed.any_process(False) is False


def test_shared_problem_is_process_0s_problem_and_elsewhere_on_the_others(monkeypatch):
    """Process 0 broadcasts whether it has a problem (1 or 0); it raises its own, the others
    `elsewhere`, whatever their own problem is."""
    broadcast = _Broadcast(received=np.int32(1))
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    _as_process(monkeypatch, 0)
    assert distributed.shared_problem("disk full", "process 0 failed") == "disk full"
    assert distributed.shared_problem("", "process 0 failed") == ""
    _as_process(monkeypatch, 1)
    assert distributed.shared_problem("", "process 0 failed") == "process 0 failed"
    assert distributed.shared_problem("mine", "process 0 failed") == "process 0 failed"
    broadcast.received = np.int32(0)
    assert distributed.shared_problem("mine", "process 0 failed") == ""
    assert [int(v) for v in broadcast.sent] == [1, 0, 0, 1, 1]


@pytest.mark.skipif(sys.byteorder != "little", reason="the words are written little-endian")
def test_shared_hex_sends_a_flag_and_the_digits_as_words_and_decodes_them(monkeypatch):
    """'0123456789abcdef' is the bytes 01 23 45 67 89 ab cd ef: the native (little-endian)
    uint32 words 0x67452301 and 0xefcdab89, after a flag word 1; '' is all zeros of the same
    shape. Another process decodes process 0's words back to the digits."""
    words = [1, 0x67452301, 0xEFCDAB89]
    broadcast = _Broadcast(received=np.array(words, np.uint32))
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    _as_process(monkeypatch, 0)
    assert distributed.shared_hex("0123456789abcdef", 16) == "0123456789abcdef"
    assert distributed.shared_hex("", 16) == ""
    _as_process(monkeypatch, 1)
    assert distributed.shared_hex("", 16) == "0123456789abcdef"
    broadcast.received = np.zeros(3, np.uint32)
    assert distributed.shared_hex("", 16) == ""
    sent = [v.astype(np.uint32).tolist() for v in broadcast.sent]
    assert sent == [words, [0, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_shared_hex_decodes_a_run_and_owner_token_of_32_digits(monkeypatch):
    """run_config.start_run's 32 digits (5 words), words with the top bit set included, as
    another process receives them, as uint32 words or as int32 words of the same bits."""
    value = "ffffffff00000000deadbeef80000001"
    raw = np.frombuffer(bytes.fromhex(value), np.uint8)
    words = np.concatenate([[1], raw.view(np.uint32)]).astype(np.uint32)
    _as_process(monkeypatch, 1)
    for received in (words, words.view(np.int32)):
        monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", _Broadcast(received))
        assert distributed.shared_hex("", 32) == value


def test_any_process_is_whether_any_process_sent_its_flag(monkeypatch):
    _as_process(monkeypatch, 1)
    for flags, expected in (([0, 0], False), ([0, 1], True), ([1, 0], True), ([1, 1], True)):
        allgather = _Allgather(flags)
        monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
        assert distributed.any_process(bool(flags[1])) is expected
        assert [int(v) for v in allgather.sent] == [flags[1]]


def _fail(error):
    def work():
        raise error

    return work


def test_run_together_runs_work_only_here_and_returns_when_no_process_failed(monkeypatch):
    _as_process(monkeypatch, 1)
    allgather = _Allgather([0, 0])
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    ran = []
    distributed.run_together(lambda: ran.append(1), str, "elsewhere")
    distributed.run_together(lambda: ran.append(2), str, "elsewhere", here=False)
    assert ran == [1]
    assert [int(v) for v in allgather.sent] == [0, 0]


def test_run_together_raises_the_described_oserror_where_it_failed(monkeypatch):
    """One line, `describe(error)`, not chained to the OSError it describes; the failure is
    shared with the other processes (flag 1)."""
    _as_process(monkeypatch, 0)
    allgather = _Allgather([1, 0])
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    error = PermissionError(13, "Permission denied", "/out/a.png")
    described = []

    def describe(e):
        described.append(e)
        return "cannot write /out/a.png (permission denied)"

    with pytest.raises(OSError) as raised:
        distributed.run_together(_fail(error), describe, "process 0 failed")
    assert str(raised.value) == "cannot write /out/a.png (permission denied)"
    assert type(raised.value) is OSError
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert described == [error]
    assert [int(v) for v in allgather.sent] == [1]


def test_run_together_raises_elsewhere_on_the_processes_that_did_not_fail(monkeypatch):
    """Whether they ran nothing (`here` False) or ran `work` without a failure."""
    _as_process(monkeypatch, 1)
    monkeypatch.setattr(multihost_utils, "process_allgather", _Allgather([1, 0]))
    for here in (False, True):
        with pytest.raises(OSError, match="^process 0 cannot write /out$"):
            distributed.run_together(lambda: None, str, "process 0 cannot write /out", here=here)


def test_run_together_shares_a_bug_and_raises_it_unchanged_where_it_was_raised(monkeypatch):
    """A non-OSError is shared too (the others would wait), then keeps its type and traceback."""
    _as_process(monkeypatch, 0)
    allgather = _Allgather([1, 0])
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    bug = KeyError("image")
    with pytest.raises(KeyError) as raised:
        distributed.run_together(_fail(bug), lambda e: "described", "elsewhere")
    assert raised.value is bug
    assert [int(v) for v in allgather.sent] == [1]


@pytest.mark.parametrize("name", ["JAX_NUM_PROCESSES", "JAX_PROCESS_ID"])
def test_a_count_or_id_that_is_not_a_number_is_refused_naming_its_variable(
    monkeypatch, environment, name
):
    """JAX_NUM_PROCESSES=two was a bare "invalid literal for int() with base 10: 'two'", naming
    neither the variable nor what it should hold; nothing is initialised."""
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    monkeypatch.setenv(name, "two")
    with pytest.raises(ValueError, match=rf"^{name} must be an integer; got 'two'\.$"):
        distributed.initialize()
    assert environment["initialize"] == []
