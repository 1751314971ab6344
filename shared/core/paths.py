"""Looking at a path a user gave, with one clear error when the system refuses to look.

`Path.is_dir()`, `is_file()` and `exists()` answer False for a missing path but raise for others: a name over
255 bytes or a path over 4096 (ENAMETOOLONG), a folder without search permission (EACCES). `path_kind`
answers for all of them, and the refusals are a PathError that says what was wrong and what the limit is.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal

from shared.core.errors import AppError

# Linux's NAME_MAX and PATH_MAX (limits.h); most file systems hold the same 255 bytes per name.
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4096
SHOWN_CHARS = 80

PathKind = Literal["file", "dir", "other", "missing"]


class PathError(AppError):
    """A path cannot be looked at; the message names it (shortened) and says why; `reason` is the why alone."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def shown(path: str | Path, width: int = SHOWN_CHARS) -> str:
    """`path` for a message: cut in the middle when longer than `width` characters."""
    text = str(path)
    if len(text) <= width:
        return text
    keep = (width - 3) // 2
    return f"{text[:keep]}...{text[-keep:]}"


def _reason(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        longest = max((len(part.encode("utf-8", "surrogateescape")) for part in path.parts), default=0)
        if longest > NAME_MAX_BYTES:
            return f"a name in it is {longest:,} bytes long; the limit is {NAME_MAX_BYTES} bytes per name"
        total = len(os.fsencode(path))
        return f"it is {total:,} bytes long; the limit is {PATH_MAX_BYTES:,} bytes"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or exc.__class__.__name__


def path_kind(path: str | Path, what: str = "") -> PathKind:
    """Whether `path` is a file, a folder, something else, or missing (including a file used as a folder,
    `file.png/x`). Raises PathError when the system refuses to look (a name or path too long, no permission);
    its message calls the path `what` (say "model path") when given."""
    candidate = Path(path)
    try:
        mode = candidate.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return "missing"
        named = f"{what} {shown(candidate)}" if what else shown(candidate)
        reason = _reason(candidate, exc)
        raise PathError(f"cannot use {named}: {reason}", reason) from None
    except ValueError:  # an embedded NUL byte
        reason = "it holds a NUL character"
        raise PathError(f"cannot use {shown(candidate)!r}: {reason}", reason) from None
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"
