"""ImageNet initialisation from torchvision checkpoints: convert, save as orbax, merge.

The CAM recipe fine-tunes an ImageNet-pretrained backbone. This module reads a torchvision
state_dict (`vgg16-397923af.pth`, `googlenet-1378be20.pth`, `resnet50-*.pth`), maps its tensors
onto a camjax model's parameters and batch statistics, and saves them as an orbax checkpoint that
a training run merges into its freshly initialised variables:

    python -m camjax.models.torch_import --model vgg16_gap \
        --checkpoint vgg16-397923af.pth --out pretrained/vgg16

What is imported (the layers the CAM networks keep; everything else starts fresh):
- vgg16_gap: torchvision `features` conv1_1..conv5_3; `classifier` (fc6-fc8) is dropped and
  CAM_conv and the head are new, as the recipe says.
- googlenet_gap_bn: conv1..inception4e (convs and batch norms); inception5a/5b, the auxiliary
  heads and `fc` are dropped; CAM_conv and the head are new. The Caffe model googlenet_gap
  (LRN, no batch norm) has no torchvision layout.
- resnet50_cam: everything but `fc` (dropped, the head is new), or with `include_head` also `fc`
  as the head (wsolevaluation keeps the ImageNet fc when it trains on ILSVRC).

Tensors are mapped by name: the models name their layers after torchvision's keys (`layer1_0`
for `layer1.0`), VGG16 through its `features` indices. Convolution weights go from torch's
OIHW to Flax's HWIO, linear weights are transposed, batch norm weight/bias become scale/bias and
running_mean/running_var the `batch_stats` mean/var (`num_batches_tracked` is not needed).
torch is only needed to read the .pth file (`pip install 'camjax[torch]'`); converting a
mapping of numpy arrays does not import it.
"""

import dataclasses
import json
import logging
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from flax import traverse_util

from camjax import errors
from camjax.models import create_model
from camjax.models.googlenet import GoogLeNetGAP, GoogLeNetGAPBN
from camjax.models.resnet import ResNet50CAM
from camjax.models.vgg import VGG16GAP

# Positions of VGG16's convs in torchvision's `features` (each conv is followed by a ReLU, each
# block by a max pool): conv1_1 is features.0, conv5_3 features.28.
VGG16_FEATURE_INDICES = {
    "conv1_1": 0,
    "conv1_2": 2,
    "conv2_1": 5,
    "conv2_2": 7,
    "conv3_1": 10,
    "conv3_2": 12,
    "conv3_3": 14,
    "conv4_1": 17,
    "conv4_2": 19,
    "conv4_3": 21,
    "conv5_1": 24,
    "conv5_2": 26,
    "conv5_3": 28,
}
_MAX_LISTED = 12  # keys named in an error message before it says "and N more"

log = logging.getLogger(__name__)


