"""Forward pass + CAM of the predicted class + upsample + normalise: camjax against PyTorch.

    python benchmarks/cam_throughput.py [--model vgg16_gap] [--batch 8] [--size 224]
        [--width 1.0] [--dtype float32] [--iters 5] [--no-torch]

Times, on the same card or CPU in one process and on the same random input:

* camjax: ``camjax.cam_fn(model, variables, top_k=1)``, one jitted program (forward, top-1
  class, CAM einsum, OpenCV-exact bicubic upsampling as matrix products, min-max);
* PyTorch, TorchCAM-style: the same architecture as an ``nn.Module`` (eager; NHWC
  ``channels_last`` and autocast on GPU with ``--dtype bfloat16``), a forward that returns the
  last feature map, the CAM as ``einsum`` of that map with the predicted class's ``fc`` row,
  ``F.interpolate(mode="bicubic", align_corners=False)`` and a per-map min-max, as TorchCAM's
  ``CAM`` extractor and ``overlay_mask`` pipeline do.

Both start from random weights (timing only; the architectures are equal layer for layer, the
parameter count is printed for both). Reports images/s (median of --iters timed calls after
warm-up, each call synchronised) and compile/first-call time. Paste the table, with the date,
machine and command, into benchmarks/RESULTS.md.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import camjax  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def time_calls(fn, iters: int) -> tuple[float, float]:
    """(first call seconds, median seconds of `iters` later calls); fn must synchronise."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    fn()  # one untimed warm call (allocator, autotuning)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def camjax_case(args, images: np.ndarray):
    kwargs = {"num_classes": args.num_classes, "width": args.width, "dtype": DTYPES[args.dtype]}
    model = camjax.models.create_model(args.model, **kwargs)
    x = jnp.asarray(images)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    params = sum(p.size for p in jax.tree.leaves(variables["params"]))
    run = camjax.cam_fn(model, variables, top_k=1)

    def call():
        out = run(x)
        out.cams.block_until_ready()

    return params, time_calls(call, args.iters)


def torch_vgg16_gap(width: float, num_classes: int, groups: int):
    """VGG16-GAP as camjax builds it (conv1_1..conv5_3 with pool1..pool4, CAM_conv 3x3/1024
    grouped, ReLU, GAP, linear head), as a PyTorch module returning (logits, feature_map)."""
    import torch
    from torch import nn

    def c(n):
        return max(1, int(round(n * width)))

    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    layers, cin = [], 3
    for v in plan:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, c(v), 3, padding=1), nn.ReLU(inplace=True)]
            cin = c(v)
    layers += [nn.Conv2d(cin, c(1024), 3, padding=1, groups=groups), nn.ReLU(inplace=True)]

    class VGG16GAP(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(c(1024), num_classes)

        def forward(self, x):
            fmap = self.features(x)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)), fmap

    return VGG16GAP()


def torch_case(args, images: np.ndarray):
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = torch_vgg16_gap(args.width, args.num_classes, args.groups).to(device).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    autocast = args.dtype == "bfloat16" and device == "cuda"
    size = images.shape[1:3]

    @torch.inference_mode()
    def call():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            logits, fmap = model(x)
            top = logits.argmax(dim=1)
            cams = torch.einsum("bchw,bc->bhw", fmap.float(), model.fc.weight[top].float())
        cams = F.interpolate(cams[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]
        lo = cams.amin(dim=(1, 2), keepdim=True)
        hi = cams.amax(dim=(1, 2), keepdim=True)
        cams = (cams - lo) / (hi - lo).clamp_min(1e-12)
        if device == "cuda":
            torch.cuda.synchronize()
        return cams

    return params, time_calls(call, args.iters), device


def model_arguments(description: str) -> argparse.ArgumentParser:
    """The flags both framework comparisons share: model, batch, size, width, dtype, timing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="vgg16_gap", choices=["vgg16_gap"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    return parser


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0]).parse_args()

    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    print(
        f"{args.model} width {args.width}, batch {args.batch} at {args.size}x{args.size}, "
        f"{args.dtype}; {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}"
    )
    rows = []
    params, (first, median) = camjax_case(args, images)
    rows.append(("camjax cam_fn (jit)", params, first, median))
    if args.torch:
        import torch

        params, (first, median), device = torch_case(args, images)
        rows.append(
            (
                f"PyTorch eager, TorchCAM-style ({device}, torch {torch.__version__})",
                params,
                first,
                median,
            )
        )
    print("| case | parameters | first call s | median s | images/s |")
    print("|---|---|---|---|---|")
    for name, params, first, median in rows:
        print(f"| {name} | {params:,} | {first:.2f} | {median:.3f} | {args.batch / median:,.1f} |")
    if len(rows) == 2:
        print(f"\ncamjax / PyTorch throughput: {rows[1][3] / rows[0][3]:.2f}x")


if __name__ == "__main__":
    main()
