"""Evaluation checks its workdir before any work: results are never computed for nowhere."""

import pytest

from camjax.evaluation import run as run_lib
from configs import tiny


def test_an_unwritable_workdir_fails_before_restoring(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # Without the check this would fail later, on the missing checkpoint.
    with pytest.raises(PermissionError, match=r"a_file/run is not a writable directory"):
        run_lib.run_evaluation(tiny.get_config(), str(blocker / "run"))
