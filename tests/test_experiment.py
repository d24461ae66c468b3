"""Tests for the config checks of `camjax.experiment`: each fires exactly at its boundary, in
one line that names the field and the fix, and lets through every value a run can use."""

import os

import jax
import ml_collections
import pytest

from camjax import experiment
from camjax.data.pipeline import PreprocessConfig
from configs import tiny


def _mesh(n: int):
    return experiment.make_mesh(jax.devices()[:n])


@pytest.mark.parametrize("value", [1, 4, 8])
def test_a_positive_multiple_of_the_devices_is_a_batch_size(value):
    """1 is the smallest batch; a multiple of a 4-device mesh passes there too."""
    experiment.check_batch_size(value, _mesh(1), "config.data.batch_size")
    if value % 4 == 0:
        experiment.check_batch_size(value, _mesh(4), "config.data.batch_size")


@pytest.mark.parametrize("value", [0, -4, True, 8.0, "8"])
def test_a_batch_size_that_is_not_a_positive_int_is_one_line(value):
    """True passes ConfigDict's int check (--config.data.batch_size=True), 8.0 and "8" a config
    built by hand: none is a batch size, though one device divides each."""
    with pytest.raises(ValueError) as err:
        experiment.check_batch_size(value, _mesh(1), "config.data.batch_size")
    assert str(err.value) == (
        "config.data.batch_size must be a positive int (a multiple of the 1 devices); "
        f"got {value!r}."
    )


def test_a_batch_size_the_devices_do_not_divide_names_the_multiple_to_use():
    with pytest.raises(ValueError) as err:
        experiment.check_batch_size(6, _mesh(4), "config.eval.batch_size")
    assert str(err.value) == (
        "config.eval.batch_size 6 is not divisible by the 4 devices of the mesh; "
        "use a multiple of 4."
    )


def _eval(**values) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {"batch_size": 8, "iou_threshold": 0.5, "max_images": 0, **values}
    )


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0])
def test_iou_threshold_takes_both_ends_of_zero_to_one(value):
    """0 (any overlap counts) and 1 (only a perfect box) are the fraction's own ends."""
    experiment.check_eval_config(_eval(iou_threshold=value), _mesh(1))


@pytest.mark.parametrize("value", [-0.01, 1.01, 50, True])
def test_an_iou_threshold_outside_zero_to_one_is_one_line(value):
    """50 is the reference's percent spelling of 0.5; True is no threshold at all."""
    with pytest.raises(ValueError) as err:
        experiment.check_eval_config(_eval(iou_threshold=value), _mesh(1))
    assert str(err.value) == (
        f"config.eval.iou_threshold must be a fraction in [0, 1] (0.5: IoU >= 50%); got {value!r}."
    )


def test_max_images_zero_means_all_and_below_zero_is_one_line():
    """0 and 1 are the smallest values a run uses (all images, one image)."""
    experiment.check_eval_config(_eval(max_images=0), _mesh(1))
    experiment.check_eval_config(_eval(max_images=1), _mesh(1))
    for value in (-1, True):  # ConfigDict takes True into the int field: not one image
        with pytest.raises(ValueError) as err:
            experiment.check_eval_config(_eval(max_images=value), _mesh(1))
        want = f"config.eval.max_images must be an int >= 0 (0: all); got {value}."
        assert str(err.value) == want


def test_eval_batch_size_is_checked_under_its_own_name():
    """The divisibility rule applies to config.eval, and the message names that field."""
    with pytest.raises(ValueError, match=r"^config.eval.batch_size 6 is not divisible by the 4 "):
        experiment.check_eval_config(_eval(batch_size=6), _mesh(4))


def test_the_smallest_image_and_crop_sizes_pass():
    """image_size 1 is the smallest network input; resize_size == image_size is a crop of the
    whole resized image, as evaluation's own resize."""
    config = tiny.get_config()
    config.data.image_size = config.data.resize_size = 1
    assert experiment.preprocess_config(config) == PreprocessConfig(
        image_size=1, resize_size=1, max_boxes=config.data.max_boxes
    )


def test_preprocess_config_keeps_each_size_in_its_field():
    """Swapped, training would crop the resize size out of an image of the crop size."""
    config = tiny.get_config()
    config.data.image_size, config.data.resize_size, config.data.max_boxes = 64, 73, 3
    got = experiment.preprocess_config(config)
    assert (got.image_size, got.resize_size, got.max_boxes) == (64, 73, 3)


def test_a_resize_smaller_than_the_crop_is_one_line():
    """One pixel short is already a crop that does not fit: the boundary itself."""
    config = tiny.get_config()
    config.data.image_size, config.data.resize_size = 64, 63
    with pytest.raises(ValueError) as err:
        experiment.preprocess_config(config)
    assert str(err.value) == (
        "config.data.resize_size (63) must be >= image_size (64): training crops image_size "
        "out of the resized image."
    )


