"""The evaluation's results as small tables on stdout."""

from typing import Any

import jax


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
        ("top-1 loc acc", "top1_loc"),
        (f"top-{k} loc acc", f"top{k}_loc"),
        ("GT-known loc acc", "gt_known_loc"),
    ]
    print(
        f"\n{results['model']} on {results['dataset']} test ({tuned['num_images']} images), "
        f"step {results['step']}, IoU >= {results['iou_threshold']}"
    )
    head_tuned = f"thr {tuned['threshold']:.2f} (from val)"
    head_fixed = f"thr {fixed['threshold']:.2f} (paper)"
    print(f"{'':<20}{head_tuned:>22}{head_fixed:>20}")
    for label, key in rows:
        print(f"{label:<20}{tuned[key]:>21.2f}%{fixed[key]:>19.2f}%")
    size = tuned["best_center_box_size"]
    print(
        f"{'best centered box':<20}{tuned['best_center_box_gt_known_loc']:>21.2f}%   GT-known; "
        f"{size[0]:.2f} x {size[1]:.2f} of the image, the best size on test"
    )
    print(
        f"GT-known loc at the best threshold on test (oracle): "
        f"{results['test_gt_known_loc_oracle_max']:.2f}%"
    )
    if "wsol" in results:
        print_wsol(results["wsol"])


def print_wsol(w: dict[str, Any]) -> None:
    p, val, test = w["protocol"], w["val"], w["test"]
    if not p["boxes"]:
        print(
            f"\nWSOL protocol (Choe et al., CVPR 2020), masks only: GT-class CAM, bicubic to "
            f"{p['eval_size']}^2, {p['num_thresholds']} thresholds; PxAP val {val['pxap']:.2f}% "
            f"({val['num_images']} images), test {test['pxap']:.2f}% ({test['num_images']})"
        )
        return
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
        print(f"{label:<20}" + "".join(f"{t:>17}" for t in text))

    print(
        f"{'':<20}{'val max':>17}{'test max':>17}{'test @ val thr':>17}"
        f"{'test @ ' + format(p['fixed_threshold'], 'g'):>17}"
    )
    row(
        "MaxBoxAcc (IoU 50)",
        (val["max_box_acc"], val["max_box_acc_threshold"]),
        (test["max_box_acc"], test["max_box_acc_threshold"]),
        (at_val["box_acc"], at_val["threshold"]),
        (at_fixed["box_acc"],),
    )
    row(
        "MaxBoxAccV2 (mean)",
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
    row("top-1 loc (IoU 50)", None, None, (at_val["top1_loc"],), (at_fixed["top1_loc"],))
    if p["pxap"]:
        row("PxAP", (val["pxap"],), (test["pxap"],))
