"""CPU memory allocator setting: keep freed memory in the process for the next training step.

A training step frees and allocates the same large buffers every step (at `tiny` the [B·T, V] logits alone are
32 MiB, and each of their gradients as much again). With its default settings glibc's malloc serves every block above
its mmap threshold (adapted at run time, at most 32 MiB) by a fresh mmap, and trims the top of the heap after a
large free, so each step maps those buffers anew and page-faults them in again. Setting both thresholds high keeps
the freed memory in the heap for reuse: faster steps for a little more resident memory (reports/bench/malloc.md).

The hopelab command line applies it at start (`hopelab.cli.main`); Python users call `keep_freed_memory()`
themselves. It does nothing where malloc is not glibc's, or where the user set glibc's MALLOC_TRIM_THRESHOLD_ or
MALLOC_MMAP_THRESHOLD_ (their setting wins), or with HOPELAB_MALLOC=default.
"""

from __future__ import annotations

import ctypes
import os
import platform

THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap top is kept
GLIBC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")  # glibc reads these at process start
OPT_OUT = "HOPELAB_MALLOC"  # "default": leave glibc's malloc as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>

FROM_ENVIRONMENT = "set by MALLOC_* environment"

_status: str | None = None


def keep_freed_memory() -> str:
    """Apply the setting to this process (and, through the environment, to the processes it starts).
    Returns what holds now: "kept (glibc thresholds 1 GiB)", FROM_ENVIRONMENT, or "default (<why>)".
    Idempotent."""
    global _status
    if _status is not None:
        return _status
    if os.environ.get(OPT_OUT, "").lower() == "default":
        _status = f"default ({OPT_OUT}=default)"
    elif any(name in os.environ for name in GLIBC_ENV):
        _status = FROM_ENVIRONMENT
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _status = "default (not glibc)"
    else:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the running process's malloc
        ok = mallopt is not None and all(
            mallopt(param, THRESHOLD_BYTES) == 1 for param in (_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD)
        )
        if ok:
            os.environ.update({name: str(THRESHOLD_BYTES) for name in GLIBC_ENV})  # study workers, DDP ranks
        _status = "kept (glibc thresholds 1 GiB)" if ok else "default (mallopt refused)"
    return _status


def freed_memory_setting() -> str:
    """What holds in this process, without changing it (what `hopelab bench` reports)."""
    if _status is not None:
        return _status
    return FROM_ENVIRONMENT if any(name in os.environ for name in GLIBC_ENV) else "default"
