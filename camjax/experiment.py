"""Turns a config into the objects a run needs: model, device mesh, data sources, preprocessing.

The one place where config field names meet the library's rooms, shared by training and
evaluation so both build exactly the same model and data.
"""

import contextlib
import dis
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from camjax.data import reopenable_sources
from camjax.data.pipeline import PreprocessConfig
from camjax.models import MODELS, create_model


def setup_logging() -> None:
    """What a person reads: camjax's progress at INFO, problems at WARNING, and the libraries'
    (orbax, tfds, jax: they log through absl) at WARNING only. For the entry points."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    # camjax's records propagate to absl's handler, which does not filter by level itself.
    logging.getLogger("camjax").setLevel(logging.INFO)
    if not _tracebacks_wanted():
        # A checkpoint write that fails (a full disk) is logged by orbax from each of its
        # threads with a traceback (~320 lines in all), then reaches camjax, whose one-line
        # error says what was lost. orbax's records keep their message line.
        logging.getLogger("absl").addFilter(_without_orbax_traceback)


_ORBAX = f"{os.sep}orbax{os.sep}"


def _without_orbax_traceback(record: logging.LogRecord) -> bool:
    if _ORBAX in record.pathname:
        record.exc_info = record.exc_text = None
    return True


def _tracebacks_wanted() -> bool:
    return os.environ.get("CAMJAX_TRACEBACK", "0") not in ("", "0")


@contextlib.contextmanager
def user_errors():
    """For the entry points: an error that camjax raised itself, a problem it diagnosed (a
    config value, a checkpoint failing its checks, a non-finite loss, a directory it cannot
    write), ends the process with its message alone and exit code 1, not under a traceback.
    Errors raised elsewhere (a library, the interpreter) are bugs and keep their traceback, as
    every error does with CAMJAX_TRACEBACK=1."""
    try:
        yield
    except Exception as e:
        if _tracebacks_wanted() or not _raised_by_camjax(e):
            raise
        where = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
        print(f"error: {where}{e} (CAMJAX_TRACEBACK=1 shows where)", file=sys.stderr)
        sys.exit(1)


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


def check_writable(workdir: str) -> None:
    """Fails at once, in one line, if workdir cannot be created or written (process 0 writes
    there), rather than after the work whose results it would hold. In a multi-host job every
    process fails with it: the others would otherwise wait in their first collective."""
    problem = ""
    if jax.process_index() == 0:
        try:
            os.makedirs(workdir, exist_ok=True)
            with tempfile.TemporaryFile(dir=workdir):
                pass
        except OSError as e:
            problem = (
                f"{workdir} is not a writable directory ({e.strerror}); choose another "
                "--workdir or fix its permissions."
            )
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if multihost_utils.broadcast_one_to_all(np.int32(bool(problem))) and not problem:
            problem = f"process 0 cannot write {workdir} (its error says why); nothing was done."
    if problem:
        raise PermissionError(problem)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """config.model -> the Flax module (fields other than name/dtype go to the model as is)."""
    fields = config.model.to_dict()
    name = fields.pop("name")
    dtype = fields.pop("dtype")
    if dtype not in DTYPES:
        raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}; got {dtype!r}.")
    method = config.get("method")  # absent in runs saved before it existed: plain CAM
    if method is not None:
        fields.update(_method_fields(method, name, fields))
    try:
        return create_model(name, dtype=DTYPES[dtype], **fields)
    except TypeError as e:
        raise ValueError(f"config.model does not fit model {name!r}: {e}") from e


def _method_fields(method: ml_collections.ConfigDict, name: str, fields: dict) -> dict:
    """The model fields of a WSOL method that lives inside the network (ADL's layers, ACoL's
    heads, the attentive dropout of 'bridging', SPG's branches), checked against the model:
    {} for the methods that do not."""
    if method.name == "adl":
        extra = {"adl": (method.adl_drop_rate, method.adl_threshold)}
    elif method.name in ("acol", "spg"):
        if fields.get("dropout_rate"):
            raise ValueError(
                f"config.model.dropout_rate must be 0 with config.method.name {method.name!r} "
                "(its class-map heads have no dropout, as the reference's); set "
                "--config.model.dropout_rate=0."
            )
        extra = {"acol": method.acol_threshold} if method.name == "acol" else {"spg": True}
    elif method.name == "bridging":
        extra = {"attentive_drop": (method.bridging_drop_threshold, method.bridging_drop_prob)}
    else:
        return {}

    def has_fields(model) -> bool:
        model = getattr(model, "func", model)  # the tiny variants are partials
        return all(f in model.__dataclass_fields__ for f in extra)

    if name in MODELS and not has_fields(MODELS[name]):
        fitting = ", ".join(n for n, m in MODELS.items() if has_fields(m))
        raise ValueError(
            f"config.method.name {method.name!r} needs a model with its layers "
            f"(config.model.name one of {fitting}); got {name!r}."
        )
    return extra


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all devices of all hosts (or the given ones)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Batch dimension split over the mesh's 'data' axis."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def init_variables(config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array) -> dict:
    """{'params': ..., 'batch_stats': ... ({} without batch norm)} of a model initialised on one
    config.data.image_size image (traceable: under `jax.eval_shape` it computes nothing)."""
    size = config.data.image_size
    variables = model.init({"params": rng}, jnp.zeros((1, size, size, 3)), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def replicated_shapes(tree, mesh: Mesh):
    """Shapes, dtypes and replicated shardings of a tree of arrays or shapes, for restoring."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
    if batch_size % mesh.size:
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {mesh.size} devices of the mesh; "
            f"use a multiple of {mesh.size}."
        )


def preprocess_config(config: ml_collections.ConfigDict) -> PreprocessConfig:
    d = config.data
    if d.resize_size < d.image_size:
        raise ValueError(
            f"config.data.resize_size ({d.resize_size}) must be >= image_size ({d.image_size}): "
            "training crops image_size out of the resized image."
        )
    return PreprocessConfig(d.image_size, d.resize_size, d.max_boxes)


def data_sources(config: ml_collections.ConfigDict) -> Mapping[str, Sequence]:
    """Random-access sources of every split (generated on first use for the embedded dataset).

    They pickle as the recipe for reopening them, so grain worker processes can read them.
    """
    d = config.data
    sizes = {"num_train": d.num_train, "num_validation": d.num_validation, "num_test": d.num_test}
    if "validation_per_class" in d:  # the hand-downloaded datasets' validation holdout
        sizes["validation_per_class"] = d.validation_per_class
    return reopenable_sources(d.name, d.image_size, d.data_dir or None, sizes)


def limit(source: Sequence, max_items: int) -> Sequence:
    """The first max_items items of a source (all when max_items is 0)."""
    if not max_items or max_items >= len(source):
        return source
    return _Prefix(source, max_items)


class _Prefix(Sequence):
    def __init__(self, source: Sequence, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.source[i % self.n]
