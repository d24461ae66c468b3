"""What the entry points (train.py, evaluate.py) share: logging, flag parsing, error reporting.

A person reads one line for a problem camjax diagnosed or a bad flag, and a traceback for a bug.
"""

import contextlib
import dis
import logging
import os
import re
import sys
import warnings

import jax
from absl import app, flags
from ml_collections import config_flags

from camjax import errors, run_config

# How ml_collections spells an override of a config flag's field: --config.a.b=v, --noconfig.c.
_OVERRIDE = re.compile(r"-{1,2}(no)?config\.")
_CONFIG_FILE = re.compile(r"-{1,2}config(=|$)")


def setup_logging() -> None:
    """What a person reads: camjax's progress at INFO, problems at WARNING, and the libraries'
    (orbax, tfds, jax: they log through absl) at WARNING only."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    # camjax's records propagate to absl's handler, which does not filter by level itself.
    logging.getLogger("camjax").setLevel(logging.INFO)
    if not _tracebacks_wanted():
        # A checkpoint write that fails (a full disk) is logged by orbax from each of its
        # threads with a traceback (~320 lines in all), then reaches camjax, whose one-line
        # error says what was lost. orbax's records keep their message line.
        logging.getLogger("absl").addFilter(_without_orbax_traceback)
        logging.getLogger("asyncio").addFilter(_without_orbax_traceback)
        # tensorstore's threads then complete the abandoned writes into orbax's closed event
        # loop: each completion is an "unraisable" RuntimeError (up to ~80 tracebacks, printed
        # by the interpreter, not logged); a damaged step's abandoned reads leave orbax's
        # coroutines to be collected with their errors the same way. They say nothing the
        # one-line error (or the step's one-line skip) does not.
        sys.unraisablehook = _without_closed_loop_reports(sys.unraisablehook)
        # The same reads, when a coroutine was made and never started: a RuntimeWarning.
        warnings.filterwarnings(
            "ignore", r"coroutine '_read_array\w*' was never awaited", RuntimeWarning
        )


_ORBAX = f"{os.sep}orbax{os.sep}"


def _without_orbax_traceback(record: logging.LogRecord) -> bool:
    if record.name == "asyncio" and (
        _raised_in_orbax(record.exc_info) or _from_tensorstore(record.exc_info)
    ):
        # "Task/Future exception was never retrieved": the abandoned writes of a failed save
        # or reads of a damaged step, each failing as orbax or camjax has already reported
        # (a skipped step's reason), some collected only at exit, after the error.
        return False
    if _ORBAX in record.pathname and record.exc_info:
        # The message line keeps the reason (orbax's messages do not all name it).
        record.msg = f"{record.getMessage()} ({errors.first_line(record.exc_info[1])})"
        record.args, record.exc_info, record.exc_text = None, None, None
    return True


def _raised_in_orbax(exc_info) -> bool:
    """Whether a record's exception passed through orbax (asyncio's reports of its tasks)."""
    return isinstance(exc_info, tuple) and _passes_through(exc_info[2], _ORBAX)


def _from_tensorstore(exc_info) -> bool:
    """Whether a record's exception is tensorstore's error on a checkpoint's files (it is
    raised in tensorstore's threads, so its traceback shows no orbax frame)."""
    return isinstance(exc_info, tuple) and bool(
        re.search(r"OCDBT database|TensorStore\(|tensorstore_spec", str(exc_info[1]))
    )


def _passes_through(tb, path_part: str) -> bool:
    """Whether a traceback has a frame in a file whose path contains `path_part`."""
    while tb is not None:
        if path_part in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _without_closed_loop_reports(hook):
    def report(unraisable) -> None:
        e = unraisable.exc_value
        # tensorstore's reports name no object; a user's own closed loop (a transport's
        # __del__) names its object and is still reported.
        closed = isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
        if closed and getattr(unraisable, "object", None) is None:
            return
        # orbax's coroutines of a damaged step's abandoned reads, collected with their error
        # (the step's skip has said it in one line).
        if _passes_through(getattr(unraisable, "exc_traceback", None), _ORBAX):
            return
        hook(unraisable)

    return report


def _tracebacks_wanted() -> bool:
    return os.environ.get("CAMJAX_TRACEBACK", "0") not in ("", "0")


@contextlib.contextmanager
def user_errors():
    """An error that camjax raised itself, a problem it diagnosed (a config value, a checkpoint
    failing its checks, a non-finite loss, a directory it cannot write), ends the process with
    its message alone and exit code 1, not under a traceback. Errors raised elsewhere (a
    library, the interpreter) are bugs and keep their traceback, as every error does with
    CAMJAX_TRACEBACK=1. A Ctrl-C outside training's own handling (start-up, an evaluation) ends
    it in one line with the shell's code 130; training's stops (subclasses) go to train.py."""
    try:
        yield
    except KeyboardInterrupt:
        if _tracebacks_wanted() or sys.exc_info()[0] is not KeyboardInterrupt:
            raise
        print("\nstopped by Ctrl-C (CAMJAX_TRACEBACK=1 shows where)", file=sys.stderr)
        _exit_at_once(130)
    except Exception as e:
        if _tracebacks_wanted() or not _raised_by_camjax(e):
            raise
        where = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
        print(f"error: {where}{e} (CAMJAX_TRACEBACK=1 shows where)", file=sys.stderr)
        sys.exit(1)