class TorchImportError(ValueError):
    """A torchvision checkpoint does not fit the camjax model it is converted for."""


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one camjax architecture lines up with a torchvision state_dict."""

    new_layers: tuple[str, ...]  # top-level camjax modules that keep their fresh initialisation
    dropped: tuple[str, ...]  # torch key prefixes of layers the CAM network removes
    torch_name: Callable[[str], str]  # camjax module name -> torch module name


def _torchvision_name(name: str) -> str:
    """`layer1_0` -> `layer1.0`, `downsample_1` -> `downsample.1`, `bn1` -> `bn1`."""
    return re.sub(r"_(\d+)$", r".\1", name)


def _vgg_name(name: str) -> str:
    return f"features.{VGG16_FEATURE_INDICES[name]}"


def _layout(model: nn.Module, include_head: bool) -> _Layout:
    arch = type(model).__name__
    if include_head and not isinstance(model, ResNet50CAM):
        raise TorchImportError(
            f"include_head is for resnet50_cam only: {arch}'s head reads CAM_conv features, "
            "not torchvision's fc inputs, so it starts fresh."
        )
    if isinstance(model, VGG16GAP):
        return _Layout(("cam_conv", "head"), ("classifier.",), _vgg_name)
    if isinstance(model, GoogLeNetGAPBN):
        dropped = ("inception5a.", "inception5b.", "aux1.", "aux2.", "fc.")
        return _Layout(("cam_conv", "head"), dropped, _torchvision_name)
    if isinstance(model, ResNet50CAM):
        if include_head:
            return _Layout((), (), lambda n: "fc" if n == "head" else _torchvision_name(n))
        return _Layout(("head",), ("fc.",), _torchvision_name)
    hint = (
        " (use googlenet_gap_bn, torchvision's layout)" if isinstance(model, GoogLeNetGAP) else ""
    )
    raise TorchImportError(
        f"no torchvision layout for {arch}{hint}; supported: VGG16GAP, GoogLeNetGAPBN, ResNet50CAM."
    )


@dataclasses.dataclass(frozen=True)
class _Target:
    collection: str  # 'params' or 'batch_stats'
    path: tuple[str, ...]
    shape: tuple[int, ...]
    axes: tuple[int, ...] | None  # transpose from the torch layout, if any


def _targets(abstract: Mapping[str, Any], layout: _Layout) -> tuple[dict[str, _Target], set[str]]:
    """torch key -> where it goes, for every imported layer; and the optional torch keys."""
    layers: dict[tuple[str, ...], dict[str, Any]] = {}
    for path, leaf in traverse_util.flatten_dict(abstract["params"]).items():
        if path[0] not in layout.new_layers:
            layers.setdefault(path[:-1], {})[path[-1]] = leaf
    stats = traverse_util.flatten_dict(abstract.get("batch_stats", {}))
    targets: dict[str, _Target] = {}
    optional: set[str] = set()
    for layer, leaves in layers.items():
        if "scale" in leaves:  # batch norm
            entries = [
                ("weight", "params", "scale", None),
                ("bias", "params", "bias", None),
                ("running_mean", "batch_stats", "mean", None),
                ("running_var", "batch_stats", "var", None),
            ]
        elif "kernel" in leaves:  # conv (OIHW -> HWIO) or dense ((out, in) -> (in, out))
            axes = (2, 3, 1, 0) if leaves["kernel"].ndim == 4 else (1, 0)
            entries = [("weight", "params", "kernel", axes)]
            if "bias" in leaves:
                entries.append(("bias", "params", "bias", None))
        else:
            raise TorchImportError(
                f"camjax layer {'/'.join(layer)} has no torchvision counterpart."
            )
        prefix = ".".join(layout.torch_name(name) for name in layer)
        for torch_leaf, collection, leaf, axes in entries:
            shape = leaves[leaf].shape if collection == "params" else stats[(*layer, leaf)].shape
            targets[f"{prefix}.{torch_leaf}"] = _Target(
                collection, (*layer, leaf), tuple(shape), axes
            )
        if "scale" in leaves:
            optional.add(f"{prefix}.num_batches_tracked")  # absent from older checkpoints
    return targets, optional


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def abstract_variables(model: nn.Module, image_size: int = 64) -> dict[str, Any]:
    """Shapes and dtypes of a model's variables (no computation): {'params': ..., ...}."""
    x = jnp.zeros((1, image_size, image_size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def convert_state_dict(
    state_dict: Mapping[str, Any], model: nn.Module, *, include_head: bool = False
) -> dict[str, Any]:
    """torchvision state_dict -> the camjax variables it initialises, as float32 numpy arrays.

    state_dict: torch key -> array-like (torch CPU tensors or numpy arrays). Returns
    {'params': nested dict, 'batch_stats': nested dict (batch-norm models only)} holding only the
    imported layers; merge it into fresh variables with `merge_pretrained`. Raises
    TorchImportError listing missing and unexpected keys, or naming each tensor whose shape does
    not fit (e.g. a width-scaled model).
    """
    layout = _layout(model, include_head)
    targets, optional = _targets(abstract_variables(model), layout)
    arch = type(model).__name__
    missing = [k for k in targets if k not in state_dict]
    unexpected = [
        k
        for k in state_dict
        if k not in targets and k not in optional and not k.startswith(layout.dropped)
    ]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        raise TorchImportError(
            f"the state_dict does not have torchvision's layout for {arch}: "
            f"{'; '.join(parts)}. Is it a checkpoint of another architecture?"
        )
    out: dict[str, dict[tuple[str, ...], np.ndarray]] = {"params": {}, "batch_stats": {}}
    mismatches = []
    for key, t in targets.items():
        value = np.asarray(state_dict[key], dtype=np.float32)
        if t.axes is not None and value.ndim == len(t.axes):
            value = value.transpose(t.axes)
        if value.shape != t.shape:
            wanted = t.shape
            if t.axes is not None:  # the model's shape in torch's layout, to compare like with like
                wanted = tuple(t.shape[i] for i in np.argsort(t.axes))
            mismatches.append(
                f"{key}: checkpoint {tuple(np.shape(state_dict[key]))}, model "
                f"{'/'.join(t.path)} {wanted}" + (" (OIHW)" if t.axes and len(t.axes) == 4 else "")
            )
            continue
        out[t.collection][t.path] = np.ascontiguousarray(value)
    if mismatches:
        width = getattr(model, "width", None)
        raise TorchImportError(
            f"{len(mismatches)} torchvision tensors do not fit {arch} (width={width}): "
            f"{_listing(mismatches)}. Build the model at the checkpoint's width (1.0 for "
            "torchvision's ImageNet weights)."
        )
    return {c: traverse_util.unflatten_dict(leaves) for c, leaves in out.items() if leaves}


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "Reading PyTorch checkpoints needs torch, an optional dependency of camjax: "
            "pip install 'camjax[torch]'"
        ) from e
    return torch


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a .pth state_dict (tensors only, `weights_only=True`) as numpy arrays.

    Floating tensors become float32 (so half and bfloat16 checkpoints work too).
    """
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses anything but tensors and containers
        raise TorchImportError(
            f"{path} holds pickled Python objects (a whole model?), not a state_dict of tensors "
            f"({errors.first_line(e)}). Save `model.state_dict()` and convert that file; "
            "camjax does not unpickle arbitrary objects, which could run code."
        ) from None
    except FileNotFoundError:
        raise
    except Exception as e:  # torch's legacy reader raises whatever the garbage makes it raise
        raise TorchImportError(
            f"{path} is not a readable torch checkpoint ({errors.first_line(e)}): it is "
            "truncated or not a .pth file. Download or save it again."
        ) from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TorchImportError(
            f"{path} is not a state_dict (a mapping of names to tensors); got {type(obj).__name__}."
            " Save `model.state_dict()`, or pass the torchvision weights file itself."
        )
    if obj and all(k.startswith("module.") for k in obj):
        # nn.DataParallel / DistributedDataParallel save their wrapped model's keys this way.
        log.info("%s: stripped the 'module.' prefix of a DataParallel checkpoint's keys.", path)
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().numpy()
        for k, v in obj.items()
    }


def save_pretrained(directory: str, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """Writes converted variables and their description as one orbax checkpoint; returns its path.

    Orbax writes into a temporary directory and renames it when complete, so `directory` either
    holds the whole checkpoint or does not exist. An existing `directory` is an error (no
    silent overwrite).
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise FileExistsError(f"{directory} exists; remove it or choose another --out.")
    json.dumps(meta)  # fail before anything is written
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(
            directory,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(dict(variables)), meta=ocp.args.JsonSave(dict(meta))
            ),
        )
    return directory


