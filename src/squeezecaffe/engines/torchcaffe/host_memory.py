"""glibc's malloc told to keep the memory a CPU training loop frees, so the next iteration reuses it.

Every iteration allocates and frees the same activations and gradients, most of them megabytes each. By
default glibc serves the largest from fresh `mmap`s and hands freed heap tops back to the kernel, so each
iteration faults all of that memory in again, page by page: on a 2-core VM a fifth of fullbypass12's iteration
time at batch 32, and as much for a hand-written PyTorch module in a process of its own (bench/host_memory.py).
With no mmap'd chunks (M_MMAP_MAX 0) and trimming only above 2 GiB of free heap (M_TRIM_THRESHOLD), the freed
memory stays mapped and the page faults stop. The price: the process keeps its peak heap instead of shrinking
between iterations, which a training process reaches anyway.

glibc only (elsewhere nothing happens); process-wide and never undone, so a process that trains on the CPU keeps
its peak heap until it ends (compress's stages, lr-find and a test session included). Forked DataLoader workers
inherit it; spawned ones keep glibc's default (they only decode).
SQUEEZECAFFE_MALLOC=system leaves malloc as it is (`kept`, the default, applies it; anything else is refused).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from squeezecaffe.errors import UserError

M_TRIM_THRESHOLD = -1  # mallopt parameters, as glibc's <malloc.h> numbers them
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: the largest it can say
OPT_OUT = "SQUEEZECAFFE_MALLOC"
CHOICES = ("", "kept", "system")  # unset means kept

_applied: bool | None = None


def keep_freed_host_memory() -> bool:
    """Apply the setting once per process; True when glibc took it."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    choice = os.environ.get(OPT_OUT, "").strip().lower()
    if choice not in CHOICES:
        raise UserError(f"{OPT_OUT}={os.environ[OPT_OUT]!r}: use 'system' (glibc's default malloc) or 'kept' (the "
                        "default: freed memory kept for the next iteration)")
    if choice == "system":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this process runs on
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # M_TRIM_THRESHOLD first: setting it also stops glibc moving the mmap threshold by itself
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and mallopt(M_MMAP_MAX, 0) == 1
