"""Tests for `camjax.data.subsets` on stand-in builders: a list as the data source, so the
reads and the held-out draw are checked without preparing a dataset (the views on prepared
data are tested in test_manual.py and test_wsol_shapes.py)."""

import types

import pytest

from camjax.data import downloads, subsets


def _builder(records: list[dict]) -> types.SimpleNamespace:
    """What `records_without_images` and `holdout_per_class` use of a tfds builder."""
    return types.SimpleNamespace(
        name="stand_in",
        info=types.SimpleNamespace(features={"label": None, "image_id": None}),
        as_data_source=lambda split, decoders=None: list(records),
    )


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 8, 9])
def test_records_without_images_reads_every_record_whatever_the_remainder(n, monkeypatch):
    """Reads of 4 records: every index once, in order, also when the last read holds one
    record (n = 1, 5, 9) or none is left over (n = 4, 8)."""
    monkeypatch.setattr(subsets, "_READ_BATCH", 4)
    records = [{"label": i % 2, "image_id": f"r{i}"} for i in range(n)]
    read = list(subsets.records_without_images(_builder(records), "train"))
    assert [i for i, _ in read] == list(range(n))
    assert [r["image_id"] for _, r in read] == [f"r{i}" for i in range(n)]


def test_holdout_warning_lists_the_first_classes_in_label_order(caplog):
    """25 classes of one record each, in descending label order, one held out per class:
    all are held out whole, and the warning names labels 0 to MAX_LISTED - 1 in order (not
    record order, not all 25)."""
    assert downloads.MAX_LISTED < 25  # else the test would not see the cut
    records = [{"label": label, "image_id": f"id{label}"} for label in reversed(range(25))]
    with caplog.at_level("WARNING", logger=subsets.__name__):
        held, rest = subsets.holdout_per_class(_builder(records), "train", 1)
    assert len(held) == 25 and len(rest) == 0
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    listed = list(range(downloads.MAX_LISTED))
    assert f"the classes (labels) {listed} have 1 records or fewer" in message
