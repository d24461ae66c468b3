"""Test session set-up: 8 forced CPU devices, so sharding runs for real without accelerators.

The flag must be set before jax initialises its backends, hence at import time of conftest. It
is added to whatever XLA_FLAGS already holds (a user's own flags, even an empty string), and
replaces a device count given there, since tests assert 8 devices.
The session also compiles at LLVM's lowest optimisation level, on jaxlib 0.10 with XLA's legacy
element-wise emitters (see `with_test_flags`); tests that run a real job for long (the learning
guard, the paper-size VGG16 step) start their own process at the default.

The session also shares one persistent compilation cache, fresh for each session, with the
`train.py`/`evaluate.py` processes the tests start: many tests build the same tiny model's
init, train and eval steps in new closures, which jit would otherwise compile each time. A
cached executable is the one XLA compiled, so results are bit-identical; tracing (what the
retracing tests count) still happens. That cache and every other temporary file of the session
live in one temporary folder, removed at exit.
"""

import atexit
import fcntl
import hashlib
import os
import pathlib
import shutil
import tempfile

import pytest

from tests.xla_flags import with_test_flags

os.environ["XLA_FLAGS"] = with_test_flags(os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# numba checks a cached kernel against its own file's timestamp only, and maxtree.py's kernels
# call unionfind.py's: an edit of unionfind.py alone ran the old kernels, tests green (a
# mutation review's finding). The tests' numba cache is kept per content of those files.
if "NUMBA_CACHE_DIR" not in os.environ:
    _sources = sorted(pathlib.Path(__file__).parents[1].glob("camjax/localization/*.py"))
    _digest = hashlib.sha256(b"".join(p.read_bytes() for p in _sources)).hexdigest()[:16]
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"camjax-numba-{_digest}")

# tensorflow-datasets leaves an empty tmp*tfds folder in the temporary directory for every
# builder of data not prepared yet (DatasetInfo.initialize_from_bucket, its GCS lookup off):
# ~130 a test run. The session's temporary files, its workers' and processes' included, go to
# one folder removed at exit. pytest's tmp_path folders stay where pytest keeps its last runs.
if "CAMJAX_TESTS_TMPDIR" not in os.environ:
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    _session_tmp = tempfile.mkdtemp(prefix="camjax-tests-")
    atexit.register(shutil.rmtree, _session_tmp, ignore_errors=True)
    os.environ["CAMJAX_TESTS_TMPDIR"] = os.environ["TMPDIR"] = _session_tmp
    tempfile.tempdir = _session_tmp

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="xla-cache-")
    # Cache every executable, however quick to compile: the tiny models' steps compile in
    # well under the default one second each, and there are hundreds of them.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id):
    """configs/tiny.py trained to its end once for the whole test run: (config, workdir). Under
    xdist the first worker to need it trains it, holding a lock, and the others wait for it and
    read the same run (several test files use it, and it took 5-7 s a worker). Tests that write
    into the workdir (evaluation's metrics.json, say) work on a copy."""
    from camjax.train import loop
    from configs import tiny

    # The workers' temporary directories share a parent that is fresh for each test run
    # (pytest-xdist's own recipe for session-wide data); without xdist, the session's own.
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "tiny_run"
    root.mkdir(exist_ok=True)
    config = tiny.get_config()
    config.data.data_dir = str(root / "tfds")
    workdir = str(root / "run")
    # fcntl (POSIX, as the suite's other process tests): filelock is no dependency on 3.12.
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "trained").exists():
            loop.train_and_evaluate(config, workdir)
            (root / "trained").touch()
    return config, workdir


def pytest_collection_modifyitems(config, items):
    """Files holding `slow` tests run first. With one file per worker (pyproject's
    `--dist loadfile`), a minute-long file started last would end the run alone on one core."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order kept otherwise
