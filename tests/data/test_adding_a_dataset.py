"""The README's "Adding a dataset" module, as written: prepared, registered and read back."""

import io

import numpy as np
import pytest
from PIL import Image

import camjax.data
from camjax.data.downloads import MissingFilesError
from tests.test_readme import readme_example

MARKER = "<!-- README dataset example: tests/data/test_adding_a_dataset.py runs it as written -->"
WIDTH, HEIGHT = 40, 30
# split, file, label, x0, y0, x1, y1 (pixels, exclusive ends); b.png has two boxes.
BOXES = [
    ("train", "a.jpg", 0, 0, 0, 40, 30),
    ("train", "b.png", 0, 2, 3, 12, 9),
    ("train", "b.png", 0, 20, 10, 40, 30),
    ("train", "c.jpg", 1, 5, 5, 25, 20),
    ("train", "d.jpg", 1, 1, 2, 3, 4),
    ("train", "e.jpg", 1, 10, 0, 30, 15),
    ("test", "f.jpg", 0, 4, 6, 36, 24),
    ("test", "g.jpg", 1, 0, 15, 20, 30),
]


@pytest.fixture(scope="module")
def mydata(tmp_path_factory):
    """The README's module, as `userdata.mydata` (tfds wants a builder inside a package), and
    registered as the README says."""
    folder = tmp_path_factory.mktemp("module")
    (folder / "userdata").mkdir()
    (folder / "userdata" / "__init__.py").write_text("")
    (folder / "userdata" / "mydata.py").write_text(readme_example(MARKER))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setitem(camjax.data.DATASETS, "mydata", "userdata.mydata:MyData")
        yield camjax.data.dataset("mydata")


def write_inputs(manual_dir, rows=BOXES, classes=("circle", "square")):
    (manual_dir / "images").mkdir(parents=True)
    (manual_dir / "classes.txt").write_text("\n".join(classes) + "\n")
    lines = ["split,file,label,x0,y0,x1,y1"] + [",".join(map(str, row)) for row in rows]
    (manual_dir / "boxes.csv").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    for file in sorted({row[1] for row in rows}):
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG" if file.endswith(".png") else "JPEG")
        (manual_dir / "images" / file).write_bytes(out.getvalue())


def test_the_readme_dataset_prepares_and_reads_through_the_registry(mydata, tmp_path):
    write_inputs(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    mydata.prepare(tmp_path / "manual", data_dir, progress=False)

    sources = camjax.data.load_data_sources("mydata", 32, data_dir)
    assert {split: len(source) for split, source in sources.items()} == {
        "train": 3,
        "validation": 2,  # VALIDATION_PER_CLASS of each class, held out of train
        "test": 2,
    }
    assert mydata.prepared(data_dir).info.features["label"].names == ["circle", "square"]
    examples = {
        example["image_id"].decode(): example for source in sources.values() for example in source
    }
    assert sorted(examples) == sorted({row[1] for row in BOXES})
    for file, example in examples.items():
        assert example["image"].shape == (HEIGHT, WIDTH, 3)
        rows = [row for row in BOXES if row[1] == file]
        assert example["label"] == rows[0][2]
        expected = [
            [y0 / HEIGHT, x0 / WIDTH, y1 / HEIGHT, x1 / WIDTH] for *_, x0, y0, x1, y1 in rows
        ]
        np.testing.assert_allclose(example["objects"]["bbox"], expected, rtol=1e-6)


def test_the_readme_dataset_names_missing_inputs_before_writing(mydata, tmp_path):
    data_dir = str(tmp_path / "tfds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFilesError) as missing:
        mydata.prepare(tmp_path / "empty", data_dir, progress=False)
    assert missing.value.missing == ["classes.txt", "boxes.csv"]

    write_inputs(tmp_path / "manual")
    (tmp_path / "manual" / "images" / "c.jpg").unlink()
    with pytest.raises(MissingFilesError, match=r"1 image\(s\) of boxes.csv") as missing:
        mydata.prepare(tmp_path / "manual", data_dir, progress=False)
    assert missing.value.missing == ["c.jpg"]
    assert not mydata.configured(data_dir).is_prepared()
