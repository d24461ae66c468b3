"""Every camjax explainer method against TorchCAM and pytorch-grad-cam: images/s (issue 13).

    python benchmarks/explain_throughput.py [--model vgg16_gap|googlenet_gap|resnet50_cam|...]
        [--batch 8] [--size 224] [--width 1.0] [--groups 2] [--num_classes 1000] [--repeats 3]
        [--methods grad_cam ...] [--chunk_size N] [--smoke]

One process, one machine, one architecture: camjax's network and its PyTorch twin
(benchmarks/torch_models.py) with camjax's random weights copied in, on the same random batch.
The batch-norm networks (ResNet50-CAM, GoogLeNet-GAP-BN) go the other way: their twins in
torchvision's layout (tests/models/test_torch_import.py, needs pytest) draw the weights,
batch-norm statistics of a calibration batch, and camjax's converter imports them, as the
parity tests do (`camjax_and_twin`).
Every call explains the batch's top-1 classes at the network's feature map (the GAP's input)
and returns min-max normalised maps at the input resolution:

* camjax: `explain.explainer(model, variables, method, resize='bilinear')` (with `--chunk_size`,
  the perturbation methods' copies per forward pass), one jitted program per method, called on
  a device array, synchronised;
* TorchCAM 0.5.0: forward, the extractor on the predicted classes (its maps are min-max
  normalised at the layer's resolution), `F.interpolate(bilinear)` to the input;
* pytorch-grad-cam 1.5.7: `Method(model, [layer])(x)` with no targets (the predicted
  classes); its maps come back at the input resolution, resized by cv2 on the host.

Each library runs with its defaults (Smooth Grad-CAM++: 4 samples of std 0.3, both peers'
Score-CAM batching); a method a peer lacks shows '-'. The calls of one method alternate between
the libraries (`cam_throughput.time_interleaved`: first call, one warm call, then --repeats
timed rounds; median), so the ratios compare the code rather than drifting load. camjax's first
call includes its compile. Goals (issue 13): >= 3x the faster peer for the methods that run one
forward pass per channel, >= 1x for the others. Paste the table, with the date, machine, load
and command, into benchmarks/RESULTS.md.
"""

import argparse
import contextlib
import io
import os
import platform
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cam_throughput import MODELS, time_interleaved  # noqa: E402

from camjax import explain  # noqa: E402
from camjax.models import create_model  # noqa: E402

# camjax method -> (TorchCAM class, pytorch-grad-cam class); None where the peer has none.
PEERS = {
    "cam": ("CAM", None),
    "grad_cam": ("GradCAM", "GradCAM"),
    "grad_cam_pp": ("GradCAMpp", "GradCAMPlusPlus"),
    "smooth_grad_cam_pp": ("SmoothGradCAMpp", None),
    "xgrad_cam": ("XGradCAM", "XGradCAM"),
    "hires_cam": (None, "HiResCAM"),
    "layer_cam": ("LayerCAM", "LayerCAM"),
    "eigen_cam": (None, "EigenCAM"),
    "eigen_grad_cam": (None, "EigenGradCAM"),
    "score_cam": ("ScoreCAM", "ScoreCAM"),
    "ss_cam": ("SSCAM", None),
    "is_cam": ("ISCAM", None),
    "ablation_cam": (None, "AblationCAM"),
}
# One forward pass of the rest of the network per channel (and per sample): goal >= 3x.
PER_CHANNEL = ("score_cam", "ss_cam", "is_cam", "ablation_cam")
LAYER = "feature_map"  # camjax's module path; the twin's is net.feature_map


def import_peers():
    """(torchcam.methods, pytorch_grad_cam), either None where not installed."""
    with warnings.catch_warnings():
        # torchvision 0.16.2 on torch 2.13 cannot load its C image extension; nothing here uses it.
        warnings.simplefilter("ignore")
        try:
            import torchcam.methods as torchcam
        except ImportError:
            torchcam = None
        try:
            import pytorch_grad_cam as gradcam
        except ImportError:
            gradcam = None
    return torchcam, gradcam


