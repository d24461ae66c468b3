"""benchmarks/explain_throughput.py and peer_parity.py at toy size (the device script runs them
at full size): each library explains the batch and the table gets each method's row. The full
suite's (seconds of compiles); on the batch-norm networks, whose twins are imported rather than
copied (the GAP networks' twins are tests/test_benchmarks.py's)."""

import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("torchcam")

from benchmarks import explain_throughput  # noqa: E402


def test_the_table_has_a_row_per_method_with_each_peers_rate(monkeypatch, capsys):
    argv = ["explain_throughput.py", "--smoke", "--model", "resnet50_cam"]
    monkeypatch.setattr(sys, "argv", [*argv, "--methods", "grad_cam", "ablation_cam", "nope"])
    explain_throughput.main()
    out = capsys.readouterr().out
    assert out.startswith("resnet50_cam width 0.0625, batch 2 at 64x64")
    assert "not in camjax.explain.METHODS, skipped: nope" in out
    rows = _rows(out)
    camjax, torchcam, gradcam, ratio, goal, first = rows["grad_cam"]
    assert min(float(camjax), float(torchcam), float(gradcam)) > 0 and float(first) > 0
    faster_peer = max(float(torchcam), float(gradcam))
    assert float(ratio.removesuffix("x")) == pytest.approx(float(camjax) / faster_peer, rel=0.01)
    assert goal == "1x"
    camjax, torchcam, gradcam, ratio, goal, _ = rows["ablation_cam"]  # grad-cam's alone
    assert torchcam == "-" and float(gradcam) > 0 and goal == "3x"
    assert set(rows) == {"method", "grad_cam", "ablation_cam"}


def test_peer_parity_prints_float32_rounding_and_fails_on_a_wrong_map(monkeypatch, capsys):
    """benchmarks/peer_parity.py at toy size on GoogLeNet-GAP-BN (its twin imported through
    camjax_and_twin): each cell a float32 rounding, exit status 0; camjax's maps squared (a
    different map), over the tolerance, exit status 1."""
    from benchmarks import peer_parity

    methods = ["--methods", "cam", "grad_cam", "grad_cam_pp", "hires_cam"]
    assert peer_parity.main(["--smoke", "--model", "googlenet_gap_bn", *methods]) == 0
    out = capsys.readouterr().out
    assert out.startswith("googlenet_gap_bn width 0.0625, batch 2 at 64x64")
    rows = _rows(out)
    assert set(rows) == {"method", "cam", "grad_cam", "grad_cam_pp", "hires_cam"}
    torchcam, gradcam, tol, _ = rows["grad_cam"]
    normalised, raw = (float(d) for d in torchcam.strip(")").split(" ("))
    assert max(normalised, raw, float(gradcam)) < 5e-5 and tol == "1e-04"
    assert rows["grad_cam_pp"][0] == "departs from the paper" and rows["cam"][1] == "-"

    # Wrong maps: another map (squared: both peers' cells), the same map at twice the scale
    # (a min-max hides it: TorchCAM's raw cell), and NaN.
    camjax_raw = peer_parity._camjax_raw
    for wrong, methods, failed in [
        (lambda m: m**2, ["cam", "hires_cam"], "cam, hires_cam"),
        (lambda m: 2 * m, ["grad_cam"], "grad_cam"),
        (lambda m: m * np.nan, ["grad_cam"], "grad_cam"),
    ]:
        monkeypatch.setattr(peer_parity, "_camjax_raw", lambda *a, w=wrong: w(camjax_raw(*a)))
        argv = ["--smoke", "--model", "googlenet_gap_bn", "--methods", *methods]
        assert peer_parity.main(argv) == 1
        assert f"over the tolerance: {failed}\n" in capsys.readouterr().out


def _rows(out: str) -> dict[str, list[str]]:
    return {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
