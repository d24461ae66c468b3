"""The test session's 8 CPU devices hold whatever XLA_FLAGS the user's environment sets."""

import os
import subprocess
import sys
import tempfile

import pytest

from tests import xla_flags
from tests.xla_flags import with_device_count, with_test_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_device_count_is_added_to_the_users_flags():
    assert with_device_count("") == "--xla_force_host_platform_device_count=8"
    assert with_device_count("--xla_cpu_max_isa=AVX2") == (
        "--xla_cpu_max_isa=AVX2 --xla_force_host_platform_device_count=8"
    )
    assert with_device_count("--xla_force_host_platform_device_count=2 --a=1") == (
        "--a=1 --xla_force_host_platform_device_count=8"
    )


def test_the_suite_compiles_at_the_lowest_level_unless_the_user_sets_one():
    timeout = "--xla_cpu_collective_call_terminate_timeout_seconds=600"
    emitters = (
        " --xla_cpu_use_fusion_emitters=false --xla_cpu_experimental_ynn_fusion_type="
        if xla_flags.version_below(0, 11)
        else ""
    )
    assert with_test_flags("") == (
        "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
        f"{emitters} {timeout}"
    )
    assert with_test_flags("--xla_backend_optimization_level=2") == (
        f"--xla_backend_optimization_level=2 --xla_force_host_platform_device_count=8 {timeout}"
    )


def test_started_processes_compile_as_the_session_unless_calibrated(monkeypatch):
    timeout = "--xla_cpu_collective_call_terminate_timeout_seconds=600"
    monkeypatch.setenv("XLA_FLAGS", with_test_flags("--xla_cpu_max_isa=AVX2"))
    started = xla_flags.subprocess_xla_flags(4).split()
    assert sorted(started) == sorted(with_test_flags("--xla_cpu_max_isa=AVX2", 4).split())
    assert "--xla_force_host_platform_device_count=4" in started
    eigen = " --xla_cpu_experimental_ynn_fusion_type=" if xla_flags.version_below(0, 11) else ""
    assert xla_flags.subprocess_xla_flags(1, calibrated=True) == (
        f"--xla_force_host_platform_device_count=1 {timeout}{eigen}"
    )


def test_an_empty_xla_flags_still_gives_eight_devices():
    code = "import tests.conftest, jax; print(jax.device_count())"
    env = {**os.environ, "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "8"


@pytest.mark.parametrize(
    "version, below",
    [("0.10.2", True), ("0.5.0.dev20240101", True), ("0.11.0", False), ("0.12.0.1", False)],
)
def test_version_below_reads_release_and_dev_versions(version, below, monkeypatch):
    monkeypatch.setattr(xla_flags.importlib.metadata, "version", lambda _: version)
    assert xla_flags.version_below(0, 11) is below


@pytest.mark.parametrize(
    "flag", ["--xla_cpu_use_fusion_emitters=false", "--xla_cpu_experimental_ynn_fusion_type="]
)
def test_jaxlib_0_10s_flags_only_where_it_is_installed_and_at_the_test_level(flag, monkeypatch):
    """The legacy emitters (gone from jaxlib 0.11) and Eigen's kernels (measured on 0.10)."""
    name = flag.partition("=")[0]
    monkeypatch.setattr(xla_flags, "version_below", lambda major, minor: True)
    assert flag in with_test_flags("")
    assert flag in with_test_flags("--xla_cpu_max_isa=AVX2")
    # The user's own choice stays the only one; a user's level means the code as used in runs.
    assert with_test_flags(f"{name}=true").count(name) == 1
    assert name not in with_test_flags("--xla_backend_optimization_level=0")
    monkeypatch.setattr(xla_flags, "version_below", lambda major, minor: False)
    assert name not in with_test_flags("")


def test_the_sessions_temporary_files_go_to_one_folder_removed_at_exit(tmp_path):
    """tensorflow-datasets leaves an empty folder in the temporary directory for each builder
    of unprepared data; the session's (a worker's, a process it starts) land in one folder that
    the session removes at exit, and pytest's tmp_path stays where pytest keeps it."""
    session_tmp = os.environ["CAMJAX_TESTS_TMPDIR"]
    assert tempfile.gettempdir() == session_tmp
    assert not str(tmp_path).startswith(session_tmp)
    code = (
        "import os, tempfile; from camjax.data import wsol_shapes; "
        "before = set(os.listdir(tempfile.gettempdir())); "
        "wsol_shapes.get_builder(64, os.environ['DATA_DIR'], num_train=4); "
        "new = set(os.listdir(tempfile.gettempdir())) - before; "
        "print(tempfile.gettempdir(), *sorted(new))"
    )
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    where, *new = out.stdout.split()
    assert where == session_tmp
    assert any(name.endswith("tfds") for name in new), new  # tfds's leftover, landed here

    # A process of its own (as the test session's controller): its folder is gone at exit.
    env = {k: v for k, v in os.environ.items() if k not in ("CAMJAX_TESTS_TMPDIR", "TMPDIR")}
    env["TMPDIR"] = str(tmp_path)
    code = "import tests.conftest, os; print(os.environ['CAMJAX_TESTS_TMPDIR'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    folder = out.stdout.strip()
    assert os.path.dirname(folder) == str(tmp_path) and not os.path.exists(folder)
