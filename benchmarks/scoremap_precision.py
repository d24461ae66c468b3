"""camjax's float32 score maps against the reference's float64 ones: how many uint8 levels,
box verdicts and MaxBoxAcc counts differ.

    python benchmarks/scoremap_precision.py [--num_images 2000] [--interval 0.001]

The reference (clovaai/wsolevaluation) casts each 14x14 CAM to float64 (``t2n``), resizes it
with ``cv2.resize(INTER_CUBIC)`` in float64 and min-max normalises in float64; camjax resizes
and normalises in float32 on device (``camjax.cam.postprocess``). Both are then quantised as
the evaluator does (``(s * 255).astype(uint8)``, exact for either dtype) and counted with the
same exact engine (``camjax.localization.wsol``), so every difference below comes from the
maps. Uses ``wsol_eval.raw_cams`` (blobs on the GT boxes, distractors, noise) and random
14x14 Gaussian maps. Paste the output, with the date and command, into benchmarks/RESULTS.md.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, os.path.join(REPO, "tests", "localization"))

import wsol_eval  # noqa: E402
import wsol_reference as ref  # noqa: E402

from camjax import cam as cam_lib  # noqa: E402
from camjax.localization import wsol  # noqa: E402

SIZE = wsol_eval.SIZE


def reference_maps(cams: np.ndarray) -> np.ndarray:
    """The reference's float64 pipeline: widen, cv2 bicubic in float64, min-max."""
    return np.stack([ref.normalize_scoremap(ref.resize_cam(c, (SIZE, SIZE))) for c in cams])


def per_image_verdicts(q, boxes, num_gt, thresholds, multi):
    """(N, D, T) bool: whether each image counts as correct at each (IoU, CAM) threshold."""
    n = len(q)
    out = []
    for s in range(0, n, 200):
        b = min(200, n - s)
        eye = np.eye(b, dtype=bool)  # one set per image: its own verdicts from one sweep
        deltas = (30, 50, 70) if multi else (50,)
        out.append(
            wsol.box_correct_counts(
                q[s : s + b],
                boxes[s : s + b],
                num_gt[s : s + b],
                thresholds,
                deltas,
                multi_contour=multi,
                valid=eye,
            ).astype(bool)
        )
    return np.concatenate(out)


def compare(name, cams, boxes, num_gt, thresholds) -> None:
    post = jax.jit(lambda c: cam_lib.postprocess(c, (SIZE, SIZE), method="bicubic"))
    ours = np.concatenate(
        [np.asarray(post(jnp.asarray(cams[s : s + 256]))) for s in range(0, len(cams), 256)]
    )
    theirs = reference_maps(cams)
    q_ours = np.asarray(wsol.quantize_scoremaps(ours))
    q_ref = wsol.quantize_scoremaps(theirs)  # float64 numpy: quantised exactly on the host
    diff = q_ours.astype(int) - q_ref.astype(int)
    n, pixels = len(cams), diff[0].size
    maps_diff = np.any(diff != 0, axis=(1, 2))
    print(f"{name}: {n} maps {SIZE}x{SIZE}, {len(thresholds)} thresholds")
    print(
        f"  max |score difference| {np.abs(ours - theirs).max():.2e}; uint8 levels differ in "
        f"{np.count_nonzero(diff)} of {n * pixels} pixels "
        f"({np.count_nonzero(diff) / (n * pixels):.2e}), in {maps_diff.sum()} maps "
        f"({100 * maps_diff.mean():.1f}%), by at most {np.abs(diff).max()} level"
    )
    for multi, label in ((True, "V2 (every contour), IoU 30/50/70"), (False, "V1, IoU 50")):
        v_ours = per_image_verdicts(q_ours, boxes, num_gt, thresholds, multi)
        v_ref = per_image_verdicts(q_ref, boxes, num_gt, thresholds, multi)
        flipped = v_ours != v_ref
        images = np.any(flipped, axis=(1, 2))
        c_ours, c_ref = v_ours.sum(0), v_ref.sum(0)  # (D, T) counts
        m_ours = 100 * c_ours.max(1) / n
        m_ref = 100 * c_ref.max(1) / n
        print(
            f"  {label}: verdicts flipped {flipped.sum()} of {flipped.size} "
            f"(image, IoU, threshold) in {images.sum()} images; counts differ at "
            f"{np.count_nonzero(c_ours != c_ref)} of {c_ours.size} (IoU, threshold) by at "
            f"most {np.abs(c_ours - c_ref).max()}; MaxBoxAcc per IoU camjax "
            f"{np.round(m_ours, 3).tolist()} reference {np.round(m_ref, 3).tolist()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    thresholds = wsol.default_thresholds(args.interval)
    cams, boxes, num_gt = wsol_eval.raw_cams(args.num_images, args.seed)
    compare("realistic CAMs (wsol_eval.raw_cams)", cams, boxes, num_gt, thresholds)
    rng = np.random.default_rng(args.seed + 1)
    noise = rng.standard_normal(cams.shape).astype(np.float32)
    compare("random 14x14 N(0, 1) maps, same boxes", noise, boxes, num_gt, thresholds)


if __name__ == "__main__":
    main()