def torchcam_call(cls, twin, x):
    """(A synchronising call of a TorchCAM extractor -> maps (B, H, W) at the input size, the
    function removing its hooks)."""
    import torch
    import torch.nn.functional as F

    kwargs = {"fc_layer": "net.head"} if cls.__name__ == "CAM" else {}
    extractor = cls(twin, target_layer=f"net.{LAYER}", input_shape=tuple(x.shape[1:]), **kwargs)
    gradient_free = cls.__name__ in ("CAM", "ScoreCAM", "SSCAM", "ISCAM")

    def call():
        with torch.no_grad() if gradient_free else contextlib.nullcontext():
            scores = twin(x)
        classes = scores.argmax(dim=1).tolist()
        (maps,) = extractor(class_idx=classes, scores=scores)
        maps = F.interpolate(maps[:, None], x.shape[2:], mode="bilinear", align_corners=False)
        if x.is_cuda:
            torch.cuda.synchronize()
        return maps

    return call, extractor.remove_hooks


def gradcam_call(cls, twin, x):
    """(A synchronising call of a pytorch-grad-cam method -> maps (B, H, W) numpy of the top-1
    classes, the function removing its hooks)."""
    cam = cls(twin, [twin.net.feature_map])

    def call():
        # Score-CAM and Ablation-CAM print tqdm progress bars on stderr.
        with contextlib.redirect_stderr(io.StringIO()):
            return cam(x, None)

    return call, cam.activations_and_grads.release


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int; got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_twin_arguments(parser, model="vgg16_gap", batch=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method")
    parser.add_argument(
        "--chunk_size",
        type=_positive_int,
        default=None,
        help="the perturbation methods' copies per forward pass (default: camjax's, 32)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="toy sizes: batch 2, 64 px, width 1/16, 1 repeat"
    )
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.size, args.width, args.num_classes, args.repeats = 2, 64, 0.0625, 10, 1
    # PyTorch shares the card: JAX must not preallocate 75% of its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import torch

    torchcam, gradcam = import_peers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    x = jnp.asarray(images)
    model, variables, twin = camjax_and_twin(args)
    twin = twin.to(device)
    tx = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)

    versions = {
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torchcam": _version("torchcam") if torchcam else "absent",
        "grad-cam": _version("grad-cam") if gradcam else "absent",
    }
    groups = "" if args.model == "resnet50_cam" else f", groups {args.groups}"
    print(
        f"{args.model} width {args.width}{groups}, batch {args.batch} at "
        f"{args.size}x{args.size}, float32, layer {LAYER}, top-1 classes, maps at the input "
        f"size, perturbation methods' chunk_size {args.chunk_size or 'default'}; "
        f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind} / "
        f"torch {device}; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    methods = [m for m in args.methods or PEERS if m in explain.METHODS]
    missing = [m for m in args.methods or PEERS if m not in explain.METHODS]
    if missing:
        print(f"not in camjax.explain.METHODS, skipped: {', '.join(missing)}")
    print(
        "| method | camjax img/s | TorchCAM img/s | grad-cam img/s | camjax / faster peer "
        "| goal | camjax first call s |"
    )
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        per_channel = args.chunk_size is not None and method in PER_CHANNEL
        chunk = {"chunk_size": args.chunk_size} if per_channel else {}
        f = explain.explainer(model, variables, method, resize="bilinear", **chunk)
        calls = {"camjax": lambda f=f: f(x).cams.block_until_ready()}
        cleanups = []
        tc_name, gc_name = PEERS.get(method, (None, None))
        if torchcam and tc_name:
            calls["torchcam"], cleanup = torchcam_call(getattr(torchcam, tc_name), twin, tx)
            cleanups.append(cleanup)
        if gradcam and gc_name:
            calls["gradcam"], cleanup = gradcam_call(getattr(gradcam, gc_name), twin, tx)
            cleanups.append(cleanup)
        try:
            timings = time_interleaved(calls, args.repeats)
        finally:  # hooks left on the twin would slow the next method's peers
            for cleanup in cleanups:
                cleanup()
        rate = {name: args.batch / median for name, (_, median) in timings.items()}
        peers = [rate[p] for p in ("torchcam", "gradcam") if p in rate]
        ratio = f"{rate['camjax'] / max(peers):.2f}x" if peers else "-"
        goal = "3x" if method in PER_CHANNEL else "1x"
        cells = [f"{rate[p]:,.2f}" if p in rate else "-" for p in ("camjax", "torchcam", "gradcam")]
        first = timings["camjax"][0]
        print(f"| {method} | {' | '.join(cells)} | {ratio} | {goal} | {first:.1f} |", flush=True)


