"""camjax's maps against TorchCAM's and pytorch-grad-cam's on the networks users run (issue 13).

    python benchmarks/peer_parity.py [--model resnet50_cam|vgg16_gap|googlenet_gap|...]
        [--width 1.0] [--size 224] [--batch 2] [--num_classes 1000] [--methods grad_cam ...]
        [--precision float32|default] [--smoke]

tests/explain/test_peer_parity.py holds camjax to both peers on width-1/16 twins (in the fast
lane its small CNN and VGG16-GAP, in the full suite the other networks too); this script makes
their feature-map comparisons at full width and 224 px, on the CPU or a GPU, and prints one
table for RESULTS.md. The network, its weights and its PyTorch twin are
explain_throughput.py's (`camjax_and_twin`), the images random, the layer the feature map (the
GAP's input), and each image's class its second-ranked one (not the top-1, so the targets are
really passed through). At the GAP's input the gradient is the same at every position, so
there Grad-CAM++, XGrad-CAM and HiResCAM reduce to Grad-CAM: their per-position weightings, the
inner layers, LayerCAM's fusion and the other methods are the tests' (at width 1/16). Each cell
is the largest absolute difference over the batch, of maps in [0, 1]:

* TorchCAM: camjax's raw maps (`size=None, normalize=False`) and TorchCAM's
  (`normalized=False`), both through TorchCAM's own min-max; in brackets the raw maps over the
  batch's peak of TorchCAM's, as a min-max hides a scale or a shift of the weights;
* grad-cam: camjax's raw maps through grad-cam's post-processing, by its code (ReLU, min-max,
  cv2 resize to the input), against grad-cam's maps.

The post-processing and the peers' calls are the parity tests' functions; their docstring says
why float32 leaves differences of 1e-6 to 1e-5 and where the peers depart from the papers:
TorchCAM's Grad-CAM++ (its cell says so), and Score-CAM, where camjax's options reproduce each
peer's variant (`TORCHCAM_SCORE`, `GRAD_CAM_SCORE`). Score-CAM runs the network once per
channel, image and library (2,048 ResNet50 forward passes an image), minutes on a 2-core CPU,
so it runs only when named in --methods (ten minutes, 613 s, for one image on the 2-core CPU).

`--precision float32` (the default) computes every convolution and matrix product in float32 on
both sides. On a GPU both frameworks otherwise round convolutions to TF32 (XLA's default
precision, cuDNN's allow_tf32), which moves maps by ~1e-3; `--precision default` measures
that. Each row ends with the whole-network tests' tolerance (`WHOLE_NETWORK_TOL`); the exit
status is 1 when a cell exceeds it.
"""

import argparse
import contextlib
import io
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the benchmarks' modules

from explain_throughput import _version, add_twin_arguments, camjax_and_twin  # noqa: E402

from camjax import explain  # noqa: E402
from tests.explain import test_peer_parity as parity  # noqa: E402  (peer calls, post-processing)

# camjax method -> (TorchCAM class, grad-cam class): None where the peer has none or departs
# from the paper's formula (TorchCAM's Grad-CAM++: test_torchcam_grad_cam_pp_is_its_closed_form).
PEERS = {
    "cam": ("CAM", None),
    "grad_cam": ("GradCAM", "GradCAM"),
    "grad_cam_pp": (None, "GradCAMPlusPlus"),
    "xgrad_cam": ("XGradCAM", "XGradCAM"),
    "hires_cam": (None, "HiResCAM"),
    "layer_cam": ("LayerCAM", "LayerCAM"),
    "score_cam": ("ScoreCAM", "ScoreCAM"),
}
DEFAULT_METHODS = [m for m in PEERS if m != "score_cam"]
LAYER, HEAD = "feature_map", "head"  # camjax's module paths; the twin's are under `net.`


def main(argv=None) -> int:
    args = _parse(argv)
    with _float32_products(args.precision == "float32"):
        return _compare(args)


