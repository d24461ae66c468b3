"""Tests for camjax/errors.py: what camjax quotes of a library's exception."""

import errno
import os

from camjax import errors


def test_first_line_quotes_the_type_and_the_first_line_only():
    assert errors.first_line(ValueError("bad value\nTraceback detail")) == "ValueError: bad value"
    assert errors.first_line(RuntimeError("x" * 500)) == "RuntimeError: " + "x" * 160
    # An empty message (the copies this replaced raised IndexError on one).
    assert errors.first_line(OSError()) == "OSError"
    assert errors.first_line(KeyError("")) == "KeyError: ''"


def test_exception_chain_ends_on_a_cycle():
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__context__ = b, a
    assert list(errors.exception_chain(a)) == [a, b]


# The error tensorstore raised when a real tmpfs filled during a save (paths shortened).
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing "params.head.bias/0" in OCDBT database at local file '
    '"/tmp/run/checkpoints/30.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": '
    'Failed writing: "/tmp/run/checkpoints/30.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
    'ocdbt.process_0/d/5e5ebfa9b2dd5aa8ab5ab133943d73d4": Failed to write 20436 bytes to file 5: '
    "No space left on device [os_error_code='28']"
)


def test_the_reason_a_write_failed_is_the_operating_systems():
    assert errors.os_reason(ValueError(TENSORSTORE_ENOSPC)) == "No space left on device"
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", "/tmp/x")
    assert errors.os_reason(quota) == "Disk quota exceeded"
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as e:
            raise RuntimeError("commit failed") from e
    except RuntimeError as e:
        chained = e
    assert errors.os_reason(chained) == "Input/output error"
    assert errors.os_reason(ValueError("Destination /tmp/x/3 already exists.")) == ""


def test_cannot_write_names_the_file_and_the_reason():
    renamed = OSError(errno.EISDIR, os.strerror(errno.EISDIR), "/w/a.tmp", None, "/w/a")
    assert errors.cannot_write(renamed, "/w") == "cannot write /w/a (Is a directory)"
    bare = OSError("50176 requested and 38384 written")  # numpy's: no errno, no file
    assert errors.cannot_write(bare, "/w") == (
        "cannot write /w (OSError: 50176 requested and 38384 written)"
    )


def test_an_int_at_least_takes_numpy_integers_and_refuses_bools_and_floats():
    import numpy as np

    assert errors.is_int_at_least(3, 3) and errors.is_int_at_least(np.int64(3), 3)
    assert errors.is_int_at_least(np.uint8(0), 0)
    assert not errors.is_int_at_least(2, 3)
    # True is 1 to ConfigDict and numpy; 3.0 is a float that a count cannot take.
    for value in (True, np.True_, 3.0, np.float32(3), "3", None):
        assert not errors.is_int_at_least(value, 0), value
