"""Atomic writes: every file vidcolor writes goes to `OUT.partial` beside it and is renamed into
place only when complete, so a crash or Ctrl-C never leaves a half-written file under OUT."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"  # in-progress output is OUT + this suffix


def partial_path(out: Path) -> Path:
    """Where the output is written while incomplete."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


@contextlib.contextmanager
def writing(out: Path) -> Iterator[Path]:
    """Yield `OUT.partial` to write; rename it to `out` if the block ends normally.

    On any exception (Ctrl-C included) the partial file is removed and the exception goes on;
    a failure to remove it is ignored so that the first error is the one reported.
    """
    partial = partial_path(out)
    try:
        yield partial
        os.replace(partial, out)
    finally:  # after a failure; a completed write has been renamed away
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
