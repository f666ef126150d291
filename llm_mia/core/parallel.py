"""Data parallelism under ``accelerate launch`` / torchrun: shard a list of inputs over the processes,
compute, gather the pieces back in input order.

One process (no ``WORLD_SIZE`` > 1 in the environment) is the plain path: nothing here imports
accelerate or torch.distributed, :func:`shard` keeps every index and :func:`all_pieces` returns the
process's own piece. Under a launch of P processes, process r takes the indices :func:`shard` gives it,
computes their results, and :func:`all_pieces` all-gathers every process's ``(indices, piece)``
(``accelerate.utils.gather_object``, gloo on a CPU), so every process holds the whole result and runs
the same (cheap, deterministic) code after it; only process 0 writes (:func:`is_main`).

Every process must make the same sharded calls in the same order (they are collectives): code that
already splits its own work by rank (extraction's sampling and scoring) runs inside :func:`local`,
where nothing is sharded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from llm_mia.core.errors import LlmMiaError

_LOCAL_DEPTH = [0]  # > 0 inside :func:`local`


def world_size() -> int:
    """The number of processes of this launch (``WORLD_SIZE``; 1 when unset).

    Raises:
        LlmMiaError: ``WORLD_SIZE`` is not a positive integer.
    """
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        world = 0
    if world < 1:
        raise LlmMiaError(f"WORLD_SIZE must be a positive integer, got {raw!r}")
    if "WORLD_SIZE" not in os.environ and "MASTER_ADDR" in os.environ and "ACCELERATE_MIXED_PRECISION" in os.environ:
        _warn_one_launched()
    return world


@functools.lru_cache(maxsize=1)
def _warn_one_launched() -> None:
    """Say once that ``accelerate launch --num_processes N`` started only this process: on a machine
    without GPUs its simple launcher starts one (it sets ``MASTER_ADDR`` for an MPI run, not
    ``WORLD_SIZE``), so the run would be one process while the user asked for several."""
    import sys

    print("note: accelerate launch started one process here (without GPUs it needs --multi_gpu for "
          "several, gloo on the CPU; or torchrun --nproc_per_node N): running as one process", file=sys.stderr)


@functools.lru_cache(maxsize=1)
def process_state():
    """accelerate's ``PartialState`` when launched with several processes (``accelerate launch``,
    torchrun), else None. Without an accelerator (or with ``ACCELERATE_USE_CPU``) the processes talk
    over gloo on the CPU. Created once per process."""
    if world_size() <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def rank_and_world() -> tuple[int, int]:
    """``(process index, number of processes)`` from ``RANK`` and ``WORLD_SIZE`` (set by ``accelerate
    launch`` and torchrun); ``(0, 1)`` for a single process. Starts no process group: transformers >= 5
    saves a model only on rank 0 once torch.distributed is initialised, so code that trains one model per
    process (shadow models) must learn its rank without one.

    Raises:
        LlmMiaError: ``RANK`` missing or outside ``[0, WORLD_SIZE)`` under several processes.
    """
    world = world_size()
    if world == 1:
        return 0, 1
    raw = os.environ.get("RANK", "")
    if not raw.isdigit() or int(raw) >= world:
        raise LlmMiaError(f"RANK must be an integer in [0, {world}) under WORLD_SIZE={world}, got {raw!r}")
    return int(raw), world


def process_device(device: str | None) -> str | None:
    """``device`` when given; else, under a launch of several processes, this process's device
    (``cuda:<local rank>``, or ``cpu``); else None (the loader's default)."""
    state = process_state() if device is None else None
    return device if state is None else str(state.device)


def is_main() -> bool:
    """True on process 0 (the only one that writes outputs) and on a single process."""
    return rank_and_world()[0] == 0


def active() -> bool:
    """True when calls to :func:`map_sharded` / :func:`all_pieces` split work: several processes, outside :func:`local`."""
    return _LOCAL_DEPTH[0] == 0 and world_size() > 1


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside this block nothing is sharded: for code that already divides its own work by rank."""
    _LOCAL_DEPTH[0] += 1
    try:
        yield
    finally:
        _LOCAL_DEPTH[0] -= 1


def local_only(fn: Callable) -> Callable:
    """Decorator: ``fn`` always runs inside :func:`local` (it divides its work by rank itself)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with local():
            return fn(*args, **kwargs)

    return wrapper


def wait_for_file(path: str | os.PathLike, *, timeout_s: float = 3600.0, poll_s: float = 0.2) -> None:
    """Wait until ``path`` exists (written atomically by process 0): a barrier without a process group.

    Raises:
        LlmMiaError: still missing after ``timeout_s`` seconds (process 0 failed or is stuck).
    """
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise LlmMiaError(f"{path} not written by process 0 within {timeout_s:.0f} s")
        time.sleep(poll_s)


def barrier() -> None:
    """Wait for every process (nothing on a single process)."""
    state = process_state()
    if state is not None:
        state.wait_for_everyone()


def shard(n: int, rank: int, world: int, *, costs: Sequence[float] | None = None) -> list[int]:
    """The indices of ``range(n)`` process ``rank`` of ``world`` computes, ascending.

    Without ``costs``: strided, ``rank, rank + world, ...``. With ``costs`` (one per index, e.g. the
    token count): the indices sorted by cost, largest first (ties by index), dealt out in turn, so each
    process gets a similar share of the work. Disjoint over the ranks and covering ``range(n)``
    exactly; a rank may get none (never a padded copy).

    Raises:
        LlmMiaError: a rank outside ``[0, world)``, ``world < 1`` or ``len(costs) != n``.
    """
    if world < 1 or not 0 <= rank < world:
        raise LlmMiaError(f"bad process rank {rank} of {world}")
    if costs is None:
        return list(range(rank, max(0, n), world))
    if len(costs) != n:
        raise LlmMiaError(f"{len(costs)} costs for {n} inputs")
    order = sorted(range(n), key=lambda i: (-costs[i], i))
    return sorted(order[rank::world])


def all_pieces(mine: Sequence[int], piece: Any) -> list[tuple[list[int], Any]]:
    """Every process's ``(indices, piece)``, in rank order, on every process (all-gather).

    A single process (or inside :func:`local`) gets ``[(list(mine), piece)]`` without communication.
    ``piece`` must pickle (tensors do)."""
    if not active():
        return [(list(mine), piece)]
    from accelerate.utils import gather_object

    process_state()  # the process group exists before the first collective
    return [(list(m), p) for m, p in gather_object([(list(mine), piece)])]


def map_sharded(fn: Callable[[list], list], items: Sequence, *, costs: Sequence[float] | None = None) -> list:
    """``fn(items)`` computed data-parallel: each process runs ``fn`` on its :func:`shard` of ``items``
    (in input order) and every process gets the whole result list back in input order.

    ``fn`` maps a list of inputs to a list of as many results (each must pickle); it is not called
    on an empty shard. On a single process this is ``fn(list(items))``.

    Raises:
        LlmMiaError: ``fn`` returned a list of the wrong length.
    """
    items = list(items)
    if not active():
        return list(fn(items))
    rank, world = rank_and_world()
    mine = shard(len(items), rank, world, costs=costs)
    got = list(fn([items[i] for i in mine])) if mine else []
    if len(got) != len(mine):
        raise LlmMiaError(f"a sharded function returned {len(got)} results for {len(mine)} inputs")
    out: list = [None] * len(items)
    for idx, piece in all_pieces(mine, got):
        for i, r in zip(idx, piece):
            out[i] = r
    return out
