"""The evaluation's results as small tables on stdout.

Every localization number is tagged with the box rule of the one counting engine
(`camjax.localization.wsol`) that produced it, and the legend under the tables says what each
rule is, so that the paper's GT-known loc and the protocol's MaxBoxAcc are never mistaken for
one another.
"""

from typing import Any

import jax

LABEL = 28  # width of the row labels

RULES = {
    "region": "the CAM paper's: the map (config.eval.cam_normalization) >= thr, the box of the "
    "largest 8-connected region by pixel count; thresholds on config.eval.threshold_grid_step",
    "contour": "the WSOL evaluator's MaxBoxAcc: the min-max map in uint8 > int(thr * its max), "
    "the box of the largest OpenCV contour by polygon area; inclusive IoU",
    "contours": "the WSOL evaluator's MaxBoxAccV2: as [contour], the best box of every contour",
}


def print_report(results: dict[str, Any]) -> None:
    """The headline numbers of run_evaluation as small tables on stdout (process 0 only)."""
    if jax.process_index() != 0:
        return
    tuned, fixed, k = (
        results["test_at_val_threshold"],
        results["test_at_fixed_threshold"],
        results["top_k"],
    )
    rows = [
        ("top-1 cls acc", "top1_cls"),
        (f"top-{k} cls acc", f"top{k}_cls"),
        ("top-1 loc acc [region]", "top1_loc"),
        (f"top-{k} loc acc [region]", f"top{k}_loc"),
        ("GT-known loc acc [region]", "gt_known_loc"),
    ]
    print(
        f"\n{results['model']} on {results['dataset']} test ({tuned['num_images']} images), "
        f"step {results['step']}, IoU >= {results['iou_threshold']}"
    )
    if "method" in results:
        m = results["method"]
        print(f"maps: {m['name']} at layer {m['layer']!r} (every 'CAM' below is this method's)")
    head_tuned = f"thr {tuned['threshold']:.2f} (from val)"
    head_fixed = f"thr {fixed['threshold']:.2f} (paper)"
    print(f"{'':<{LABEL}}{head_tuned:>22}{head_fixed:>20}")
    for label, key in rows:
        print(f"{label:<{LABEL}}{tuned[key]:>21.2f}%{fixed[key]:>19.2f}%")
    size = tuned["best_center_box_size"]
    print(
        f"{'best centered box':<{LABEL}}{tuned['best_center_box_gt_known_loc']:>21.2f}%   "
        f"GT-known; {size[0]:.2f} x {size[1]:.2f} of the image, the best size on test"
    )
    print(
        f"GT-known loc [region] at the best threshold on test (oracle): "
        f"{results['test_gt_known_loc_oracle_max']:.2f}%"
    )
    used = ["region"]
    if "wsol" in results:
        used += print_wsol(results["wsol"])
    if "faithfulness" in results:
        print_faithfulness(results["faithfulness"])
    print("\nBox rules (one counting engine, camjax.localization.wsol):")
    for rule in used:
        print(f"  [{rule}] {RULES[rule]}")


def print_faithfulness(f: dict[str, Any]) -> None:
    """The faithfulness metrics of the test split (camjax/evaluation/faithfulness.py)."""
    t, unit = f["test"], "%" if f["test"]["variant"] == "paper" else ""
    print(
        f"\nFaithfulness on test ({t['num_images']} images, {f['settings']['target']} class, "
        f"{t['score']}; Average Drop as {t['variant']})"
    )
    print(f"{'Average Drop (lower better)':<{LABEL}}{t['average_drop']:>12.2f}{unit}")
    print(f"{'Increase in Confidence':<{LABEL}}{t['increase_in_confidence']:>12.2f}{unit}")
    if "deletion_auc" in t:
        print(f"{'Deletion AUC (lower better)':<{LABEL}}{t['deletion_auc']:>12.4f}")
        print(f"{'Insertion AUC':<{LABEL}}{t['insertion_auc']:>12.4f}")
    if "pointing_game" in t:
        print(f"{'Pointing game (GT class)':<{LABEL}}{t['pointing_game']:>12.2f}%")


def print_wsol(w: dict[str, Any]) -> list[str]:
    """The WSOL protocol's table; returns the box rules its rows used."""
    p, val, test = w["protocol"], w["val"], w["test"]
    if not p["boxes"]:
        print(
            f"\nWSOL protocol (Choe et al., CVPR 2020), masks only: GT-class CAM, bicubic to "
            f"{p['eval_size']}^2, {p['num_thresholds']} thresholds; PxAP val {val['pxap']:.2f}% "
            f"({val['num_images']} images), test {test['pxap']:.2f}% ({test['num_images']})"
        )
        return []
    at_val, at_fixed = test["at_val_thresholds"], test["at_fixed_threshold"]
    print(
        f"\nWSOL protocol (Choe et al., CVPR 2020): GT-class CAM, bicubic to {p['eval_size']}^2, "
        f"{p['num_thresholds']} CAM thresholds; val {val['num_images']}, "
        f"test {test['num_images']} images; max over thresholds @ its threshold"
    )

    def row(label, *cells):
        text = [
            "-" if c is None else f"{c[0]:.2f}% @{c[1]:.3f}" if c[1:] else f"{c[0]:.2f}%"
            for c in cells
        ]
        print(f"{label:<{LABEL}}" + "".join(f"{t:>17}" for t in text))

    print(
        f"{'':<{LABEL}}{'val max':>17}{'test max':>17}{'test @ val thr':>17}"
        f"{'test @ ' + format(p['fixed_threshold'], 'g'):>17}"
    )
    row(
        "MaxBoxAcc (IoU 50) [contour]",
        (val["max_box_acc"], val["max_box_acc_threshold"]),
        (test["max_box_acc"], test["max_box_acc_threshold"]),
        (at_val["box_acc"], at_val["threshold"]),
        (at_fixed["box_acc"],),
    )
    row(
        "MaxBoxAccV2 [contours]",
        (val["max_box_acc_v2"],),
        (test["max_box_acc_v2"],),
        (at_val["box_acc_v2"],),
        (at_fixed["box_acc_v2"],),
    )
    for d in map(str, p["iou_thresholds"]):
        row(
            f"  IoU {d}",
            (val["max_box_acc_v2_per_iou"][d], val["max_box_acc_v2_thresholds"][d]),
            (test["max_box_acc_v2_per_iou"][d], test["max_box_acc_v2_thresholds"][d]),
            (at_val["box_acc_v2_per_iou"][d], at_val["box_acc_v2_thresholds"][d]),
            (at_fixed["box_acc_v2_per_iou"][d],),
        )
    row("top-1 loc (IoU 50) [contour]", None, None, (at_val["top1_loc"],), (at_fixed["top1_loc"],))
    if p["pxap"]:
        row("PxAP", (val["pxap"],), (test["pxap"],))
    return ["contour", "contours"]
