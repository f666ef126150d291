"""The CPU thread policy of the command line: how many intra-op threads torch uses.

Decided here once and applied by the ``llm-mia`` entry point before any torch work
(:func:`apply_threads`); the library functions never change torch's threads, so a program that
calls ``torch.set_num_threads`` itself keeps its own setting.

Precedence:

1. ``--threads N`` (a global option of ``llm-mia``);
2. ``OMP_NUM_THREADS``, then ``MKL_NUM_THREADS``, when set (the first number of an OpenMP
   nesting list such as ``2,1``): respected, which is also how ``accelerate launch`` / torchrun
   give each process one thread. A value that is not a positive integer is a one-line error (torch
   would warn and silently fall back to every core, the slow case below);
3. otherwise :data:`DEFAULT_THREADS` = 1.

Why one thread by default, measured with ``benchmarks/threads_bench.py`` (figures in
benchmarks/README.md): on a 2-core machine shared with other jobs (load average 5-11), torch at
its default (one thread per core) ran ``llm-mia extract`` 4.2x and ``llm-mia score`` 3.4x slower
than at one thread, and two processes of one thread were no faster than one, because every
OpenMP region waits for its slowest thread and a thread sharing a core with another process is
always the slowest. On an idle machine more threads help scoring (up to the number of cores), so
``--threads`` / ``OMP_NUM_THREADS`` are the way to use them; the default favours the machine that
is busy (CI runners, shared workstations), where the loss of the other choice is largest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llm_mia.core.errors import LlmMiaError

DEFAULT_THREADS = 1
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _positive(value: str, what: str) -> int:
    first = value.strip().split(",")[0].strip()
    try:
        n = int(first)
    except ValueError:
        n = 0
    if n < 1:
        raise LlmMiaError(f"{what} must be a positive integer (the number of CPU threads), got '{value}'")
    return n


def resolve_threads(cli: int | None = None, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The number of torch intra-op threads and where it came from.

    Args:
        cli: the ``--threads`` value (None when not given).
        env: the environment (default ``os.environ``).

    Returns:
        ``(n, source)``: n >= 1; source is ``"--threads"``, the environment variable's name, or
        ``"default"`` (:data:`DEFAULT_THREADS`).

    Raises:
        LlmMiaError: ``cli`` < 1, or ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to something
        that is not a positive integer (an empty value counts as unset).
    """
    env = os.environ if env is None else env
    if cli is not None:
        if isinstance(cli, bool) or not isinstance(cli, int) or cli < 1:
            raise LlmMiaError(f"--threads must be a positive integer, got {cli!r}")
        return cli, "--threads"
    for var in ENV_VARS:
        value = env.get(var)
        if value is not None and value.strip():
            return _positive(value, var), var
    return DEFAULT_THREADS, "default"


def apply_threads(cli: int | None = None) -> int:
    """Resolve the policy (:func:`resolve_threads`), set torch's intra-op threads and return n.

    A number chosen here (``--threads`` or the default) is also exported as ``OMP_NUM_THREADS``,
    so what starts its own thread pool later follows it: vLLM's CPU worker (which pins one thread
    per core when the variable is unset) and child processes. A value from the environment is left
    as it is.
    """
    n, source = resolve_threads(cli)
    if source in ("--threads", "default"):
        os.environ["OMP_NUM_THREADS"] = str(n)
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
