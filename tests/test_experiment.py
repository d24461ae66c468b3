"""Tests for camjax/experiment.py: what the entry points' logging shows of the libraries."""

import logging
import os
import sys

import orbax.checkpoint
import pytest
from absl import logging as absl_logging

from camjax import experiment

ORBAX_FILE = os.path.join(os.path.dirname(orbax.checkpoint.__file__), "checkpoint_manager.py")


def formatted(path: str) -> str:
    """An ERROR record logged through absl from a file at `path` with a traceback, as absl's
    handler formats it once the 'absl' logger's filters have passed it."""
    try:
        raise ValueError("RESOURCE_EXHAUSTED: No space left on device")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("absl", logging.ERROR, path, 1, "Save failed.", None, exc_info)
    assert logging.getLogger("absl").filter(record)
    return logging.Formatter().format(record)


@pytest.fixture
def restore_logging():
    """Undoes setup_logging's changes after the test."""
    absl = logging.getLogger("absl")
    verbosity, level = absl_logging.get_verbosity(), logging.getLogger("camjax").level
    filters = list(absl.filters)
    yield
    absl_logging.set_verbosity(verbosity)
    logging.getLogger("camjax").setLevel(level)
    absl.filters[:] = filters


def test_orbax_records_keep_one_line_unless_tracebacks_are_asked_for(restore_logging, monkeypatch):
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    experiment.setup_logging()
    assert formatted(ORBAX_FILE) == "Save failed."
    # Other records, camjax's among them, keep their traceback.
    assert "Traceback" in formatted(experiment.__file__)
    logging.getLogger("absl").filters.clear()
    monkeypatch.setenv("CAMJAX_TRACEBACK", "1")
    experiment.setup_logging()
    assert "Traceback" in formatted(ORBAX_FILE)