@pytest.mark.parametrize("value", [0, True])
def test_image_size_zero_or_true_is_one_line(value):
    """0, the first value below the smallest size, fails here, not in the network's init; True,
    which ConfigDict takes into the int field, is no size of 1 pixel."""
    config = tiny.get_config()
    config.data.image_size = value
    with pytest.raises(ValueError) as err:
        experiment.check_data_config(config)
    assert str(err.value) == f"config.data.image_size must be a positive int; got {value}."


def test_any_three_means_and_three_positive_stds_pass():
    """A mean is any number (0, or negative after another normalisation); only a std divides."""
    config = tiny.get_config()
    config.data.mean, config.data.std = (0.0, -0.5, 2.0), (1e-6, 1.0, 3.0)
    experiment.check_data_config(config)


@pytest.mark.parametrize(
    "field, value, rule",
    [
        ("mean", (0.5, 0.5, 0.5, 0.5), ""),
        ("std", (0.2, 0.2), " and each > 0"),
        ("std", (0.2, -0.2, 0.2), " and each > 0"),
    ],
)
def test_a_mean_or_std_no_normalisation_can_use_is_one_line(field, value, rule):
    """Only std has the "> 0" rule, and only its message says so."""
    config = tiny.get_config()
    config.data[field] = value
    with pytest.raises(ValueError) as err:
        experiment.check_data_config(config)
    assert str(err.value) == (
        f"config.data.{field} must be 3 numbers, one per RGB channel{rule}, in [0, 1] units; "
        f"got {value}."
    )


class _Items:
    """A random-access source of 0..n-1."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i


@pytest.mark.parametrize("max_items", [0, 5, 6])
def test_limit_of_zero_or_at_least_the_source_is_all_of_it(max_items):
    """0 is config.eval.max_images's "all", not an empty evaluation."""
    got = experiment.limit(_Items(5), max_items)
    assert [got[i] for i in range(len(got))] == [0, 1, 2, 3, 4]


def test_limit_is_the_first_max_items_in_order():
    got = experiment.limit(_Items(5), 3)
    assert len(got) == 3
    assert [got[i] for i in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("field", ["train_split", "val_split", "test_split"])
def test_a_split_the_dataset_does_not_have_is_one_line_naming_its_splits(field, monkeypatch):
    """Checked when the sources open, before training (the test split too: evaluation reads it
    after the run); an evaluation checks only the validation and test splits it reads."""
    splits = {"train": _Items(3), "validation": _Items(2), "test": _Items(2)}
    monkeypatch.setattr(experiment, "reopenable_sources", lambda *args: splits)
    config = tiny.get_config()
    assert len(experiment.data_sources(config)) == 3
    config.data[field] = "valdation"
    with pytest.raises(ValueError) as error:
        experiment.data_sources(config)
    assert str(error.value) == (
        f"config.data.{field} is 'valdation', a split wsol_shapes does not have; set it to one "
        "of its splits: test, train, validation."
    )
    if field == "train_split":
        assert len(experiment.data_sources(config, experiment.EVALUATION_SPLITS)) == 3
    else:
        with pytest.raises(ValueError, match=f"^config.data.{field} is 'valdation'"):
            experiment.data_sources(config, experiment.EVALUATION_SPLITS)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux's /proc")
def test_an_existing_directory_no_file_can_be_written_in_is_not_writable():
    """/proc exists (so creating it succeeds) but holds no files, even for root: only the
    trial write tells."""
    with pytest.raises(PermissionError, match=r"^/proc is not a writable directory \(.*\); "):
        experiment.check_writable("/proc")


def test_an_unknown_model_dtype_is_one_line_naming_the_choices():
    """Before the check, a KeyError 'fp16' from inside build_model."""
    config = tiny.get_config()
    config.model.dtype = "fp16"
    with pytest.raises(ValueError) as err:
        experiment.build_model(config)
    assert str(err.value) == (
        "config.model.dtype must be one of ['bfloat16', 'float16', 'float32']; got 'fp16'."
    )


def test_a_bool_where_the_model_declares_an_int_is_one_line():
    """ConfigDict takes --config.model.num_blocks=True into its int field (bool is an int to
    Python); to the network it is no count of blocks."""
    config = tiny.get_config()
    config.model.num_blocks = True
    with pytest.raises(ValueError) as err:
        experiment.build_model(config)
    assert str(err.value) == (
        "config.model.num_blocks must be an int for model 'vgg16_gap'; got True."
    )


def test_an_int_where_the_model_declares_a_float_is_a_number_it_takes():
    """A hand-written config's width 1 (not 1.0) is the same width."""
    config = tiny.get_config()
    fields = config.model.to_dict()
    fields["width"] = 1
    config.model = ml_collections.ConfigDict(fields)
    assert experiment.build_model(config).width == 1
