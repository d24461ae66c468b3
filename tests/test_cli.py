"""Tests for camjax/cli.py: the run's config as evaluate.py's --config, in every form absl takes
--workdir; one-line reports of overrides that name no field; what the entry points' logging
shows of the libraries."""

import logging
import os
import subprocess
import sys
import types
import warnings

import orbax.checkpoint
import pytest
from absl import flags
from absl import logging as absl_logging

from camjax import cli
from configs import tiny


@pytest.fixture
def run_dir(tmp_path):
    """A workdir with a saved config.json, as train.py leaves it (tuples saved as lists)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = tiny.get_config()
    (workdir / "config.json").write_text(config.to_json_best_effort(sort_keys=True))
    return str(workdir)


def evaluate_flags():
    """evaluate.py's own flags, on a FlagValues of their own."""
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "", flag_values=values, required=True)
    flags.DEFINE_string("export_dir", None, "", flag_values=values)
    return values


def parse(argv):
    values = evaluate_flags()
    run_config = cli.define_config_flag(argv, "config", values)
    values(argv)
    return run_config, values


@pytest.mark.parametrize("form", ["equals", "space", "single_dash", "flagfile", "value_workdir"])
def test_the_run_config_is_the_config_flag_whatever_the_form_of_workdir(run_dir, tmp_path, form):
    args = {
        "equals": [f"--workdir={run_dir}"],
        "space": ["--workdir", run_dir],
        "single_dash": [f"-workdir={run_dir}"],
        "flagfile": [f"--flagfile={tmp_path / 'flags.txt'}"],
        # A value spelled like the flag is a value.
        "value_workdir": ["--export_dir", "workdir", "--workdir", run_dir],
    }[form]
    (tmp_path / "flags.txt").write_text(f"--workdir={run_dir}\n")
    argv = [
        "evaluate.py",
        *args,
        "--config.eval.top_k=2",
        "--config.eval.wsol.iou_thresholds=(40,)",
    ]
    run_config, values = parse(argv)
    assert run_config and values.workdir == run_dir
    assert values.config.eval.top_k == 2 and values.config.eval.wsol.iou_thresholds == (40,)
    assert values.config.data.mean == tuple(tiny.get_config().data.mean)  # JSON list -> tuple


def test_a_config_file_is_used_instead_when_given(run_dir, tmp_path):
    (tmp_path / "cfg.txt").write_text("--config=configs/tiny.py\n")
    # absl takes a single dash too: -config=... is a config file, not an override.
    for given in (
        ["--config", "configs/tiny.py"],
        ["-config=configs/tiny.py"],
        [f"--flagfile={tmp_path / 'cfg.txt'}"],
    ):
        argv = ["evaluate.py", f"--workdir={run_dir}", *given, "--config.eval.top_k=3"]
        run_config, values = parse(argv)
        assert not run_config and values.config.eval.top_k == 3


def test_a_run_without_config_json_is_one_line_once_overrides_need_it(tmp_path, capsys):
    # Without overrides the flag is a config file's, and evaluate() reports the missing file.
    run_config, values = parse(["evaluate.py", f"--workdir={tmp_path}"])
    assert not run_config and values.config is None
    for override in ("--config.eval.top_k=2", "-config.eval.top_k=2"):  # absl takes one dash
        with pytest.raises(SystemExit) as stop:
            parse(["evaluate.py", f"--workdir={tmp_path}", override])
        assert stop.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: no config.json in {tmp_path}") and "Traceback" not in err


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.eval.top_kk=2",
            "--config.eval.top_kk: the config has no field 'top_kk' "
            '(did you mean "top_k" instead of "top_kk"?)',
        ),
        (
            "--noconfig.eval.wsol.enabld",
            "--noconfig.eval.wsol.enabld: the config has no field 'enabld' "
            '(did you mean "enabled" instead of "enabld"?)',
        ),
        ("--config.data.mean.x=1", "--config.data.mean.x: not a field of the config ("),
        (
            # The override named is the one whose path has the missing field as a whole part,
            # not the good first one that merely contains its letters.
            "--config.eval.top_k=2 --config.eval.top=3",
            "--config.eval.top: the config has no field 'top' ",
        ),
        (
            "-config.eval.top_kk=2",  # absl's single dash
            "-config.eval.top_kk: the config has no field 'top_kk' "
            '(did you mean "top_k" instead of "top_kk"?)',
        ),
    ],
)
def test_an_override_naming_no_field_is_one_line(run_dir, capsys, override, message):
    argv = ["evaluate.py", f"--workdir={run_dir}", *override.split()]
    assert override_error(argv, capsys).startswith(f"FATAL Flags parsing error: {message}")