def add_twin_arguments(parser: argparse.ArgumentParser, model: str, batch: int) -> None:
    """--batch and the flags `camjax_and_twin` reads: --model (default `model`), --size,
    --width, --groups and --num_classes."""
    parser.add_argument("--model", default=model, choices=(*MODELS, *IMPORTED_TWINS))
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--groups", type=int, default=2, help="the GAP networks' CAM_conv")
    parser.add_argument("--num_classes", type=int, default=1000)


def camjax_and_twin(args):
    """(camjax's `args.model`, its variables, the PyTorch twin in eval mode returning the logits,
    its feature map at `net.feature_map` and its classifier at `net.head`), at args.width and
    args.num_classes. The GAP networks' twins (benchmarks/torch_models.py) take camjax's
    initial weights; the batch-norm networks' (torchvision's layout, tests/models/
    test_torch_import.py, needs pytest) draw theirs, batch-norm statistics of a random
    calibration batch at args.size, and camjax's converter imports them."""
    from torch_models import TORCH_MODELS, LogitsOnly, load_camjax_variables

    if args.model in IMPORTED_TWINS:
        model, variables, twin = _imported_batch_norm_twin(args)
    else:
        model = create_model(
            args.model, num_classes=args.num_classes, width=args.width, groups=args.groups
        )
        sample = jnp.zeros((1, args.size, args.size, 3))
        variables = jax.jit(lambda k: model.init(k, sample, train=False))(jax.random.key(0))
        twin = load_camjax_variables(
            TORCH_MODELS[args.model](args.width, args.num_classes, args.groups), variables
        )
    return model, variables, LogitsOnly(twin).eval()


IMPORTED_TWINS = ("resnet50_cam", "googlenet_gap_bn")


def _imported_batch_norm_twin(args):
    """camjax_and_twin of IMPORTED_TWINS: ResNet50-CAM's twin has layer4 at stride 1 (as
    wsolevaluation's); GoogLeNet-GAP-BN's trunk is torchvision's and its CAM_conv and head,
    camjax's own layers, are copied."""
    import torch

    from camjax.models import torch_import
    from tests.models import test_torch_import as torch_twins

    class Twin(torch.nn.Module):
        """The feature map and the head under the GAP twins' names (`feature_map`, `head`),
        returning (logits, feature_map) as they do."""

        def __init__(self, net, features):
            super().__init__()
            # `head` alone holds fc: torch names a module shared by two parents only once.
            self.feature_map, self.head, net.fc = torch.nn.Identity(), net.fc, None
            self.body, self._features = net, features

        def forward(self, x):
            feature_map = self.feature_map(self._features(x))
            return self.head(feature_map.mean((2, 3))), feature_map

    groups = {} if args.model == "resnet50_cam" else {"groups": args.groups}
    model = create_model(args.model, num_classes=args.num_classes, width=args.width, **groups)
    if args.model == "resnet50_cam":
        net = torch_twins.TorchResNet50(args.width, (1, 2, 2, 1), args.num_classes)
        weights = torch_twins.calibrated_state_dict(net, args.size)
        variables = torch_import.convert_state_dict(weights, model, include_head=True)
        twin = Twin(net, net.features)
    else:
        net = torch_twins.TorchGoogLeNetGAPBN(args.width, args.num_classes, args.groups)
        weights = torch_twins.calibrated_state_dict(net, args.size)
        trunk = {k.removeprefix("trunk."): v for k, v in weights.items() if k.startswith("trunk.")}
        variables = torch_import.convert_state_dict(trunk, model)
        variables = torch_twins.copy_cam_head(variables, net)
        twin = Twin(net, lambda x: net.feature_map(net.cam_conv(net.features(x))))
    return model, jax.tree.map(jnp.asarray, variables), twin


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
