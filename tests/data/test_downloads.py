"""Tests for `camjax.data.downloads`: the messages that say what is missing and where to get
it, and the image checks. Expected messages are written out by hand from the format."""

import io

import numpy as np
import pytest
from absl import flags
from PIL import Image

from camjax.data import downloads
from camjax.data import prepare as _prepare  # noqa: F401  (defines --skip_corrupt)
from tests.data.test_ilsvrc import tar_bytes


def test_listing_of_exactly_max_listed_names_has_no_more_line():
    """The "... and N more" line only appears past the limit, never as "and 0 more"."""
    names = [f"m{i}" for i in range(downloads.MAX_LISTED)]
    assert downloads.listing(names) == "\n".join(f"  m{i}" for i in range(downloads.MAX_LISTED))


def test_missing_inputs_message_counts_needs_and_lists_every_source(tmp_path):
    """A need with alternatives counts once but lists each alternative's source; the `extra`
    folders are counted and listed too; a folder named like an input is not the input."""
    (tmp_path / "a.tgz").mkdir()  # a directory, not the archive
    (tmp_path / "c.zip").write_bytes(b"")
    sources = {"a.tgz": "https://a", "b.tar": "https://b", "c.zip": "https://c"}
    with pytest.raises(downloads.MissingFilesError) as err:
        downloads.present_inputs(
            "toy",
            tmp_path,
            [("a.tgz", "b.tar"), ("c.zip",)],
            sources,
            hint=" (hint)",
            extra=[("images/", "the image folder")],
        )
    assert err.value.missing == ["a.tgz or b.tar", "images/"]
    assert str(err.value) == (
        f"Cannot prepare toy: 2 file(s) missing from the manual directory {tmp_path}:\n"
        "  a.tgz: https://a; or\n"
        "  b.tar: https://b\n"
        "  images/: the image folder\n"
        "Place them there unchanged (no extraction needed) and run again. (hint)"
    )


def test_incomplete_error_counts_the_missing_and_says_where_the_input_ends(tmp_path):
    err = downloads.incomplete_error(
        tmp_path / "a.tgz", ["m1", "m2"], "https://a", why=" (it ends after m0)"
    )
    assert err.missing == ["m1", "m2"]
    assert str(err) == (
        f"{tmp_path / 'a.tgz'} is incomplete (it ends after m0): 2 member(s) missing:\n"
        "  m1\n  m2\nDownload a.tgz again from https://a."
    )


def test_download_instructions_list_each_input_then_the_note():
    text = downloads.download_instructions("cmd", {"a.tgz": "https://a", "b": "https://b"}, "N.")
    assert text == (
        "Place these, unchanged, in the manual directory (cmd):\n"
        "  a.tgz: from https://a\n  b: from https://b\nN."
    )


def test_damaged_archive_error_names_the_member_and_the_cause(tmp_path):
    err = downloads.damaged_archive_error(tmp_path / "x.tar", OSError("boom"), "https://x", "y.jpg")
    assert str(err) == (
        f"Cannot read y.jpg in {tmp_path / 'x.tar'} (boom): the archive is damaged or truncated; "
        "download it again from https://x."
    )


def _noise_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_checked_image_decodes_the_whole_jpeg():
    """A JPEG cut after its headers opens fine; only decoding the data finds the damage."""
    data = _noise_jpeg()
    truncated = data[: len(data) * 6 // 10]
    with Image.open(io.BytesIO(truncated)) as image:
        assert image.size == (64, 64)  # the headers are intact
    with pytest.raises(downloads.CorruptFileError, match="t.jpg cannot be decoded"):
        downloads.checked_image("t.jpg", truncated)


def test_checked_image_keeps_mpo_jpegs_as_they_are():
    """Camera MPO files are JPEGs with further frames appended: stored unchanged, not
    re-encoded as PNG."""
    frame = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 13, 3), np.uint8))
    buffer = io.BytesIO()
    frame.save(buffer, format="MPO", save_all=True, append_images=[frame])
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert downloads.checked_image("m.jpg", data) == (data, 9, 13)


def test_undecodable_image_error_advises_the_real_flag(monkeypatch):
    """The advice names prepare's actual flag, and a decompression bomb is corrupt too."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # a 64x64 image is now a bomb
    with pytest.raises(downloads.CorruptFileError) as err:
        downloads.open_image("b.jpg", _noise_jpeg())
    assert "Download its archive again, or prepare with --skip_corrupt" in str(err.value)
    assert "skip_corrupt" in flags.FLAGS  # the flag the advice names exists


def test_iter_tar_streams_members_then_reports_damage(tmp_path):
    files = [
        (name, name.encode() + np.random.default_rng(len(name)).bytes(4000))  # incompressible
        for name in ("./a.txt", "dir/b.bin", "c.txt")
    ]
    archive = tar_bytes(files, "w:gz")
    path = tmp_path / "x.tgz"
    path.write_bytes(archive)
    members = list(downloads.iter_tar(path, lambda n: n.endswith(".txt"), "the source"))
    assert [(n, d is not None) for n, d in members] == [
        ("a.txt", True),
        ("dir/b.bin", False),
        ("c.txt", True),
    ]
    assert members[0][1].startswith(b"./a.txt") and len(members[0][1]) == 4007
    path.write_bytes(archive[: len(archive) // 2])
    seen = []
    with pytest.raises(downloads.CorruptFileError, match="damaged or truncated") as err:
        for name, _ in downloads.iter_tar(path, lambda n: True, "the source"):
            seen.append(name)
    assert err.value.__cause__ is not None and "the source" in str(err.value)
    assert seen[:1] == ["a.txt"]