def override_error(argv, capsys) -> str:
    """What evaluate.py's flag parsing of argv prints as it exits with code 1."""
    with pytest.raises(SystemExit) as stop:
        values = evaluate_flags()
        cli.define_config_flag(argv, "config", values)
        with cli.config_override_errors(argv):
            values(argv)
    assert stop.value.code == 1
    return capsys.readouterr().err


def test_an_override_in_a_flagfile_naming_no_field_is_named(run_dir, tmp_path, capsys):
    """The override was looked for in argv only: ': not a field of the config' named none."""
    (tmp_path / "flags.txt").write_text("--config.eval.top_kk=2\n")
    argv = ["evaluate.py", f"--workdir={run_dir}", f"--flagfile={tmp_path / 'flags.txt'}"]
    assert override_error(argv, capsys).startswith(
        "FATAL Flags parsing error: --config.eval.top_kk: the config has no field 'top_kk'"
    )


def test_a_config_files_own_error_keeps_its_traceback(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from configs import tiny\n"
        "def get_config():\n"
        "    config = tiny.get_config()\n"
        "    config.train.steps  # a bug in the file, not the user's override\n"
        "    return config\n"
    )
    argv = ["train.py", f"--config={bad}", "--config.train.steps=3"]
    values = flags.FlagValues()
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "", values, sys_argv=argv)
    with pytest.raises(AttributeError), cli.config_override_errors(argv):
        values(argv)


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
    absl, aio = logging.getLogger("absl"), logging.getLogger("asyncio")
    verbosity, level = absl_logging.get_verbosity(), logging.getLogger("camjax").level
    filters, aio_filters, hook = list(absl.filters), list(aio.filters), sys.unraisablehook
    warning_filters = list(warnings.filters)
    yield
    warnings.filters[:] = warning_filters
    absl_logging.set_verbosity(verbosity)
    logging.getLogger("camjax").setLevel(level)
    absl.filters[:], aio.filters[:] = filters, aio_filters
    sys.unraisablehook = hook