def _exit_at_once(code: int) -> None:
    """Exits once the logs and standard streams are flushed, without the interpreter's
    teardown: a KeyboardInterrupt that landed inside the import of one of jaxlib's nanobind
    modules (jax imports some on first use) left it half made, and freeing it at exit
    segfaulted (gdb: nb_module_free), 3 of 7 Ctrl-Cs in train.py's first seconds. The `with`
    and `finally` blocks the interrupt passed through have run by now."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_RAISE = dis.opmap["RAISE_VARARGS"]


def _raised_by_camjax(e: BaseException) -> bool:
    """Whether `e` comes from a `raise` statement in the camjax package: the innermost frame is
    camjax's and stopped at a raise, not at a call into numpy or a library that raised."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    package = os.path.dirname(os.path.abspath(__file__))
    inside = os.path.abspath(code.co_filename).startswith(package + os.sep)
    return inside and code.co_code[tb.tb_lasti] == _RAISE


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`), with
    `config_override_errors`; a --config file that does not exist is one line too (it was
    ml_collections' chained tracebacks)."""
    if path := _missing_config_file(check_flagfiles(argv)):
        _fatal(f"--config: no file {path}; give a config file, e.g. configs/default.py.")
    with config_override_errors(argv):
        return app.parse_flags_with_usage(argv)


def check_flagfiles(argv: list[str]) -> list[str]:
    """argv with its flag files read in (`_expanded`); one that cannot be read is absl's
    one-line error (exit code 1), not absl's traceback. The entry points call it before they
    define --config: ml_collections reads the flag files then."""
    try:
        return _expanded(argv)
    except flags.Error as e:
        _fatal(f"{str(e).removeprefix('ERROR:: ')}; give a flagfile that exists.")


def _expanded(argv: list[str]) -> list[str]:
    """argv with each --flagfile=FILE replaced by the flags in FILE, as absl's parsing reads
    them (so a --config or an override given in a flagfile is found)."""
    return flags.FLAGS.read_flags_from_files(argv, force_gnu=False)


def _fatal(problem: str):
    """A flag problem in absl's one-line form, exit code 1."""
    print(f"FATAL Flags parsing error: {problem}", file=sys.stderr)
    sys.exit(1)


def _missing_config_file(argv: list[str]) -> str | None:
    """The file of --config=FILE[:ARGS] (or --config FILE) when there is no such file."""
    for i, arg in enumerate(argv[1:], start=1):
        if match := _CONFIG_FILE.match(arg):
            value = arg[match.end() :] if match[1] else (argv[i + 1] if i + 1 < len(argv) else "")
            path = value.split(":")[0]
            if path and not os.path.isfile(path):
                return path
    return None


@contextlib.contextmanager
def config_override_errors(argv: list[str]):
    """Around what applies --config.x.y overrides (flag parsing; defining a config flag): an
    override naming no field of the config reaches the user from ml_collections as a KeyError,
    AttributeError or TypeError under a traceback; it is reported as absl reports a bad flag
    value, in one line (``FATAL Flags parsing error: ...``), exit code 1. Only errors raised
    while ml_collections resolves an override's path are: a config file's own bug keeps its
    traceback."""
    try:
        yield
    except (AttributeError, KeyError, TypeError) as e:
        if not _resolving_an_override(e):
            raise
        given = [a.split("=")[0] for a in _expanded(argv)[1:] if _OVERRIDE.match(a)]
        cause = e
        while cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]  # ml_collections wraps its KeyError in an AttributeError
        # Its message for a missing field: 'name' + newline + 'Did you mean "other" ...?'
        key, _, hint = str(cause.args[0] if cause.args else cause).partition("\n")
        key = key.strip("'\"")
        where = next((a for a in given if key in a.split(".")), None)
        if isinstance(e, TypeError) or where is None:
            message = f"{' '.join(given)}: not a field of the config ({cause})"
        else:
            hint = f" ({hint[0].lower()}{hint[1:]})" if hint else ""
            message = f"{where}: the config has no field {key!r}{hint}"
        print(f"FATAL Flags parsing error: {message}", file=sys.stderr)
        sys.exit(1)


def _resolving_an_override(e: BaseException) -> bool:
    """Whether `e` passed through ml_collections' resolution of an override's path."""
    return _passes_through(e.__traceback__, os.path.join("config_flags", "config_path.py"))


def define_config_flag(
    argv: list[str], help_text: str, flag_values: flags.FlagValues = flags.FLAGS
) -> bool:
    """Defines --config for an entry point that evaluates the run in --workdir: the config file
    given, else the config the run saved (workdir/config.json), so that --config.x=...
    overrides either. Returns whether it is the run's.

    Override flags are made from a config's fields when the flag is defined, so --workdir is
    read from argv first, flag files included, before absl parses the flags for main."""
    args = flag_values.read_flags_from_files(argv[1:], force_gnu=False)
    workdir = None
    if not any(_CONFIG_FILE.match(a) for a in args):
        try:
            flag_values([argv[0], *args], known_only=True)
            workdir = flag_values["workdir"].value
        except flags.Error:
            pass  # a missing or bad --workdir: absl says so when it parses for main
        finally:
            flag_values.unparse_flags()
    saved = None
    if workdir:
        try:
            saved = run_config.load(workdir)
        except run_config.RunConfigError:
            if any(_OVERRIDE.match(a) for a in args):
                # Without the run's config its fields are no flags: say why now, not as
                # "unknown flag --config.x".
                with user_errors():
                    raise
            # Otherwise main reports it (after --help has had its turn).
    if saved is None:
        config_flags.DEFINE_config_file(
            "config", None, help_text, flag_values, lock_config=True, sys_argv=argv
        )
    else:
        with config_override_errors(argv):  # ml_collections applies the overrides here
            config_flags.DEFINE_config_dict(
                "config", saved, help_text, flag_values, lock_config=True, sys_argv=argv
            )
    return saved is not None
