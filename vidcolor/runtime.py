"""Process-wide speed settings of the libraries below us, applied once when vidcolor is imported.

Two settings, each measured on 2-core VMs (BENCHMARKS.md, "Speed and scale"):
- glibc malloc keeps freed memory for reuse instead of handing large blocks back to the kernel;
  a fresh multi-megabyte temporary per frame otherwise costs thousands of page faults per frame.
- OpenMP worker threads (torch's) sleep when idle instead of spinning, so they do not steal the
  cores that decode, the temporal stage and the encoder run on at the same time.
Nothing the user has already set is changed, and the malloc part does nothing off glibc. It
reads no vidcolor setting and imports nothing from the package.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum: smaller blocks come from the reused heap
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024  # free heap top kept up to this, bytes (RSS stays flat)
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def tune_process() -> dict[str, bool]:
    """Apply both settings where they can still take effect; safe to call more than once.

    Returns:
        {"malloc": applied, "omp_passive": applied}, for logs and benchmarks.
    """
    return {"malloc": _keep_freed_memory(), "omp_passive": _passive_omp_threads()}


def _keep_freed_memory() -> bool:
    """mallopt() the glibc heap so that per-frame temporaries reuse pages already mapped."""
    if not sys.platform.startswith("linux") or not _is_glibc():
        return False
    if any(name in os.environ for name in _MALLOC_ENV) or "malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False  # the user tuned malloc themselves
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting either threshold also turns off glibc's dynamic threshold, which would otherwise
    # settle only after the first frames and still hand blocks above 32 MB back.
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and done
    logger.debug("glibc malloc tuned to keep freed memory: %s", done)
    return done


def _passive_omp_threads() -> bool:
    """OMP_WAIT_POLICY=PASSIVE, unless set already; OpenMP reads it only when torch loads."""
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


PROCESS_TUNING = tune_process()  # applied on import: `vidcolor/__init__.py` imports this first