def load_pretrained(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a checkpoint written by `save_pretrained`: (variables as numpy arrays, meta)."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"no pretrained checkpoint at {directory}; write one with "
            "python -m camjax.models.torch_import --model ... --checkpoint ... --out DIR"
        )
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(
            directory,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
            ),
        )
    return restored["variables"], restored["meta"]


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any]) -> dict[str, Any]:
    """Fresh variables with the pretrained leaves put in their place; the rest kept as they are.

    variables: a model's full {'params': ..., 'batch_stats': ...} (e.g. from `model.init`);
    pretrained: a subset with the same paths and shapes (`convert_state_dict`,
    `load_pretrained`). A pretrained leaf takes the fresh leaf's dtype and, for a jax.Array, its
    sharding, so merging into a replicated train state keeps it replicated. Raises ValueError
    naming any pretrained path the model lacks or whose shape differs.
    """
    fresh = traverse_util.flatten_dict(dict(variables))
    problems = []
    merged = dict(fresh)
    for path, value in traverse_util.flatten_dict(dict(pretrained)).items():
        name = "/".join(path)
        if path not in fresh:
            problems.append(f"{name} is not in the model")
            continue
        target = fresh[path]
        if tuple(np.shape(value)) != tuple(target.shape):
            problems.append(f"{name}: pretrained {tuple(np.shape(value))}, model {target.shape}")
            continue
        value = np.asarray(value, dtype=target.dtype)
        sharding = getattr(target, "sharding", None)
        merged[path] = (
            jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
        )
    if problems:
        raise ValueError(
            f"the pretrained variables do not fit the model: {_listing(problems)}. Convert the "
            "checkpoint for this model (same architecture and width)."
        )
    return traverse_util.unflatten_dict(merged)


