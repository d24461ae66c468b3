"""Training step throughput: camjax's jitted, donated, data-parallel step against PyTorch.

    python benchmarks/train_step.py [--model vgg16_gap|googlenet_gap] [--batch 8] [--size 224]
        [--width 1.0] [--groups 2] [--grouped_conv_impl split|xla] [--num_classes 1000]
        [--dtype float32|bfloat16] [--iters 5] [--torch_compile] [--no-torch]

Times, in one process on the same card or CPU, one SGD step (forward, cross-entropy, backward,
momentum + weight decay update) of the same architecture on the same random batch:

* camjax: `camjax.train.loop.make_train_step` under `jax.jit` with the state and metric sums
  donated, over a mesh of all local devices (the training loop's step), with the model and
  optimiser of configs/vgg16_gap_imagenet.py or configs/googlenet_gap_imagenet.py (dropout
  off: the PyTorch twin has none);
* PyTorch eager on the twin of benchmarks/torch_models.py (`channels_last` and bf16 autocast
  on GPU with `--dtype bfloat16`), and with `--torch_compile` the `torch.compile`d step.

Reports images/s and step time (median of --iters synchronised steps after warm-up), compile +
first-call time, the step's FLOPs from XLA's cost analysis, the achieved TFLOP/s per device
and its fraction of the matmul peak measured in the same run (`cam_throughput.matmul_peak`:
bf16 8192^3 with float32 accumulation on an accelerator, float32 2048^3 on CPU), and peak
device memory where the backend reports it (JAX does not preallocate GPU memory when PyTorch
runs too). Paste the table, with the date, machine and command, into benchmarks/RESULTS.md.
"""

import os
import platform
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from cam_throughput import (  # noqa: E402
    lowered_flops,
    matmul_peak,
    model_arguments,
    share_device_with_torch,
    time_calls,
)

from camjax import experiment  # noqa: E402
from camjax.train import loop, optim  # noqa: E402
from camjax.train import state as train_state  # noqa: E402
from configs import googlenet_gap_imagenet, vgg16_gap_imagenet  # noqa: E402

# The ImageNet recipe of each benchmarked model (model fields, solver).
CONFIGS = {"vgg16_gap": vgg16_gap_imagenet, "googlenet_gap": googlenet_gap_imagenet}


def camjax_case(args, images: np.ndarray, labels: np.ndarray):
    """Times the training loop's step on images (B, H, W, 3) uint8 and labels (B,) int32.

    Returns (params, (compile + first call s, median s), FLOPs of one step over all devices,
    number of devices, peak device bytes or None).
    """
    config = CONFIGS[args.model].get_config()
    config.data.image_size = args.size
    config.model.num_classes = args.num_classes
    config.model.width = args.width
    config.model.groups = args.groups
    config.model.grouped_conv_impl = args.grouped_conv_impl
    config.model.dropout_rate = 0.0  # the PyTorch twin has none either
    config.model.dtype = args.dtype
    mesh = experiment.make_mesh()
    model = experiment.build_model(config)
    tx = optim.create_optimizer(config.optim, config.train.num_steps)
    state, shardings = train_state.create_train_state(config, model, tx, mesh)
    replicated = experiment.replicated(mesh)
    step = loop.jit_train_step(config, model, tx, shardings, mesh)
    sharding = experiment.data_sharding(mesh)
    batch = {
        "image": jax.device_put(images, sharding),
        "label": jax.device_put(labels, sharding),
    }
    sums = jax.device_put(loop.zero_sums(), replicated)
    start = time.perf_counter()
    lowered = step.lower(state, sums, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops = lowered_flops(lowered)  # the whole step, all devices' shares together
    carry = {"state": state, "sums": sums}

    def call():
        carry["state"], carry["sums"] = compiled(carry["state"], carry["sums"], batch)
        jax.block_until_ready(carry["sums"])

    first, median = time_calls(call, args.iters)
    stats = jax.devices()[0].memory_stats() or {}
    params = sum(p.size for p in jax.tree.leaves(carry["state"].params))
    return params, (compile_s + first, median), flops, mesh.size, stats.get("peak_bytes_in_use")


def torch_case(args, images: np.ndarray, labels: np.ndarray, compiled: bool):
    """Times the twin's SGD step, eager or `torch.compile`d, on one device.

    Returns (params, (first call s, median s), peak device bytes or None, device, version).
    """
    import torch
    from torch_models import TORCH_MODELS

    device = "cuda" if torch.cuda.is_available() else "cpu"
    twin = TORCH_MODELS[args.model](args.width, args.num_classes, args.groups)
    model = twin.to(device).train()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(device)
    y = torch.from_numpy(labels).long().to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    autocast = args.dtype == "bfloat16" and device == "cuda"

    def train_step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            logits, _ = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        return loss

    step = torch.compile(train_step) if compiled else train_step

    def call():
        step()
        if device == "cuda":
            torch.cuda.synchronize()

    timing = time_calls(call, args.iters)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    params = sum(p.numel() for p in model.parameters())
    return params, timing, peak, device, torch.__version__


def main() -> None:
    parser = model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--torch_compile", action="store_true")
    args = parser.parse_args()
    share_device_with_torch(args)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, args.num_classes, args.batch).astype(np.int32)
    print(
        f"{args.model} width {args.width}, groups {args.groups} ({args.grouped_conv_impl}), "
        f"batch {args.batch} at {args.size}x{args.size}, {args.dtype}; {platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}"
    )

    def gib(b):
        return "-" if b is None else f"{b / 2**30:.2f}"

    params, (first, median), flops, devices, mem = camjax_case(args, images, labels)
    # After the step: its buffers would otherwise count in the camjax step's peak memory.
    peak, peak_what = matmul_peak()
    rows = [("camjax (jit, donated)", params, first, median, devices, mem)]
    if args.torch:
        variants = [False, True] if args.torch_compile else [False]
        for compiled in variants:
            p, (f, m), pk, device, version = torch_case(args, images, labels, compiled)
            name = "torch.compile" if compiled else "PyTorch eager"
            rows.append((f"{name} ({device}, torch {version})", p, f, m, 1, pk))
    print(
        "| case | parameters | compile + first call s | step s | images/s | TFLOP/s per device "
        "| % of matmul peak | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, p, f, m, n, pk in rows:
        # Both frameworks run the same network, so XLA's count serves for every row.
        tflops = flops / n / m / 1e12 if flops else float("nan")
        print(
            f"| {name} | {p:,} | {f:.2f} | {m:.3f} | {args.batch / m:,.1f} | {tflops:.3f} | "
            f"{100 * tflops * 1e12 / peak:.1f}% | {gib(pk)} |"
        )
    print(f"\nstep FLOPs (XLA cost analysis of the camjax step): {flops / 1e9:.1f} GFLOP")
    print(f"matmul peak: {peak / 1e12:.3f} TFLOP/s ({peak_what})")
    for name, *_, m, _n, _pk in rows[1:]:
        print(f"camjax / {name.split(' (')[0]}: {m / rows[0][3]:.2f}x")


if __name__ == "__main__":
    main()
