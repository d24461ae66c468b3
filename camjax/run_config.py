"""The run's config, written beside its checkpoints (workdir/config.json) so that evaluation
needs only the workdir, the differences between two configs, said field by field, and the run's
id (workdir/run_id), which every step it saves records."""

import contextlib
import json
import os
import re
import secrets
from typing import Any, NamedTuple

import jax
import ml_collections

from camjax import distributed, errors

RUN_CONFIG = "config.json"
# The sections every run's config has had; a file without one of them is not a run config.
SECTIONS = ("data", "model", "optim", "train", "eval")


RUN_ID = "run_id"
_RUN_ID_FORM = re.compile(r"[0-9a-f]{16}")


class RunConfigError(ValueError):
    """A run's config.json or run_id is missing or unreadable."""


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON values (tuples become lists), for saving and comparing."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), to compare with what was saved."""
    return json.loads(json.dumps(value, sort_keys=True))


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes workdir/config.json (process 0, atomically) when it is missing or differs, so it
    is always the config of the newest checkpoint; a failure stops every process of a
    multi-host job with a one-line RunConfigError (one process stopping alone would leave the
    others waiting in their next collective)."""
    path = os.path.join(workdir, RUN_CONFIG)
    problem = ""
    if jax.process_index() == 0:
        values = config_json(config)
        try:
            if not (os.path.exists(path) and _read_json(path) == values):
                with open(f"{path}.tmp", "w") as f:
                    json.dump(values, f, indent=2, sort_keys=True)
                os.replace(f"{path}.tmp", path)
        except OSError as e:
            with contextlib.suppress(OSError):  # a full disk's half-written copy
                os.remove(f"{path}.tmp")
            problem = (
                f"{errors.cannot_write(e, path)}; make room, or remove what is in the way, then "
                "rerun: training resumes from its newest checkpoint, if any."
            )
        except RunConfigError as e:  # config.json damaged since the run started
            problem = str(e)
    elsewhere = f"process 0 cannot write {path} (its error says why)."
    if problem := distributed.shared_problem(problem, elsewhere):
        raise RunConfigError(problem)


class Run(NamedTuple):
    """A training process's hold on its run: `id` is recorded in every step the run saves;
    `owner` is drawn anew by every training that starts or resumes the run, so that a second
    training in the same workdir, resumed or not, replaces it and the first one sees that."""

    id: str
    owner: str


def start_run(workdir: str, run: str | None = None) -> Run:
    """Takes workdir for this training: a new owner token, and a new run id unless `run` (a
    resumed run's) is given, written to workdir/run_id (see `write_run`). Every process of a
    multi-host job gets process 0's."""
    drawn = distributed.shared_hex((run or secrets.token_hex(8)) + secrets.token_hex(8), 32)
    held = Run(drawn[:16], drawn[16:])
    write_run(workdir, held)
    return held


def write_run(workdir: str, run: Run) -> None:
    """Writes `run` to workdir/run_id (process 0, atomically); a failure stops every process
    of a multi-host job with a one-line RunConfigError."""
    problem = try_write_run(workdir, run) if jax.process_index() == 0 else ""
    elsewhere = f"process 0 cannot write {os.path.join(workdir, RUN_ID)} (its error says why)."
    if problem := distributed.shared_problem(problem, elsewhere):
        raise RunConfigError(problem)


def try_write_run(workdir: str, run: Run) -> str:
    """`write_run` on this process alone: '' once written, else why it could not be."""
    path = os.path.join(workdir, RUN_ID)
    try:
        with open(f"{path}.tmp", "w") as f:
            f.write(f"{run.id}\n{run.owner}\n")
        os.replace(f"{path}.tmp", path)
    except OSError as e:
        fix = "remove what is there (rm -r) or choose another --workdir."
        return f"{errors.cannot_write(e, path)}; {fix}"
    return ""


def read_run(workdir: str) -> Run | None:
    """workdir/run_id as written (`start_run`); None where there is none: a run that started
    before camjax recorded one (2026-12-05), or whose run_id was deleted (its next resume
    writes it again). A file holding the id alone reads with an empty owner."""
    path = os.path.join(workdir, RUN_ID)
    try:
        with open(path, encoding="utf-8") as f:
            fields = f.read().split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not text"
        raise RunConfigError(f"cannot read {path} ({reason}); restore or remove it.") from None
    if not (1 <= len(fields) <= 2 and all(_RUN_ID_FORM.fullmatch(f) for f in fields)):
        raise RunConfigError(
            f"{path} holds {' '.join(fields)[:40]!r}, not a run id and owner (16 lowercase hex "
            "digits each); restore or remove it."
        )
    return Run(fields[0], fields[1] if len(fields) == 2 else "")


def run_id(workdir: str) -> str | None:
    """The id of the run whose steps workdir holds (`read_run`), or None; process 0's on every
    process of a multi-host job. Each process reading the file itself could take different
    ids (a disk not shared, a file replaced between the reads): the processes would then
    restore different steps, and their restores' collectives pair up across them."""
    problem, run = "", None
    if jax.process_index() == 0:
        try:
            run = read_run(workdir)
        except RunConfigError as e:
            problem = str(e)
    elsewhere = f"process 0 cannot read {os.path.join(workdir, RUN_ID)} (its error says why)."
    if problem := distributed.shared_problem(problem, elsewhere):
        raise RunConfigError(problem)
    return distributed.shared_hex("" if run is None else run.id, 16) or None


def load(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in workdir was trained with (locked: unknown fields are errors)."""
    path = os.path.join(workdir, RUN_CONFIG)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunConfigError(
            f"{workdir} is a file, not a run's directory; pass --workdir the directory train.py "
            "trained in."
        )
    if not os.path.exists(workdir):
        raise RunConfigError(
            f"{workdir} does not exist; pass --workdir the directory train.py trained in."
        )
    if not os.path.exists(path):
        raise RunConfigError(
            f"no {RUN_CONFIG} in {workdir}: it is written at a run's first checkpoint. Train "
            "there first, or pass --config with the config the run was trained with."
        )
    values = _read_json(path)
    if missing := [k for k in SECTIONS if not isinstance(values.get(k), dict)]:
        raise RunConfigError(
            f"{path} has no {missing[0]!r} section: it is not the config of a run. Restore it "
            "(train.py writes it at each checkpoint), or pass --config with the config the run "
            "was trained with."
        )
    config = ml_collections.ConfigDict(_tuples(values))
    config.lock()
    return config


def _tuples(value: Any) -> Any:
    """JSON's lists back as the tuples config files write, which --config.x=... can override
    (ml_collections cannot override a list field)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def differences(workdir: str, config: ml_collections.ConfigDict, section: str | None = None) -> str:
    """Where `config` (or its `section`, e.g. 'optim') differs from the run's saved config, as
    'section.field: run A, given B; ...' ('' when they agree or the run saved none)."""
    saved, given = read_saved(workdir), config_json(config)
    if saved is None:
        return ""
    if section is not None:
        saved, given = saved.get(section, {}), given.get(section, {})
    prefix = f"{section}." if section is not None else ""
    return compare(saved, given, prefix, labels=("run", "given"))


# The fields a resumed run may change: where the data is read from and how fast, when the run
# logs, saves and validates, evaluation's settings, and the pretrained weights (read at a run's
# start only). Every other field changes what training computes; train.num_steps too, but a
# longer run is how a run is extended (`resume_differences`).
BOOKKEEPING = (
    "data.data_dir",
    "data.num_threads",
    "data.num_workers",
    "data.cache_train_gib",
    "data.device_prefetch",
    "data.max_boxes",  # pads the GT boxes that validation and evaluation read
    "model.head_init_std",  # the head's initial draw: a resumed run has its weights
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.eval_every_steps",
    "train.keep_checkpoints",
    "eval",
    "init",
)
NUM_STEPS = "train.num_steps"
# Fields added after runs were saved, each with the value the code before it behaved as: a saved
# config without one is compared as holding it (it did not resume otherwise).
ADDED_FIELDS = {"optim.decay_biases": False}


def read_saved(workdir: str) -> dict[str, Any] | None:
    """workdir/config.json as JSON values; None where there is none. A RunConfigError, in one
    line, for a file that does not read."""
    path = os.path.join(workdir, RUN_CONFIG)
    return _read_json(path) if os.path.exists(path) else None


def resume_differences(
    saved: dict[str, Any], config: ml_collections.ConfigDict, ignored: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """(training, num_steps, bookkeeping): where `config` differs from a run's `saved` config
    (JSON values; `ADDED_FIELDS` it lacks read as their values) in the fields that change what
    training computes (less `ignored`), in train.num_steps, and in the `BOOKKEEPING` fields, each
    as 'field: run A, given B; ...' ('' where they agree)."""
    given, saved = config_json(config), json.loads(json.dumps(saved))
    for path, value in ADDED_FIELDS.items():
        node, leaf = _holder(saved, path)
        if node is not None:
            node.setdefault(leaf, value)
    everything_else = (*BOOKKEEPING, NUM_STEPS, *ignored)
    pairs = (
        (_without(saved, everything_else), _without(given, everything_else)),
        (_only(saved, (NUM_STEPS,)), _only(given, (NUM_STEPS,))),
        (_only(saved, BOOKKEEPING), _only(given, BOOKKEEPING)),
    )
    return tuple(compare(a, b, labels=("run", "given")) for a, b in pairs)


def _without(values: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """`values` less the dotted `paths` (a field or a whole section)."""
    out = json.loads(json.dumps(values))
    for path in paths:
        node, leaf = _holder(out, path)
        if node is not None:
            node.pop(leaf, None)
    return out


def _holder(values: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    """(the dict of `values` that holds dotted `path`'s last name, None where a section on the
    way is missing; that name)."""
    *parents, leaf = path.split(".")
    node = values
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def _only(values: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """The dotted `paths` of `values` (those it has), nested as in `values`."""
    out: dict[str, Any] = {}
    for path in paths:
        *parents, leaf = path.split(".")
        node, kept = values, out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
            kept = kept.setdefault(name, {})
        if isinstance(node, dict) and leaf in node:
            kept[leaf] = node[leaf]
    return out


def _read_json(path: str) -> dict[str, Any]:
    """A run's config.json as a dict; a RunConfigError, in one line, for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunConfigError(f"{path} is not valid JSON ({e}); restore or delete it.") from None
    except OSError as e:
        raise RunConfigError(f"cannot read {path} ({e.strerror}); restore or delete it.") from None
    if not isinstance(values, dict):
        raise RunConfigError(
            f"{path} holds a JSON {type(values).__name__}, not a config's object; restore or "
            "delete it."
        )
    return values


_MISSING = object()


def compare(
    saved: dict, wanted: dict, prefix: str = "", labels: tuple[str, str] = ("checkpoint", "config")
) -> str:
    """Where two configs' JSON forms differ, as 'prefix.field: A_label a, B_label b; ...'."""
    out = []
    for k in sorted(saved.keys() | wanted.keys()):
        a, b = saved.get(k, _MISSING), wanted.get(k, _MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = compare(a, b, f"{prefix}{k}.", labels)
            if inner:
                out.append(inner)
        elif a is _MISSING or b is _MISSING:  # a field one side lacks (added by a later camjax)
            absent, present, value = (*labels, b) if a is _MISSING else (*labels[::-1], a)
            # A whole section is named, not dumped field by field.
            shown = "has it" if isinstance(value, dict) else repr(value)
            out.append(f"{prefix}{k}: {present} {shown}, {absent} has not")
        elif a != b:
            out.append(f"{prefix}{k}: {labels[0]} {a!r}, {labels[1]} {b!r}")
    return "; ".join(out)
