"""MaxBoxAccV2 + MaxBoxAcc: camjax's compiled sweeps against the OpenCV reference loop.

    python benchmarks/wsol_eval.py [--num_images 5794] [--interval 0.001] [--reference_images N]

Builds N realistic 224x224 CAMs (14x14 maps of a few Gaussian blobs plus noise, as VGG16-GAP
gives at 224, upsampled with OpenCV-exact bicubic and min-max normalised, as the protocol
does) with 1-3 GT boxes each, then times, on the same inputs in one process:

* camjax: ``quantize_scoremaps`` + ``box_correct_counts`` for V2 (every contour) and V1 (the
  largest contour), streamed in batches into ``WsolBoxAccumulator``s (compile time reported
  separately, from a first call on a small batch);
* the reference: ``tests/localization/wsol_reference.py``, which works as the published
  evaluator does (one ``cv2.findContours`` per map per threshold, one process).

Checks that the integer counts are identical and prints a table; paste it, with the date,
machine and command, into benchmarks/RESULTS.md. ``--reference_images`` runs the reference
on the first N maps only and scales its time to the whole set (stated in the output); the
counts are then compared on those N maps.
"""

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "localization"))

import wsol_reference as ref  # noqa: E402

from camjax import cam as cam_lib  # noqa: E402
from camjax.localization import wsol  # noqa: E402

SIZE = 224
FEATURE = 14


def realistic_cams(num: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 224, 224) float32 score maps in [0, 1], (N, 3, 4) int32 inclusive GT boxes, (N,)
    box counts. Blobs sit where the GT boxes are, with distractors and noise."""
    cams, boxes, num_gt = raw_cams(num, seed)
    upsample = jax.jit(lambda c: cam_lib.postprocess(c, (SIZE, SIZE), method="bicubic"))
    maps = np.concatenate(
        [np.asarray(upsample(jnp.asarray(cams[s : s + 256]))) for s in range(0, num, 256)]
    )
    return maps, boxes, num_gt


def raw_cams(num: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`realistic_cams` before upsampling: (N, 14, 14) float32 CAMs, boxes, box counts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:FEATURE, :FEATURE] + 0.5
    cams = np.empty((num, FEATURE, FEATURE), np.float32)
    boxes = np.zeros((num, 3, 4), np.int32)
    num_gt = rng.integers(1, 4, num)
    scale = SIZE / FEATURE
    for i in range(num):
        m = 0.3 * rng.standard_normal((FEATURE, FEATURE))
        for k in range(num_gt[i]):
            cx, cy = rng.uniform(2, FEATURE - 2, 2)
            sx, sy = rng.uniform(0.8, 4, 2)
            m += rng.uniform(1, 3) * np.exp(-((xx - cx) ** 2 / sx**2 + (yy - cy) ** 2 / sy**2) / 2)
            x0, x1 = np.clip([(cx - 2 * sx) * scale, (cx + 2 * sx) * scale], 0, SIZE - 1)
            y0, y1 = np.clip([(cy - 2 * sy) * scale, (cy + 2 * sy) * scale], 0, SIZE - 1)
            boxes[i, k] = [int(x0), int(y0), int(x1), int(y1)]
        for _ in range(rng.integers(0, 3)):  # distractors
            cx, cy = rng.uniform(0, FEATURE, 2)
            m += rng.uniform(0.3, 1.5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2)
        cams[i] = m
    return cams, boxes, num_gt


def camjax_counts(maps, boxes, num_gt, thresholds, multi, batch):
    acc = wsol.WsolBoxAccumulator(thresholds)
    for s in range(0, len(maps), batch):
        q = wsol.quantize_scoremaps(maps[s : s + batch])
        counts = wsol.box_correct_counts(
            q, boxes[s : s + batch], num_gt[s : s + batch], thresholds, multi_contour=multi
        )
        acc.update(counts, len(q))
    return acc


def reference_counts(maps, boxes, num_gt, thresholds, multi):
    gts = [boxes[i, : num_gt[i]] for i in range(len(maps))]
    return ref.box_correct_counts(list(maps), gts, thresholds, multi_contour_eval=multi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=5794)
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--reference_images", type=int, default=0, help="0 = all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    thresholds = wsol.default_thresholds(args.interval)
    maps, boxes, num_gt = realistic_cams(args.num_images, args.seed)
    print(
        f"{args.num_images} maps {SIZE}x{SIZE}, {len(thresholds)} thresholds; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )

    start = time.perf_counter()
    for multi in (True, False):  # compile both kernels and the quantiser on a small batch
        camjax_counts(maps[:4], boxes[:4], num_gt[:4], thresholds, multi, args.batch)
    compile_s = time.perf_counter() - start

    ours, ours_s = {}, {}
    for multi in (True, False):
        start = time.perf_counter()
        ours[multi] = camjax_counts(maps, boxes, num_gt, thresholds, multi, args.batch)
        ours_s[multi] = time.perf_counter() - start

    n_ref = args.reference_images or args.num_images
    theirs, theirs_s = {}, {}
    for multi in (True, False):
        start = time.perf_counter()
        theirs[multi] = reference_counts(maps[:n_ref], boxes, num_gt, thresholds, multi)
        theirs_s[multi] = (time.perf_counter() - start) * args.num_images / n_ref

    for multi in (True, False):
        if n_ref == args.num_images:
            same = np.array_equal(ours[multi].counts, theirs[multi])
        else:
            sub = camjax_counts(
                maps[:n_ref], boxes[:n_ref], num_gt[:n_ref], thresholds, multi, args.batch
            )
            same = np.array_equal(sub.counts, theirs[multi])
        if not same:
            raise SystemExit(f"counts differ from the reference (multi_contour={multi})")

    scaled = "" if n_ref == args.num_images else f" (timed on {n_ref}, scaled)"
    print(f"\ncompile (first calls, both rules): {compile_s:.1f} s; counts identical: yes")
    print(f"| rule | camjax s | reference s{scaled} | speed-up |")
    print("|---|---|---|---|")
    for multi, name in ((True, "MaxBoxAccV2 (all contours)"), (False, "MaxBoxAcc (largest)")):
        print(
            f"| {name} | {ours_s[multi]:.2f} | {theirs_s[multi]:.1f} | "
            f"{theirs_s[multi] / ours_s[multi]:.1f}x |"
        )
    total_ours, total_ref = sum(ours_s.values()), sum(theirs_s.values())
    print(f"| both | {total_ours:.2f} | {total_ref:.1f} | {total_ref / total_ours:.1f}x |")
    v2 = ours[True]
    print(
        f"\nMaxBoxAccV2 {v2.max_box_acc_v2():.2f} (IoU 30/50/70: "
        + ", ".join(f"{v:.2f}" for v in v2.max_box_acc().values())
        + f"), MaxBoxAcc {ours[False].max_box_acc()[50]:.2f}"
    )


if __name__ == "__main__":
    main()
