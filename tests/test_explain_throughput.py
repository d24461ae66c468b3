"""benchmarks/explain_throughput.py at toy size, as the device script's `explain` step runs it:
each library explains the batch and the table gets each method's row. The full suite's (seconds
of compiles); on ResNet50-CAM, whose twin is imported rather than copied (the GAP networks'
twins are tests/test_benchmarks.py's)."""

import sys

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
    rows = {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    camjax, torchcam, gradcam, ratio, goal, first = rows["grad_cam"]
    assert min(float(camjax), float(torchcam), float(gradcam)) > 0 and float(first) > 0
    faster_peer = max(float(torchcam), float(gradcam))
    assert float(ratio.removesuffix("x")) == pytest.approx(float(camjax) / faster_peer, rel=0.01)
    assert goal == "1x"
    camjax, torchcam, gradcam, ratio, goal, _ = rows["ablation_cam"]  # grad-cam's alone
    assert torchcam == "-" and float(gradcam) > 0 and goal == "3x"
    assert set(rows) == {"method", "grad_cam", "ablation_cam"}
