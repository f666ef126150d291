"""llm_mia.core.allocator: glibc's malloc keeps freed blocks (no page faults when the next batch
allocates the same size again), and the user's own allocator settings are left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from llm_mia.core.allocator import keep_freed_memory

# A fresh process allocates a 24 MiB block, touches every page, frees it and does it again; it
# prints the minor page faults of the second round (resource.getrusage), with the settings applied
# (argv[1] == "1") or under glibc's defaults.
ROUNDS = textwrap.dedent("""
    import ctypes, resource, sys
    from llm_mia.core.allocator import keep_freed_memory
    applied = keep_freed_memory({}) if sys.argv[1] == "1" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    n = 24 << 20
    faults = []
    for r in range(2):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        libc.free(p)
    print(applied, faults[1])
""")


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt only")
def test_freed_blocks_are_reused_without_page_faults():
    pages = (24 << 20) // 4096
    got = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", ROUNDS, flag], capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        got[flag] = (applied, int(faults))
    assert got["1"][0] == "True" and got["0"][0] == "False"
    assert got["0"][1] > pages // 2  # glibc's defaults: the block went back to the kernel, faulted in again
    assert got["1"][1] < pages // 20  # kept: the second round touches pages already mapped


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": "65536"}, {"MALLOC_ARENA_MAX": "2"},
                                 {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}])
def test_user_allocator_settings_are_respected(env):
    assert keep_freed_memory(env) is False


def test_off_linux_nothing_is_done(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory({}) is False
