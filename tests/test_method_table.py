"""benchmarks/method_table.py at toy size: the session's tiny trained run, two methods, a few
images. The script end to end (a training's evaluation per method): the full suite's."""

import pytest

from benchmarks import method_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tiny_run):
    return tiny_run[1]  # the script only reads the run


def test_method_table_prints_one_row_per_method(workdir, capsys):
    argv = ["--workdir", workdir, "--methods", "cam,grad_cam", "--max_images", "8"]
    method_table.main(argv + ["--step", "512", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "8 test images" in out
    rows = {
        line.split()[0]: line.split()[1:]
        for line in out.splitlines()
        if line[:4] in ("cam ", "grad")
    }
    assert set(rows) == {"cam", "grad_cam"}
    for cells in rows.values():
        values = [float(c) for c in cells]
        assert len(values) == len(method_table.COLUMNS)
        assert all(0 <= v <= 100 for v in values[:5]) and all(0 <= v <= 1 for v in values[5:7])
        assert values[-1] > 0  # images/s


def test_timing_batch_sets_the_images_of_each_timed_call(workdir, monkeypatch):
    sizes = []
    explainer = method_table.explain.explainer

    def recording(*args, **kwargs):
        f = explainer(*args, **kwargs)
        return lambda images, *rest: (sizes.append(images.shape[0]), f(images, *rest))[1]

    monkeypatch.setattr(method_table.explain, "explainer", recording)
    argv = ["--workdir", workdir, "--methods", "cam", "--max_images", "8", "--repeats", "1"]
    method_table.main(argv + ["--step", "512", "--timing_batch", "3"])
    assert sizes[-2:] == [3, 3]  # the compiling call, then the timed one: the last two


def test_cam_is_scored_at_the_gap_input_whatever_layer_the_run_names(workdir, tmp_path):
    """A run saved with method cam and another eval.layer (possible before that pairing was
    refused): the base evaluator, restored only for its model, must not refuse it, and the CAM
    row is CAM's; --layer is the other methods' layer."""
    import json
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["eval"]["layer"] = "no_such_layer"
    (copy / "config.json").write_text(json.dumps(saved))
    rows = method_table.method_rows(str(copy), ["cam"], max_images=8, step=512, repeats=1)
    assert [method for method, _ in rows] == ["cam"]
    with pytest.raises(ValueError, match="no module at path 'no_such_layer'"):
        list(method_table.method_rows(str(copy), ["grad_cam"], 8, 512, 1))
    rows = method_table.method_rows(str(copy), ["grad_cam"], 8, 512, 1, layer="feature_map")
    assert [method for method, _ in rows] == ["grad_cam"]