def test_a_failed_saves_abandoned_writes_say_nothing_more(restore_logging, monkeypatch):
    """asyncio's reports of orbax's abandoned tasks, and tensorstore's completions into orbax's
    closed event loop, are dropped at the entry points (orbax logs the failure itself)."""
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    seen = []
    sys.unraisablehook = seen.append
    cli.setup_logging()
    namespace = {}
    exec(
        compile("def write():\n    raise ValueError('RESOURCE_EXHAUSTED')", ORBAX_FILE, "exec"),
        namespace,
    )
    try:
        namespace["write"]()  # an exception whose traceback passes through orbax's code
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "asyncio",
        logging.ERROR,
        "base_events.py",
        1,
        "Task exception was never retrieved",
        None,
        exc_info,
    )
    assert not logging.getLogger("asyncio").filter(record)
    # A damaged step's abandoned reads: tensorstore's error, raised in its own threads.
    read_error = ValueError(
        'FAILED_PRECONDITION: Error reading "params.conv1.kernel/0.0.0.0" in OCDBT database at '
        'local file "/tmp/run/checkpoints/30/state/": Truncated Zstd-compressed stream'
    )
    record.msg = "Future exception was never retrieved"
    record.exc_info = (ValueError, read_error, None)
    assert not logging.getLogger("asyncio").filter(record)
    record.exc_info = (ValueError, ValueError("a user's own future"), None)
    assert logging.getLogger("asyncio").filter(record)
    record.exc_info = None  # asyncio's other records pass
    assert logging.getLogger("asyncio").filter(record)
    closed = RuntimeError("Event loop is closed")
    for e, owner in ((closed, None), (RuntimeError("other"), None), (closed, "a transport")):
        sys.unraisablehook(types.SimpleNamespace(exc_value=e, object=owner))
    # The coroutine of an abandoned read, collected with its error.
    sys.unraisablehook(
        types.SimpleNamespace(
            exc_value=exc_info[1], exc_traceback=exc_info[2], object="<coroutine _read_array>"
        )
    )
    # orbax's read coroutine never started: its RuntimeWarning is dropped, others are not.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        cli.setup_logging()  # its filter goes in front of the one just set
        for name in ("_read_array_index_and_device_put", "mine"):
            warnings.warn(f"coroutine '{name}' was never awaited", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["coroutine 'mine' was never awaited"]
    # A report that names its object (a user's own transport) is kept.
    assert [(str(u.exc_value), u.object) for u in seen] == [
        ("other", None),
        ("Event loop is closed", "a transport"),
    ]


def test_orbax_records_keep_one_line_unless_tracebacks_are_asked_for(restore_logging, monkeypatch):
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    cli.setup_logging()
    assert formatted(ORBAX_FILE) == (
        "Save failed. (ValueError: RESOURCE_EXHAUSTED: No space left on device)"
    )
    # Other records, camjax's among them, keep their traceback.
    assert "Traceback" in formatted(cli.__file__)
    logging.getLogger("absl").filters.clear()
    monkeypatch.setenv("CAMJAX_TRACEBACK", "1")
    cli.setup_logging()
    assert "Traceback" in formatted(ORBAX_FILE)


def test_camjax_progress_shows_at_info_and_the_libraries_only_from_warning(restore_logging):
    """A person reads camjax's INFO lines (resumed from step N, ...); orbax, tfds and jax log
    through absl, whose INFO chatter is hidden and whose warnings are not."""
    cli.setup_logging()
    progress = logging.getLogger("camjax.train.loop")
    assert progress.isEnabledFor(logging.INFO)
    libraries = logging.getLogger("absl")
    assert not libraries.isEnabledFor(logging.INFO) and libraries.isEnabledFor(logging.WARNING)


@pytest.mark.parametrize(
    "message",
    [
        # tensorstore's errors name their store as a spec or a repr, never an orbax frame.
        'NOT_FOUND: Error opening "zarr" driver [tensorstore_spec=\'{"driver":"zarr"}\']',
        "FAILED_PRECONDITION: cannot write to TensorStore({'driver': 'zarr'})",
    ],
)
def test_tensorstores_errors_on_abandoned_reads_say_nothing_more(
    restore_logging, monkeypatch, message
):
    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    cli.setup_logging()
    record = logging.LogRecord(
        "asyncio",
        logging.ERROR,
        "base_events.py",
        1,
        "Future exception was never retrieved",
        None,
        (ValueError, ValueError(message), None),
    )
    assert not logging.getLogger("asyncio").filter(record)


def test_an_empty_camjax_traceback_keeps_errors_to_one_line(tmp_path, capsys, monkeypatch):
    """CAMJAX_TRACEBACK= (set but empty) asks for nothing: camjax's error stays one line."""
    from camjax import run_config

    monkeypatch.setenv("CAMJAX_TRACEBACK", "")
    with pytest.raises(SystemExit) as stop, cli.user_errors():
        run_config.load(str(tmp_path))  # no config.json: camjax raises it
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: no config.json in {tmp_path}")
    assert err.endswith(" (CAMJAX_TRACEBACK=1 shows where)\n") and err.count("\n") == 1


def test_a_ctrl_c_outside_training_is_one_line_and_code_130(capsys, monkeypatch):
    """During start-up or an evaluation: a 50-line traceback ending in KeyboardInterrupt. A
    training stop (a subclass, with its own line and code) passes through to train.py."""
    from camjax.train.interrupts import TrainingPreempted

    monkeypatch.delenv("CAMJAX_TRACEBACK", raising=False)
    monkeypatch.setattr(cli, "_exit_at_once", sys.exit)  # os._exit would end pytest
    with pytest.raises(SystemExit) as stop, cli.user_errors():
        raise KeyboardInterrupt
    assert stop.value.code == 130
    assert capsys.readouterr().err == "\nstopped by Ctrl-C (CAMJAX_TRACEBACK=1 shows where)\n"
    with pytest.raises(TrainingPreempted), cli.user_errors():
        raise TrainingPreempted("stopped by SIGTERM after step 4")
    monkeypatch.setenv("CAMJAX_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt), cli.user_errors():
        raise KeyboardInterrupt


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_an_unreadable_flagfile_is_one_line_at_the_entry_points(script, tmp_path):
    """ml_collections reads the flag files as --config is defined, before the flags are parsed:
    absl's CantOpenFlagFileError came under a traceback there."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gone = tmp_path / "gone.txt"
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, script), f"--flagfile={gone}", "--workdir=w"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == (
        f"FATAL Flags parsing error: Unable to open flagfile: [Errno 2] No such file or "
        f"directory: '{gone}'; give a flagfile that exists.\n"
    )


def test_a_ctrl_c_outside_training_exits_130_without_the_interpreters_teardown():
    """A Ctrl-C inside the import of a jaxlib nanobind module left it half made, and the
    teardown then segfaulted (3 of 7 Ctrl-Cs in train.py's first seconds): the process now ends
    at once, its output and logs flushed first, and no atexit handler runs."""
    script = (
        "import atexit, logging, sys\n"
        "from camjax import cli\n"
        "atexit.register(lambda: print('teardown'))\n"
        "logging.basicConfig(stream=sys.stdout)\n"
        "print('out', end='')\n"
        "logging.getLogger('x').warning('logged')\n"
        "with cli.user_errors():\n"
        "    raise KeyboardInterrupt\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CAMJAX_TRACEBACK"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 130
    assert proc.stdout == "outWARNING:x:logged\n"
    assert proc.stderr == "\nstopped by Ctrl-C (CAMJAX_TRACEBACK=1 shows where)\n"


@pytest.mark.parametrize("args", [["--config=nope.py:tiny"], ["--config", "nope.py"]])
def test_a_config_file_that_does_not_exist_is_one_line(args, tmp_path, capsys, monkeypatch):
    """It was 36-40 lines of ml_collections' chained tracebacks, in train.py and evaluate.py."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.parse_flags(["train.py", *args, "--workdir=w"])
    assert stop.value.code == 1
    assert capsys.readouterr().err == (
        "FATAL Flags parsing error: --config: no file nope.py; give a config file, e.g. "
        "configs/default.py.\n"
    )
    assert cli._missing_config_file(["train.py", "--config.train.num_steps=3"]) is None


def test_a_config_file_in_a_flagfile_and_a_flagfile_that_do_not_exist_are_one_line(
    tmp_path, capsys, monkeypatch
):
    """Both were ml_collections' and absl's tracebacks: --config was looked for in argv only."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flags.txt").write_text("--config=nope.py\n--workdir=w\n")
    for flagfile, said in [
        ("flags.txt", "--config: no file nope.py; give a config file, e.g. configs/default.py."),
        ("gone.txt", "Unable to open flagfile: [Errno 2] No such file or directory: 'gone.txt'; "
         "give a flagfile that exists."),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            cli.parse_flags(["train.py", f"--flagfile={flagfile}"])
        assert stop.value.code == 1
        assert capsys.readouterr().err == f"FATAL Flags parsing error: {said}\n"
