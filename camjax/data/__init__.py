"""Datasets (tfds builders read as random-access sources) and the input pipeline."""

from collections.abc import Mapping, Sequence

DATASETS = ("wsol_shapes",)


def load_data_sources(
    name: str,
    image_size: int,
    data_dir: str | None = None,
    split_sizes: Mapping[str, int] | None = None,
) -> Mapping[str, Sequence]:
    """Split name -> random-access source of decoded tfds examples (numpy dicts).

    'wsol_shapes' is the embedded dataset, generated into data_dir on first use; split_sizes
    ({'num_train': n, ...}, 0 or missing = standard size) builds a smaller variant of it.
    """
    if name == "wsol_shapes":
        from camjax.data import wsol_shapes

        sizes = {k: v for k, v in (split_sizes or {}).items() if v}
        return wsol_shapes.load_data_sources(image_size=image_size, data_dir=data_dir, **sizes)
    raise ValueError(f"Unknown dataset {name!r}; available datasets: {', '.join(DATASETS)}.")