def init_from_pretrained(variables: Mapping[str, Any], directory: str) -> dict[str, Any]:
    """Loads a `save_pretrained` checkpoint and merges it into fresh `variables`."""
    pretrained, _ = load_pretrained(directory)
    return merge_pretrained(variables, pretrained)


def import_checkpoint(
    model_name: str, checkpoint: str, out: str, *, include_head: bool = False, **model_kwargs
) -> str:
    """Converts a torchvision .pth for registered model `model_name` and saves it at `out`."""
    model = create_model(model_name, **model_kwargs)
    variables = convert_state_dict(
        load_torch_state_dict(checkpoint), model, include_head=include_head
    )
    meta = {
        "model": model_name,
        "architecture": type(model).__name__,
        "model_kwargs": model_kwargs,
        "source": os.path.basename(checkpoint),
        "include_head": include_head,
        "imported": {c: len(traverse_util.flatten_dict(v)) for c, v in variables.items()},
    }
    return save_pretrained(out, variables, meta)


PROG = "python -m camjax.models.torch_import"


def main(argv: Sequence[str] | None = None) -> None:
    """python -m camjax.models.torch_import --model NAME --checkpoint FILE.pth --out DIR."""
    # absl flags in their own FlagValues: importing this module defines no global flags.
    fv = flags.FlagValues()
    flags.DEFINE_string("model", None, "vgg16_gap, googlenet_gap_bn, resnet50_cam", flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "torchvision .pth state_dict", flag_values=fv)
    flags.DEFINE_string("out", None, "output directory (must not exist)", flag_values=fv)
    flags.DEFINE_bool(
        "include_head", False, "resnet50_cam: import fc as the head too", flag_values=fv
    )
    for name in ("model", "checkpoint", "out"):
        flags.mark_flag_as_required(name, flag_values=fv)
    args = list(sys.argv[1:] if argv is None else argv)
    usage = f"{PROG} --model NAME --checkpoint FILE --out DIR [--include_head]"
    if _asks_for_help(args, fv):
        print(f"usage: {usage}\n\n{fv.get_help().strip()}")  # absl.app's --help, without absl.app
        return
    try:
        fv([PROG, *args])
        path = import_checkpoint(fv.model, fv.checkpoint, fv.out, include_head=fv.include_head)
    except flags.Error as e:
        raise SystemExit(f"error: {e} (usage: {usage})") from None
    except (TorchImportError, FileExistsError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"error: {e}") from e
    print(f"wrote {path}")


_HELP = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def _asks_for_help(args: Sequence[str], fv: flags.FlagValues) -> bool:
    """Whether args hold --help (or -h, --helpshort, --helpfull) as a flag before a `--`, not
    as the value of one of fv's flags that take a value (`--checkpoint -h`)."""
    takes_value = {f"--{name}" for name in fv if not fv[name].boolean}
    for previous, arg in zip(["", *args], args, strict=False):
        if arg == "--":
            return False
        if previous not in takes_value and arg in _HELP:
            return True
    return False


if __name__ == "__main__":
    main()
