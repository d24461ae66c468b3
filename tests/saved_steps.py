"""Editing a saved checkpoint step's metadata as another save would have written it: the
metadata's digest (`digests.META_KEY`) sealed again, or dropped as steps saved before
metadata digests (2026-12-07) lack it. An edit left unsealed is damage, which restores catch."""

import json
import os
from collections.abc import Callable

from camjax import digests


def edit_meta(step_dir: str, edit: Callable[[dict], None], seal: str = "again") -> None:
    """Applies `edit` to the metadata of the step in `step_dir`; seal 'again' (a step saved
    with the edited values) or 'none' (a step saved before metadata digests)."""
    meta_path = os.path.join(step_dir, "meta", "metadata")
    digests_path = os.path.join(step_dir, "digests", "metadata")
    with open(meta_path) as f:
        meta = json.load(f)
    edit(meta)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with open(digests_path) as f:
        sums = json.load(f)
    if seal == "again":
        sums[digests.META_KEY] = digests.meta_digest(meta)
    else:
        del sums[digests.META_KEY]
    with open(digests_path, "w") as f:
        json.dump(sums, f)
