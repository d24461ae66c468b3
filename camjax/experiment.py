"""Turns a config into the objects a run needs: model, device mesh, data sources, preprocessing.

The one place where config field names meet the library's rooms, shared by training and
evaluation so both build exactly the same model and data.
"""

import os
import tempfile
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from camjax import distributed, errors
from camjax.data import reopenable_sources
from camjax.data.pipeline import PreprocessConfig
from camjax.models import MODELS, create_model
from camjax.models.layers import FEATURE_MAP


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
    elsewhere = f"process 0 cannot write {workdir} (its error says why); nothing was done."
    if problem := distributed.shared_problem(problem, elsewhere):
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
    _check_field_types(name, fields)
    try:
        return create_model(name, dtype=DTYPES[dtype], **fields)
    except TypeError as e:
        raise ValueError(f"config.model does not fit model {name!r}: {e}") from e


def _check_field_types(name: str, fields: dict) -> None:
    """A config.model value of the wrong plain type (a hand-edited config.json's "width": "abc")
    is a one-line error here, not a TypeError inside the network's first call."""
    model = getattr(MODELS.get(name), "func", MODELS.get(name))  # the tiny variants: partials
    declared = getattr(model, "__dataclass_fields__", {})
    for key, value in fields.items():
        kind = getattr(declared.get(key), "type", None)
        kind = {"int": int, "float": float, "str": str, "bool": bool}.get(kind, kind)
        numbers = (int, float) if kind is float else (kind,)
        if kind in (int, float, str, bool) and (
            not isinstance(value, numbers) or (kind is not bool and isinstance(value, bool))
        ):
            raise ValueError(
                f"config.model.{key} must be {'a' if kind is not int else 'an'} "
                f"{kind.__name__} for model {name!r}; got {value!r}."
            )


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
    check_data_config(config)
    size = config.data.image_size
    variables = model.init({"params": rng}, jnp.zeros((1, size, size, 3)), train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def replicated_shapes(tree, mesh: Mesh):
    """Shapes, dtypes and replicated shardings of a tree of arrays or shapes, for restoring."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
    """One-line ValueErrors for a batch size that is not a positive multiple of the devices."""
    if not errors.is_int_at_least(batch_size, 1):
        raise ValueError(
            f"{what} must be a positive int (a multiple of the {mesh.size} devices); "
            f"got {batch_size!r}."
        )
    if batch_size % mesh.size:
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {mesh.size} devices of the mesh; "
            f"use a multiple of {mesh.size}."
        )


def check_eval_config(ev: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """One-line ValueErrors for config.eval values no evaluation can use."""
    check_batch_size(ev.batch_size, mesh, "config.eval.batch_size")
    if isinstance(ev.iou_threshold, bool) or not 0 <= ev.iou_threshold <= 1:
        raise ValueError(
            "config.eval.iou_threshold must be a fraction in [0, 1] (0.5: IoU >= 50%); got "
            f"{ev.iou_threshold!r}."
        )
    if not errors.is_int_at_least(ev.max_images, 0):
        raise ValueError(
            f"config.eval.max_images must be an int >= 0 (0: all); got {ev.max_images}."
        )
    if ev.get("method", "cam") == "cam" and (layer := ev.get("layer", FEATURE_MAP)) != FEATURE_MAP:
        raise ValueError(  # else scored at the GAP's input without a word
            f"config.eval.layer is {layer!r}, but CAM reads the classifier's input, 'feature_map'"
            "; drop --config.eval.layer, or pick a method for it (--config.eval.method=grad_cam)."
        )


def check_train_config(t: ml_collections.ConfigDict) -> None:
    """One-line ValueErrors for config.train counts no run can use: keep_checkpoints=0 would
    have orbax delete every checkpoint of the run, a zero interval would divide by zero after
    compiling."""
    for field in ("num_steps", "keep_checkpoints", "checkpoint_every_steps", "log_every_steps"):
        if not errors.is_int_at_least(t[field], 1):
            raise ValueError(f"config.train.{field} must be a positive int; got {t[field]!r}.")
    every = t.eval_every_steps
    if not errors.is_int_at_least(every, 0):
        raise ValueError(
            f"config.train.eval_every_steps must be an int >= 0 (0: no validation during "
            f"training); got {every!r}."
        )


def check_data_config(config: ml_collections.ConfigDict) -> None:
    """One-line ValueErrors for config.data values no network or pipeline can use."""
    d = config.data
    if not errors.is_int_at_least(d.image_size, 1):
        raise ValueError(f"config.data.image_size must be a positive int; got {d.image_size!r}.")
    for field in ("mean", "std"):
        value = tuple(d[field])
        if len(value) != 3 or (field == "std" and min(value) <= 0):
            raise ValueError(
                f"config.data.{field} must be 3 numbers, one per RGB channel"
                f"{' and each > 0' if field == 'std' else ''}, in [0, 1] units; got {value}."
            )


def preprocess_config(config: ml_collections.ConfigDict) -> PreprocessConfig:
    check_data_config(config)
    d = config.data
    if d.resize_size < d.image_size:
        raise ValueError(
            f"config.data.resize_size ({d.resize_size}) must be >= image_size ({d.image_size}): "
            "training crops image_size out of the resized image."
        )
    return PreprocessConfig(d.image_size, d.resize_size, d.max_boxes)


# The config.data fields naming the splits each job reads. Training checks the test split too:
# evaluate.py reads it after the run, and a typo found then would cost the whole training.
TRAINING_SPLITS = ("train_split", "val_split", "test_split")
EVALUATION_SPLITS = ("val_split", "test_split")


def data_sources(
    config: ml_collections.ConfigDict, splits: Sequence[str] = TRAINING_SPLITS
) -> Mapping[str, Sequence]:
    """Random-access sources of every split (generated on first use for the embedded dataset);
    one-line errors where a split that `splits` (config.data fields) names is missing or empty.

    They pickle as the recipe for reopening them, so grain worker processes can read them.
    """
    d = config.data
    sizes = {"num_train": d.num_train, "num_validation": d.num_validation, "num_test": d.num_test}
    if "validation_per_class" in d:  # the hand-downloaded datasets' validation holdout
        sizes["validation_per_class"] = d.validation_per_class
    sources = reopenable_sources(d.name, d.image_size, d.data_dir or None, sizes)
    # A missing or empty split would end the job in a bare KeyError or StopIteration.
    for field in splits:
        split = d[field]
        if split not in sources:
            raise ValueError(
                f"config.data.{field} is {split!r}, a split {d.name} does not have; set it to "
                f"one of its splits: {', '.join(sorted(sources))}."
            )
        if not len(sources[split]):
            why = "."
            if "validation_per_class" in d and split == d.train_split:
                why = ": config.data.validation_per_class held every image out of it."
            raise ValueError(f"the {split} split of {d.name} holds no examples{why}")
    return sources


def limit(source: Sequence, max_items: int) -> Sequence:
    """The first max_items items of a source (all when max_items is 0)."""
    if not max_items or max_items >= len(source):
        return source
    from camjax.data.subsets import SplitView  # tfds: imported when a split is read anyway

    return SplitView(source, np.arange(max_items))
