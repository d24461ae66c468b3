"""Reading the files a user downloaded by hand (`cub`, `ilsvrc`, `openimages`).

* Errors: `MissingFilesError` (inputs, or members of them, that are not there) and
  `CorruptFileError` (an input that cannot be read), with the messages that list what is missing
  and where to get it (`present_inputs`, `missing_files_error`, `incomplete_error`).
* `iter_tar`: the files of a tar archive, compressed or not, in one streamed pass.
* `open_image`, `checked_image` and `png_bytes`: images decoded to catch damage (the error
  names the file), stored as they are or, if not RGB or grey JPEG/PNG, as a lossless RGB PNG.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MAX_LISTED = 20  # missing items listed by name in an error; the rest are counted

log = logging.getLogger(__name__)


class MissingFilesError(FileNotFoundError):
    """Files, or archive members, that preparing needs; `missing` lists them."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


class CorruptFileError(ValueError):
    """A file that cannot be read: an archive, a metadata or annotation file, an image, a mask."""


def listing(missing: Sequence[str]) -> str:
    """One indented line per name, the first `MAX_LISTED` of them, then how many more."""
    lines = [f"  {m}" for m in missing[:MAX_LISTED]]
    if len(missing) > MAX_LISTED:
        lines.append(f"  ... and {len(missing) - MAX_LISTED} more")
    return "\n".join(lines)


def missing_files_error(
    dataset: str, manual_dir: Path, missing: list[str], lines: list[str], hint: str = ""
) -> MissingFilesError:
    """Files absent from the manual directory; `lines` say where each comes from."""
    return MissingFilesError(
        f"Cannot prepare {dataset}: {len(missing)} file(s) missing from the manual directory "
        f"{manual_dir}:\n" + "\n".join(lines) + "\nPlace them there unchanged (no extraction "
        "needed) and run again." + hint,
        missing,
    )


def present_inputs(
    dataset: str,
    manual_dir: Path,
    needs: Sequence[tuple[str, ...]],
    sources: Mapping[str, str],
    hint: str = "",
    extra: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """{name: path} of the inputs of `sources` in `manual_dir`.

    Each need is a tuple of names, any one of which will do; raises `MissingFilesError`
    naming every need absent, with where each name comes from, and the `extra` (name, source)
    pairs the caller found missing (folders, say), then `hint`.
    """
    present = {n: manual_dir / n for n in sources if (manual_dir / n).is_file()}
    missing, lines = [], []
    for names in needs:
        if not present.keys() & set(names):
            missing.append(" or ".join(names))
            lines += [f"  {n}: {sources[n]}; or" for n in names[:-1]]
            lines.append(f"  {names[-1]}: {sources[names[-1]]}")
    missing += [name for name, _ in extra]
    lines += [f"  {name}: {source}" for name, source in extra]
    if missing:
        raise missing_files_error(dataset, manual_dir, missing, lines, hint)
    return present


def incomplete_error(
    path: Path, missing: list[str], source: str, *, why: str = "", what: str = "member(s) missing"
) -> MissingFilesError:
    """An input that lacks `missing` (a truncated download); `why`, if known, says where it ends."""
    return MissingFilesError(
        f"{path} is incomplete{why}: {len(missing)} {what}:\n{listing(missing)}\n"
        f"Download {path.name} again from {source}.",
        missing,
    )


def download_instructions(command: str, sources: Mapping[str, str], note: str) -> str:
    """A builder's `MANUAL_DOWNLOAD_INSTRUCTIONS`: each input and its source, then `note`."""
    return "\n".join(
        [f"Place these, unchanged, in the manual directory ({command}):"]
        + [f"  {name}: from {source}" for name, source in sources.items()]
        + [note]
    )


def damaged_archive_error(
    path: Path, err: Exception, source: str, member: str = ""
) -> CorruptFileError:
    """An archive that tarfile cannot read on (at `member`, if known); `source` to get it again."""
    where = f"{member} in {path}" if member else str(path)
    return CorruptFileError(
        f"Cannot read {where} ({err}): the archive is damaged or truncated; download it again "
        f"from {source}."
    )


def iter_tar(
    path: Path, wanted: Callable[[str], bool], source: str
) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes if `wanted(name)` else None) of each regular member, in one streamed pass.

    Names lose a leading `./`. A damaged archive raises `CorruptFileError` (whose `__cause__`
    is tarfile's error) after yielding the members before the damage.
    """
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if member.isfile():
                    name = member.name.removeprefix("./")
                    yield name, tar.extractfile(member).read() if wanted(name) else None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise damaged_archive_error(path, err, source) from err


@contextlib.contextmanager
def _decoding(where: str) -> Iterator[None]:
    """Turns Pillow's errors on a damaged or unknown image into a `CorruptFileError`."""
    try:
        yield
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(
            f"{where} cannot be decoded: {err}. Download its archive again, or prepare with "
            "--skip_corrupt to leave such images out (each is logged and counted)."
        ) from err


def open_image(where: str, data: bytes) -> Image.Image:
    """The image in `data`, fully decoded so that truncated or garbled files fail here.

    Raises:
      CorruptFileError: it does not decode; the message names it by `where`.
    """
    with _decoding(where):
        image = Image.open(io.BytesIO(data))
        image.load()
    return image


def checked_image(where: str, data: bytes) -> tuple[bytes, int, int]:
    """Decodes an image, named by `where`, to catch damage -> (bytes to store, height, width).

    RGB and grey JPEGs, and RGB and grey PNGs of 8 bits per sample without a transparent
    colour, are stored as they are; anything else as a lossless PNG of its 8-bit RGB
    conversion by Pillow (the reference evaluators' `convert('RGB')`), which tfds decodes to 3
    channels. tfds decodes with OpenCV, which converts a CMYK JPEG with other rounding (1 level
    from Pillow's, OpenCV 5.1), reads a PNG's transparent colour (tRNS) as a 4th channel, and
    16-bit samples as uint16, of which tfds keeps the low byte (noise); the conversion keeps
    the high byte, as viewers show it.

    Raises:
      CorruptFileError: it does not decode; the message names it by `where`.
    """
    with _decoding(where), Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if _stored_as_is(image, data):
            # Decoding at 1/8 scale still reads every byte, more cheaply.
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
            return data, height, width
        log.info("%s is a %s %s; storing it as an 8-bit RGB PNG.", where, image.mode, image.format)
        # 16-bit grey, which convert() would clip to 255: opened as I;16, or as I (32-bit, the
        # same values) by older Pillows.
        png16 = image.mode == "I" and _png_bit_depth(image, data) == 16
        if image.mode.startswith("I;16") or png16:
            image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
        rgb = image.convert("RGB")
    return png_bytes(np.asarray(rgb)), height, width


def _stored_as_is(image: Image.Image, data: bytes) -> bool:
    """Whether tfds decodes these bytes to what Pillow shows: 8-bit grey or RGB."""
    if image.mode not in ("RGB", "L"):
        return False
    if image.format in ("JPEG", "MPO"):
        return True
    return _png_bit_depth(image, data) == 8 and "transparency" not in image.info


def _png_bit_depth(image: Image.Image, data: bytes) -> int | None:
    """Bits per sample of a PNG (byte 24 of the file, in its IHDR chunk, which comes first)."""
    return data[24] if image.format == "PNG" else None


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of (H, W) or (H, W, 3) uint8."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
