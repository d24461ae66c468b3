"""Forward pass + CAM of the predicted class + upsample + normalise: camjax against PyTorch.

    python benchmarks/cam_throughput.py [--model vgg16_gap|googlenet_gap] [--batch 8]
        [--size 224] [--width 1.0] [--groups 2] [--grouped_conv_impl split|xla]
        [--num_classes 1000] [--dtype float32|bfloat16] [--iters 5] [--no-torch]

Times, on the same card or CPU in one process and on the same random input:

* camjax: ``camjax.cam_fn(model, variables, top_k=1)``, one jitted program (forward, top-1
  class, CAM einsum, OpenCV-exact bicubic upsampling as matrix products, min-max);
* camjax forward only: the same model's jitted ``model.apply`` returning the logits;
* the CAM tail alone: top-1 CAM einsum, bicubic upsample and min-max, jitted, on a feature map
  of the model's shape already on the device. Its share of the cam_fn call is the most that
  fusing the tail into one kernel (a Pallas CAM + upsample + normalise) could save;
* PyTorch, TorchCAM-style: the same architecture as an ``nn.Module`` (benchmarks/torch_models.py;
  eager; NHWC ``channels_last`` and autocast on GPU with ``--dtype bfloat16``), a forward that
  returns the last feature map, the CAM as ``einsum`` of that map with the predicted class's
  ``head`` row, ``F.interpolate(mode="bicubic", align_corners=False)`` and a per-map min-max, as
  TorchCAM's ``CAM`` extractor and ``overlay_mask`` pipeline do.

The calls alternate (their timed calls are taken in turn), so the ratios compare the
code rather than drifting load. Both frameworks start from random weights (timing only;
tests/test_benchmarks.py checks that the twins compute camjax's networks; the parameter count
is printed for both). Reports images/s (median of --iters timed calls after warm-up, each call
synchronised), first-call time and the share of the chip limit: the measured matmul peak
(`matmul_peak`: chains of bf16 8192^3 products on an accelerator, float32 2048^3 on CPU)
divided by the forward FLOPs per image that XLA's cost analysis counts in the lowered camjax
forward. With PyTorch in the process JAX does not preallocate GPU memory
(`share_device_with_torch`). Paste the table, with the date, machine and command, into
benchmarks/RESULTS.md.
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
MODELS = ("vgg16_gap", "googlenet_gap")  # the networks with a twin in torch_models.py
GROUPED_CONV_IMPLS = ("split", "xla")  # camjax.models.layers.GroupedConv's impl choices


def time_calls(fn, iters: int) -> tuple[float, float]:
    """(first call seconds, median seconds of `iters` later calls); fn must synchronise."""
    return time_interleaved({"": fn}, iters)[""]


def time_interleaved(fns: dict, iters: int) -> dict[str, tuple[float, float]]:
    """time_calls for several functions, their timed calls taken in turn: on a shared machine
    whose load drifts, the difference of two medians then measures the functions, not the drift.

    fns: name -> function that synchronises. Returns name -> (first call s, median s).
    """
    first = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
        fn()  # one untimed warm call (allocator, autotuning)
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (first[name], statistics.median(times[name])) for name in fns}


def matmul_peak(iters: int = 10, chain: int = 10) -> tuple[float, str]:
    """Measured dense matmul throughput of the default device: (FLOP/s, what was multiplied).

    The ceiling the model benchmarks are read against. On an accelerator bf16 8192^3 products
    with float32 accumulation (the precision of a bf16 network's convolutions, and large enough
    to saturate the tensor cores); on CPU float32 2048^3 ones. Each timed call is one program
    of `chain` dependent products (x <- x @ b), so dispatch and synchronisation are paid once
    per `chain` products; median of `iters` calls after warm-up.
    """
    on_cpu = jax.devices()[0].platform == "cpu"
    n, dtype = (2048, jnp.float32) if on_cpu else (8192, jnp.bfloat16)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = (jax.random.normal(kb, (n, n), jnp.float32) / np.sqrt(n)).astype(dtype)  # keeps |x| ~1

    @jax.jit
    def products(x, b):
        step = lambda _, x: jnp.matmul(x, b, preferred_element_type=jnp.float32).astype(dtype)
        return jax.lax.fori_loop(0, chain, step, x)

    _, median = time_calls(lambda: products(a, b).block_until_ready(), iters)
    return chain * 2 * n**3 / median, f"{jnp.dtype(dtype).name} {n}^3 matmuls, float32 accumulation"


def lowered_flops(lowered) -> float:
    """FLOPs of a lowered jax program by XLA's cost analysis of the whole (unpartitioned)
    program, before backend fusion, else (jax 0.11.2 on an H200 reports none there) of the
    compiled program; 0.0 where neither reports any."""
    for analysis in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
        cost = analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        if cost and cost.get("flops", 0.0) > 0:
            return float(cost["flops"])
    return 0.0


def camjax_case(args, images: np.ndarray) -> dict:
    """camjax's two timed calls on images (B, H, W, 3) float32, each synchronising.

    Returns {'params': int, 'cam': cam_fn's call, 'forward': the jitted forward's call,
    'tail': the CAM tail's call alone (top-1 CAM einsum, bicubic upsample, min-max) on a feature
    map of the model's shape, 'forward_compile_s': the forward's compile time, 'forward_flops':
    its FLOPs for the whole batch}.
    """
    model = camjax.models.create_model(
        args.model,
        num_classes=args.num_classes,
        width=args.width,
        groups=args.groups,
        grouped_conv_impl=args.grouped_conv_impl,
        dtype=DTYPES[args.dtype],
    )
    x = jnp.asarray(images)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    run = camjax.cam_fn(model, variables, top_k=1)
    start = time.perf_counter()
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, x)
    forward = lowered.compile()
    compile_s = time.perf_counter() - start
    # The tail alone, on a feature map of the model's shape and dtype already on the device.
    _, out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    fmap_spec = out["feature_map"]
    fmap = jax.random.normal(jax.random.key(1), fmap_spec.shape, fmap_spec.dtype)
    logits = jax.random.normal(jax.random.key(2), (x.shape[0], args.num_classes))
    kernel = camjax.cam.head_kernel(variables)

    @jax.jit
    def tail(fmap, kernel, logits):
        cams, _ = camjax.cam.cams_top_k(fmap, kernel, logits, 1)
        return camjax.cam.postprocess(cams, x.shape[1:3])

    return {
        "params": sum(p.size for p in jax.tree.leaves(variables["params"])),
        "cam": lambda: run(x).cams.block_until_ready(),
        "forward": lambda: forward(variables, x).block_until_ready(),
        "tail": lambda: tail(fmap, kernel, logits).block_until_ready(),
        "forward_compile_s": compile_s,
        "forward_flops": lowered_flops(lowered),
    }


def torch_case(args, images: np.ndarray):
    """The TorchCAM-style pipeline on the twin: (params, its synchronising call, device)."""
    import torch
    import torch.nn.functional as F
    from torch_models import TORCH_MODELS

    device = "cuda" if torch.cuda.is_available() else "cpu"
    twin = TORCH_MODELS[args.model](args.width, args.num_classes, args.groups)
    model = twin.to(device).eval()
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
            cams = torch.einsum("bchw,bc->bhw", fmap.float(), model.head.weight[top].float())
        cams = F.interpolate(cams[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]
        lo = cams.amin(dim=(1, 2), keepdim=True)
        hi = cams.amax(dim=(1, 2), keepdim=True)
        cams = (cams - lo) / (hi - lo).clamp_min(1e-12)
        if device == "cuda":
            torch.cuda.synchronize()
        return cams

    return params, call, device


def share_device_with_torch(args) -> None:
    """Stops JAX preallocating 75% of GPU memory when PyTorch runs in the same process after it.

    Call before the first jax device use: the GPU client reads the variable when it starts.
    """
    if args.torch:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def model_arguments(description: str) -> argparse.ArgumentParser:
    """The flags both framework comparisons share: model, batch, size, width, dtype, timing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="vgg16_gap", choices=MODELS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--grouped_conv_impl", default="split", choices=GROUPED_CONV_IMPLS)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    return parser


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0]).parse_args()
    share_device_with_torch(args)

    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    print(
        f"{args.model} width {args.width}, groups {args.groups} ({args.grouped_conv_impl}), "
        f"batch {args.batch} at {args.size}x{args.size}, {args.dtype}; {platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].device_kind}"
    )
    ours = camjax_case(args, images)
    calls = {"cam": ours["cam"], "forward": ours["forward"], "tail": ours["tail"]}
    rows = [
        ("cam", "camjax cam_fn (jit)", ours["params"]),
        ("forward", "camjax forward only (jit)", ours["params"]),
    ]
    if args.torch:
        import torch

        params, calls["torch"], device = torch_case(args, images)
        name = f"PyTorch eager, TorchCAM-style ({device}, torch {torch.__version__})"
        rows.append(("torch", name, params))
    # Interleaved: on a machine whose load drifts, the ratios compare the code, not the drift.
    timings = time_interleaved(calls, args.iters)
    first, median = timings["forward"]
    timings["forward"] = (ours["forward_compile_s"] + first, median)
    peak, peak_what = matmul_peak()
    flops_per_image = ours["forward_flops"] / args.batch
    chip_limit = peak / flops_per_image if flops_per_image else float("nan")
    print("| case | parameters | first call s | median s | images/s | % of chip limit |")
    print("|---|---|---|---|---|---|")
    for key, name, params in rows:
        first, median = timings[key]
        rate = args.batch / median
        print(
            f"| {name} | {params:,} | {first:.2f} | {median:.3f} | {rate:,.1f} | "
            f"{100 * rate / chip_limit:.1f}% |"
        )
    cam_s, tail_s = timings["cam"][1], timings["tail"][1]
    print(f"\nmatmul peak: {peak / 1e12:.3f} TFLOP/s ({peak_what})")
    print(
        f"forward FLOPs per image (XLA cost analysis of the camjax forward): "
        f"{flops_per_image / 1e9:.2f} GFLOP; chip limit {chip_limit:,.1f} images/s"
    )
    print(
        f"CAM tail alone (top-1 einsum + bicubic to {args.size} + min-max, on the model's feature "
        f"map): {1e3 * tail_s:.2f} ms per batch, {100 * tail_s / cam_s:.1f}% of the cam_fn call"
    )
    if args.torch:
        print(f"camjax / PyTorch throughput: {timings['torch'][1] / cam_s:.2f}x")


if __name__ == "__main__":
    main()
