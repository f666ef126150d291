"""The model's passes data-parallel under ``accelerate launch``: the one split every stage inherits.

:meth:`llm_mia.models.hf.LoadedModel.token_stats` and :meth:`~llm_mia.models.hf.LoadedModel.generate`
call these: under P processes each process runs the model on its share of the sequences (the
sequences sorted by length and dealt out in turn, :func:`llm_mia.core.parallel.shard`), and every
process gets back the whole result in input order, so score, exposure, membership inside an audit,
discoverable memorization and the canary audit run data-parallel without code of their own. One
process: the plain call, nothing imported. Results equal the one-process ones up to float rounding
(another batching), as :func:`~llm_mia.models.stats.compute_token_stats` promises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llm_mia.core import parallel
from llm_mia.core.errors import LlmMiaError
from llm_mia.models.stats import TokenStats, combine_stats


def sharded_stats(compute: Callable[[list, list, Callable | None], TokenStats], sequences: Sequence[Sequence[int]],
                  context_lens: Sequence[int] | int, progress: Callable[[int], None] | None) -> TokenStats:
    """``compute(sequences, context_lens, progress)`` data-parallel over the sequences.

    Args:
        compute: runs the model: (N' sequences, N' context lengths, progress or None) -> TokenStats of N' rows.
        sequences: N token-id lists.
        context_lens: int or N ints (see :func:`~llm_mia.models.stats.compute_token_stats`).
        progress: told the inputs finished; only process 0 reports (its own, then the others' at the gather).

    Returns:
        TokenStats of N rows in input order, on every process (width = the longest scored row).

    Raises:
        LlmMiaError: ``context_lens`` of the wrong length.
    """
    n = len(sequences)
    ctx = [context_lens] * n if isinstance(context_lens, int) else list(context_lens)
    if len(ctx) != n:
        raise LlmMiaError(f"context_lens has {len(ctx)} entries for {n} sequences")
    if not parallel.active():
        return compute(list(sequences), ctx, progress)
    rank, world = parallel.rank_and_world()
    mine = parallel.shard(n, rank, world, costs=[len(s) for s in sequences])
    show = progress if rank == 0 else None
    st = compute([sequences[i] for i in mine], [ctx[i] for i in mine], show)
    pieces = parallel.all_pieces(mine, st)
    if show is not None:
        show(n - len(mine))
    return combine_stats(n, pieces)


def sharded_generate(run: Callable[[list, list | None], list], prompts: Sequence[Sequence[int]],
                     seeds: Sequence[int] | None) -> list:
    """``run(prompts, seeds)`` (a list with one generation per prompt) data-parallel over the prompts.

    Each sample draws from its own seed (:mod:`llm_mia.models.generation`), so the samples do not
    depend on which process made them. Returns the generations in input order, on every process."""
    items = list(zip(prompts, seeds)) if seeds is not None else [(p, None) for p in prompts]
    if seeds is not None and len(seeds) != len(prompts):
        raise LlmMiaError("sampling needs one seed per prompt")
    return parallel.map_sharded(lambda part: run([p for p, _ in part], None if seeds is None else [s for _, s in part]),
                                items, costs=[len(p) for p in prompts])