def _compare(args) -> int:
    """Prints the table; 1 if a method's difference exceeds its tolerance, else 0."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, variables, twin = camjax_and_twin(args)
    twin = twin.to(device)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    with torch.no_grad():
        classes = twin(x).argsort(dim=1, descending=True)[:, 1].cpu().numpy()
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("jax", "torch", "torchcam", "grad-cam")
    )
    print(
        f"{args.model} width {args.width}, batch {args.batch} at {args.size}x{args.size}, "
        f"layer {LAYER}, second-ranked classes, {args.precision} precision; "
        f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind} / "
        f"torch {device}; {versions}"
    )
    print("| method | TorchCAM: normalised (raw / peak) | grad-cam | tolerance | seconds |")
    print("|---|---|---|---|---|")
    failed = []
    for method in args.methods:
        start = time.perf_counter()
        differences, cells = _differences(method, model, variables, images, twin, x, classes)
        tol = parity.WHOLE_NETWORK_TOL.get(method, parity.WHOLE_NETWORK_TOL["grad_cam"])
        if not all(d <= tol for d in differences):  # NaN fails
            failed.append(method)
        cells += [f"{tol:.0e}", f"{time.perf_counter() - start:.1f}"]
        print(f"| {method} | {' | '.join(cells)} |", flush=True)
    if failed:
        print(f"over the tolerance: {', '.join(failed)}")
    return int(bool(failed))


def _differences(method, model, variables, images, twin, x, classes):
    """([the largest differences], [the TorchCAM cell, the grad-cam cell]) of one method."""
    torchcam_name, gradcam_name = PEERS[method]
    differences, cells, computed = [], [], {}

    def ours(options):  # camjax's raw maps, once per set of options
        key = tuple(sorted(options.items()))
        if key not in computed:
            computed[key] = _camjax_raw(model, variables, images, classes, method, options)
        return computed[key]

    if torchcam_name is None:
        cells.append("departs from the paper" if method == "grad_cam_pp" else "-")
    else:
        raw_maps = ours(parity.TORCHCAM_SCORE if method == "score_cam" else {})
        kwargs = {"fc_layer": f"net.{HEAD}"} if method == "cam" else {}
        cls = getattr(parity.torchcam_methods, torchcam_name)
        (theirs,), _ = parity.torchcam_maps(cls, twin, x, [f"net.{LAYER}"], classes, **kwargs)
        normalised = _largest(parity.torchcam_post(raw_maps), parity.torchcam_post(theirs))
        peak = np.abs(theirs).max()
        raw = _largest(raw_maps / peak, theirs / peak)
        differences += [normalised, raw]
        cells.append(f"{normalised:.1e} ({raw:.1e})")
    if gradcam_name is None:
        cells.append("-")
    else:
        raw_maps = ours(parity.GRAD_CAM_SCORE if method == "score_cam" else {})
        cls = getattr(parity.grad_cam_peer(), gradcam_name)
        with contextlib.redirect_stderr(io.StringIO()):  # Score-CAM's progress bars
            theirs = parity.gradcam_maps(cls, twin, x, [f"net.{LAYER}"], classes)
        difference = _largest(parity.gradcam_post([raw_maps], images.shape[1:3]), theirs)
        differences.append(difference)
        cells.append(f"{difference:.1e}")
    return differences, cells


@contextlib.contextmanager
def _float32_products(wanted: bool):
    """float32 convolutions and matrix products in both frameworks while the comparison runs,
    each library's setting restored after it."""
    import torch

    if not wanted:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with jax.default_matmul_precision("float32"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _camjax_raw(model, variables, images, classes, method, options) -> np.ndarray:
    """camjax's raw maps (B, h, w) of `classes` at LAYER: no resize, no normalisation."""
    head = {"head": HEAD} if method == "cam" else {}
    f = explain.explainer(
        model, variables, method, layer=LAYER, size=None, normalize=False, **options, **head
    )
    return np.asarray(f(images, targets=classes).cams[:, 0])


def _largest(ours, theirs) -> float:
    """The largest absolute difference, NaN where a map is not finite (it then fails the
    tolerance); a ValueError where the peer's maps are constant (they would compare nothing)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"maps of shape {ours.shape} against {theirs.shape}")
    if not (np.isfinite(ours).all() and np.isfinite(theirs).all()):
        return float("nan")
    if np.ptp(theirs) == 0:
        raise ValueError("the peer's maps are constant: choose other weights or classes")
    return float(np.abs(ours - theirs).max())


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_twin_arguments(parser, model="resnet50_cam", batch=2)
    parser.add_argument("--methods", nargs="+", choices=tuple(PEERS), default=DEFAULT_METHODS)
    parser.add_argument("--precision", choices=("float32", "default"), default="float32")
    parser.add_argument("--smoke", action="store_true", help="toy size: width 1/16, 64 px")
    args = parser.parse_args(argv)
    if args.smoke:
        args.width, args.size, args.num_classes = 0.0625, 64, 10
    return args


if __name__ == "__main__":
    # PyTorch shares the card: JAX must not preallocate 75% of its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.exit(main())
