"""Keep freed tensor memory inside the process: glibc ``malloc`` settings for the command line.

Why: a CPU forward pass allocates and frees tensors of 5-30 MB per layer (a batch's MLP
activations, a block of head logits, a step's KV cache). Under glibc's defaults a freed block
that large is handed back to the kernel (``munmap``, or a trim of the heap's top), and the next
batch's tensor of the same size is faulted in again page by page, each 4 KiB page zeroed by the
kernel; on a virtual machine a page fault costs several microseconds. Measured on the 2-core
Intel Xeon VM (GPT-2 124M shape, one thread, ``score()`` of 64 texts with a reference and every
signal): 0.7-1.5 million minor page faults per call and 29.6-30.2 s under the defaults, a few
thousand faults and 27.6-28.8 s with :func:`keep_freed_memory` (``benchmarks/roofline.py``).

:func:`keep_freed_memory` is applied by the ``llm-mia`` entry point before any torch work, as the
thread policy is (:mod:`llm_mia.core.threads`); library functions never call it, so a program that
imports llm_mia keeps its allocator as it is (it may call the function itself). It does nothing
off glibc (macOS, musl), when the process runs another allocator (``LD_PRELOAD`` of jemalloc or
tcmalloc, which keep freed memory themselves), or when the user set glibc's own ``MALLOC_*_``
variables, which are then respected.

The cost: memory freed by one stage stays reserved for the next instead of going back to the
system, so the resident size stays near its peak until the process ends (a command, not a
long-lived server).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

# glibc's mallopt(3) parameters
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

#: (parameter, value): blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit) come from the
#: heap, the heap's free top is never trimmed below 2 GiB, and it grows 64 MiB at a time
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))
#: glibc's variables for the same settings: when one is set, the user has chosen
USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def _other_allocator(env: Mapping[str, str]) -> bool:
    preload = env.get("LD_PRELOAD", "")
    return any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc"))


def keep_freed_memory(env: Mapping[str, str] | None = None) -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; True when they were applied.

    Args:
        env: the environment (default ``os.environ``); a glibc ``MALLOC_*_`` variable from
            :data:`USER_VARS`, or an ``LD_PRELOAD`` of another allocator, leaves malloc as it is.

    Returns:
        True when every setting was accepted; False off Linux, off glibc (no ``mallopt`` or
        ``gnu_get_libc_version``), with another allocator, or with the user's own settings. Never
        raises: the settings only change speed, never results.
    """
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux") or _other_allocator(env) or any(v in env for v in USER_VARS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl's mallopt ignores these)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
