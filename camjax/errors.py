"""Reading the exceptions of the libraries camjax drives, for its one-line error messages,
and the check of an argument's type that those messages share.

Dependency-free, so that every module can import it (the data modules without orbax or jax).
"""

import numbers
import os
import re
from collections.abc import Iterator
from typing import Any


def first_line(e: BaseException) -> str:
    """'TypeName: the first line of the message' (at most 160 characters of it), or the type's
    name alone for an empty message: the part of a library's error worth quoting in ours."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def cannot_write(e: OSError, path: str) -> str:
    """'cannot write FILE (REASON)': the file the error names (the second of a rename), else
    `path`; the operating system's reason, else the error's first line (numpy and PIL raise
    OSErrors without one)."""
    return f"cannot write {e.filename2 or e.filename or path} ({e.strerror or first_line(e)})"


def os_reason(e: BaseException) -> str:
    """The operating system's reason for a failed write ('No space left on device', 'Disk quota
    exceeded', ...) from an OSError in e's chain or from the os_error_code in tensorstore's
    message, e.g. "...Failed to write 20436 bytes to file 5: No space left on device
    [os_error_code='28']"; '' when there is none."""
    for link in exception_chain(e):
        if isinstance(link, OSError) and link.errno:
            return os.strerror(link.errno)
        if code := re.search(r"\[os_error_code='?(\d+)'?\]", str(link)):
            return os.strerror(int(code.group(1)))
    return ""


def is_int_at_least(value, least: int) -> bool:
    """Whether value is an integer (Python's or numpy's) >= least. Not a bool: ConfigDict and
    numpy take True as 1, which no size or count means."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def exception_chain(e: BaseException | None) -> Iterator[BaseException]:
    """e, then the exceptions it was raised from or during, each once."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def described(value: Any) -> str:
    """'an array of shape (2, 5)' or the type's name, for messages."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
