"""Scoring many sentences that share a token prefix: the prefix runs once, its KV cache is reused.

Exposure (Carlini et al. 2019, "The Secret Sharer", sec. 3-4) scores thousands of candidate
sentences ``prefix + r + suffix`` that differ only in their random part r. Running the shared
prefix once and feeding only the remaining tokens, batched, against its cached keys and values
gives the same numbers as whole-sentence scoring at a fraction of the cost.

What "shared" means here is decided on *token ids*, never on text: the caller tokenizes each
whole sentence and names a split point; sentences are grouped by their exact first ``split`` ids,
so a byte-level BPE merge across the prefix / random-part boundary simply puts a sentence in
another group. Groups with fewer than ``min_group`` members are scored whole (split after their
first token, which all of them share when a BOS id is prepended).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llm_mia.core import parallel
from llm_mia.core.errors import LlmMiaError
from llm_mia.models.device import model_max_context


@dataclass
class PrefixScores:
    """Log-probabilities of N sentences scored with a shared-prefix KV cache.

    Attributes:
        total_logprob: float64 (N,), nats: sum of log p(s_t | s_<t) over t = 1 .. len(s) - 1 (the
            first token only conditions), identical in definition to ``total_nll`` of
            :func:`llm_mia.models.stats.compute_token_stats` with context 1 (up to sign).
        tail_logprob: float32 (N, S), nats: log p of the tokens after the split point of each row
            (``s[split:]``), left-aligned; 0.0 where ``tail_mask`` is False.
        tail_topk_logprob: float32 (N, S) or None: log of the top-k renormalised probability of the
            same tokens (``-inf`` for a token outside the top k), only when ``top_k`` was given;
            0.0 where masked.
        tail_mask: bool (N, S), True for the first ``n_tail[i]`` columns of row i.
        n_tail: int64 (N,), ``len(s) - split`` of each row (as used: the split of a row scored whole is 1).
        split: int64 (N,), the split point actually used for each row.
    """

    total_logprob: torch.Tensor
    tail_logprob: torch.Tensor
    tail_topk_logprob: torch.Tensor | None
    tail_mask: torch.Tensor
    n_tail: torch.Tensor
    split: torch.Tensor


def _logprobs(logits: torch.Tensor, targets: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) (M,) from logits (M, V) in fp32, and, with ``top_k``, the top-k renormalised log p.

    Top-k keeps every token whose logit is >= the k-th largest (ties kept, as in
    :class:`llm_mia.models.generation.PerSampleSampler`); a target outside it gets ``-inf``.
    """
    x = logits.float()  # (M, V)
    x = x - x.max(dim=-1, keepdim=True).values
    tgt = x.gather(-1, targets[:, None])[:, 0]  # (M,)
    tok = tgt - torch.logsumexp(x, dim=-1)
    if top_k is None:
        return tok, None
    k = min(int(top_k), x.shape[-1])
    kth = torch.topk(x, k, dim=-1).values[:, -1:]  # (M, 1)
    keep = x >= kth
    lse_k = torch.logsumexp(torch.where(keep, x, torch.full_like(x, -torch.inf)), dim=-1)
    topk = torch.where(tgt >= kth[:, 0], tgt - lse_k, torch.full_like(tgt, -torch.inf))
    return tok, topk


def _cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the forward argument that takes a KV cache (``cache`` in recent transformers)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _expand_cache(cache, batch: int):
    """A copy of a one-row ``DynamicCache`` whose layers are broadcast to ``batch`` rows (no copy of data)."""
    c = copy.deepcopy(cache)
    layers = getattr(c, "layers", None)
    if layers is None:
        raise LlmMiaError("this model's KV cache has no per-layer tensors; shared-prefix scoring is unsupported")
    for layer in layers:
        if getattr(layer, "keys", None) is None or getattr(layer, "values", None) is None:
            raise LlmMiaError("this model's KV cache layers hold no keys/values; shared-prefix scoring is unsupported")
        layer.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
        layer.values = layer.values.expand(batch, *layer.values.shape[1:])
    return c


@dataclass
class _Prefix:
    """One group's shared prefix after its forward pass.

    Attributes:
        length: P, the number of prefix tokens.
        cache: the model's one-row KV cache of the prefix (``DynamicCache``-like).
        logprob: float64 scalar on the CPU, nats: sum of log p of prefix tokens 1 .. P-1 (0 when P = 1).
        last: (1, V) logits at the last prefix position, which predict the first tail token of every row.
    """

    length: int
    cache: object
    logprob: torch.Tensor
    last: torch.Tensor


@dataclass
class _Buffers:
    """The results being filled in, one row per sequence in input order, on the CPU.

    Attributes:
        total: float64 (N,), nats: sum of log p over tokens 1 .. len(s) - 1.
        tail: float32 (N, S), nats: log p of the tail tokens, left-aligned; 0.0 beyond ``n_tail``.
        tail_k: float32 (N, S) or None: the top-k renormalised log p of the same tokens (only with ``top_k``).
    """

    total: torch.Tensor
    tail: torch.Tensor
    tail_k: torch.Tensor | None


@torch.inference_mode()
def score_shared_prefix(model: torch.nn.Module, sequences: Sequence[Sequence[int]], split: Sequence[int], *,
                        batch_size: int = 64, top_k: int | None = None, min_group: int = 2,
                        max_context: int | None = None,
                        progress: Callable[[int], None] | None = None) -> PrefixScores:
    """Sum of log p over every token of each sequence, with one prefix pass per group of equal prefixes.

    Args:
        model: a causal LM called as ``model(input_ids=, attention_mask=, position_ids=, <cache>=,
            use_cache=)`` returning ``.logits`` (B, T, V) and a ``DynamicCache``-like cache.
        sequences: N token-id lists (a BOS id first, as exposure scores them), each of length >= 1.
        split: N ints in ``[1, len(s)]``: sequences with equal ``s[:split]`` share one prefix pass;
            tokens ``s[split:]`` are fed in batches against its cache.
        batch_size: tail rows per forward pass.
        top_k: also return the top-k renormalised log p of the tail tokens (Carlini et al. 2021's
            top-k = 40 sampling).
        min_group: groups smaller than this are scored whole (split 1), batched together.
        max_context: longest sequence allowed; default: the model config's ``n_positions``.
        progress: called with the number of sequences finished after each batch.

    Returns:
        :class:`PrefixScores` in input order. Values equal whole-sentence scoring to float32 rounding
        (~1e-5 nats on a sentence of 60 tokens): right-padding of the tails is excluded by
        index selection, padded positions are masked out of attention, position ids continue the prefix.

    Raises:
        LlmMiaError: empty sequence, split out of range, sequence longer than the context, or a
            model whose cache cannot be broadcast.
    """
    n = len(sequences)
    if len(split) != n:
        raise LlmMiaError(f"split has {len(split)} entries for {n} sequences")
    if batch_size < 1:
        raise LlmMiaError("batch size must be >= 1")
    if max_context is None:
        max_context = model_max_context(model)
    seqs = [list(map(int, s)) for s in sequences]
    sp = [int(k) for k in split]
    _check_sequences(seqs, sp, max_context)
    groups = _group(seqs, sp, min_group)  # sp: 1 for the sequences scored whole
    if parallel.active():  # under `accelerate launch`: each process its share of the rows (same groups)
        return _sharded(model, seqs, sp, batch_size=batch_size, top_k=top_k, max_context=max_context,
                        progress=progress)

    n_tail = torch.tensor([len(s) - k for s, k in zip(seqs, sp)], dtype=torch.long)
    width = int(n_tail.max()) if n else 0
    buf = _Buffers(total=torch.zeros(n, dtype=torch.float64), tail=torch.zeros(n, width, dtype=torch.float32),
                   tail_k=torch.zeros(n, width, dtype=torch.float32) if top_k is not None else None)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    cache_kw = _cache_kwarg(model)

    for key, idx in groups.items():
        prefix = _run_prefix(model, key, device)
        # longest tails first: less padding per batch
        idx = sorted(idx, key=lambda i: -int(n_tail[i]))
        for b0 in range(0, len(idx), batch_size):
            rows = idx[b0:b0 + batch_size]
            _score_rows(model, prefix, rows, seqs, n_tail, buf, device=device, cache_kw=cache_kw, top_k=top_k)
            if progress is not None:
                progress(len(rows))
    mask = torch.arange(width)[None, :] < n_tail[:, None]
    return PrefixScores(total_logprob=buf.total, tail_logprob=buf.tail, tail_topk_logprob=buf.tail_k, tail_mask=mask,
                        n_tail=n_tail, split=torch.tensor(sp, dtype=torch.long))


def _sharded(model: torch.nn.Module, seqs: list[list[int]], sp: list[int], *, batch_size: int, top_k: int | None,
             max_context: int | None, progress: Callable[[int], None] | None) -> PrefixScores:
    """:func:`score_shared_prefix` data-parallel (:mod:`llm_mia.core.parallel`): the rows dealt out by length,
    each process scoring its rows with the splits ``sp`` already decided on all of them (``min_group`` 1, so
    a row keeps its split even when its group's other rows went to another process); every process gets
    the whole :class:`PrefixScores` back in input order."""
    rank, world = parallel.rank_and_world()
    mine = parallel.shard(len(seqs), rank, world, costs=[len(s) for s in seqs])
    with parallel.local():
        got = score_shared_prefix(model, [seqs[i] for i in mine], [sp[i] for i in mine], batch_size=batch_size,
                                  top_k=top_k, min_group=1, max_context=max_context,
                                  progress=progress if rank == 0 else None) if mine else None
    pieces = parallel.all_pieces(mine, got)
    if progress is not None and rank == 0:
        progress(len(seqs) - len(mine))
    n_tail = torch.tensor([len(s) - k for s, k in zip(seqs, sp)], dtype=torch.long)
    width = int(n_tail.max()) if seqs else 0
    total = torch.zeros(len(seqs), dtype=torch.float64)
    tail = torch.zeros(len(seqs), width, dtype=torch.float32)
    tail_k = torch.zeros(len(seqs), width, dtype=torch.float32) if top_k is not None else None
    for rows, part in pieces:
        if part is None:
            continue
        idx, w = torch.as_tensor(rows, dtype=torch.long), int(part.tail_logprob.shape[1])
        total[idx], tail[idx, :w] = part.total_logprob, part.tail_logprob
        if tail_k is not None:
            tail_k[idx, :w] = part.tail_topk_logprob
    mask = torch.arange(width)[None, :] < n_tail[:, None]
    return PrefixScores(total_logprob=total, tail_logprob=tail, tail_topk_logprob=tail_k, tail_mask=mask,
                        n_tail=n_tail, split=torch.tensor(sp, dtype=torch.long))


def _check_sequences(seqs: list[list[int]], sp: list[int], max_context: int | None) -> None:
    """Raise LlmMiaError for an empty sequence, a split outside ``[1, len(s)]`` or a sequence past the context."""
    for i, (s, k) in enumerate(zip(seqs, sp)):
        if not s:
            raise LlmMiaError(f"sequence {i} is empty (prepend a BOS id)")
        if not 1 <= k <= len(s):
            raise LlmMiaError(f"split {k} of sequence {i} is outside [1, {len(s)}]")
        if max_context is not None and len(s) > max_context:
            raise LlmMiaError(f"a sentence of {len(s)} tokens is longer than the model's context of {max_context}")


def _group(seqs: list[list[int]], sp: list[int], min_group: int) -> dict[tuple[int, ...], list[int]]:
    """Sequence indices grouped by their prefix ``s[:split]``; groups under ``min_group`` are scored whole.

    A sequence scored whole gets ``sp[i] = 1`` (set in place) and joins the group of its first token.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (s, k) in enumerate(zip(seqs, sp)):
        groups.setdefault(tuple(s[:k]), []).append(i)
    small = [i for key, idx in groups.items() if len(idx) < min_group for i in idx]
    groups = {key: idx for key, idx in groups.items() if len(idx) >= min_group}
    for i in small:  # scored whole: split after the first token (a shared BOS)
        sp[i] = 1
        groups.setdefault(tuple(seqs[i][:1]), []).append(i)
    return groups


def _run_prefix(model: torch.nn.Module, key: tuple[int, ...], device: torch.device) -> _Prefix:
    """One forward pass over a group's prefix ``key``: its KV cache, its own log p and its last logits."""
    P = len(key)
    pre = torch.tensor([key], dtype=torch.long, device=device)  # (1, P)
    out = model(input_ids=pre, attention_mask=torch.ones_like(pre), use_cache=True)
    cache = getattr(out, "cache", None)  # (``past_key_values`` before transformers 5.2x)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    logits = out.logits[0]  # (P, V)
    # prefix tokens 1..P-1, shared by the whole group
    pre_lp = (_logprobs(logits[:-1], pre[0, 1:], None)[0].double().sum().cpu() if P > 1
              else torch.zeros((), dtype=torch.float64))
    last = logits[-1:]  # (1, V): predicts the first tail token of every row
    return _Prefix(length=P, cache=cache, logprob=pre_lp, last=last)


def _score_rows(model: torch.nn.Module, prefix: _Prefix, rows: list[int], seqs: list[list[int]],
                n_tail: torch.Tensor, buf: _Buffers, *, device: torch.device, cache_kw: str,
                top_k: int | None) -> None:
    """Score the tails of one batch of ``rows`` (sequence indices) of a group and write them into ``buf``."""
    lens = [int(n_tail[i]) for i in rows]
    if max(lens) > 0:
        lp_full, k_full = _tail_logprobs(model, prefix, [seqs[i][prefix.length:] for i in rows], lens,
                                         device=device, cache_kw=cache_kw, top_k=top_k)
        lp_full = lp_full.cpu()
        for r, i in enumerate(rows):
            buf.tail[i, :lens[r]] = lp_full[r, :lens[r]]
            buf.total[i] = prefix.logprob + lp_full[r, :lens[r]].double().sum()
            if top_k is not None:
                buf.tail_k[i, :lens[r]] = k_full[r, :lens[r]].cpu()
    else:
        for i in rows:
            buf.total[i] = prefix.logprob


def _tail_logprobs(model: torch.nn.Module, prefix: _Prefix, tails: list[list[int]], lens: list[int], *,
                   device: torch.device, cache_kw: str,
                   top_k: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p of B tails (each at least one token) fed after ``prefix`` against its broadcast cache.

    Returns:
        float32 (B, W) on ``device``, W = max(lens), nats: log p of each tail token, left-aligned (columns
        past a row's length are not set); and the same of the top-k renormalised log p (None without ``top_k``).
    """
    B, W, P = len(tails), max(lens), prefix.length
    tgt = torch.zeros(B, W, dtype=torch.long)
    for r, t in enumerate(tails):
        tgt[r, :lens[r]] = torch.as_tensor(t, dtype=torch.long)
    tgt = tgt.to(device)
    lp0, k0 = _logprobs(prefix.last.expand(B, -1), tgt[:, 0], top_k)  # (B,)
    if W > 1:  # feed tail tokens 0..W-2; position j predicts tail token j+1
        feed = tgt[:, :W - 1]  # (B, W-1), right-padded with id 0 beyond each length
        valid = torch.arange(W - 1, device=device)[None, :] < (torch.tensor(lens, device=device)[:, None] - 1)
        attn = torch.cat([torch.ones(B, P, dtype=torch.long, device=device), valid.long()], dim=1)
        pos = (P + torch.arange(W - 1, device=device))[None, :].expand(B, -1)
        o = model(input_ids=feed, attention_mask=attn, position_ids=pos, use_cache=True,
                  **{cache_kw: _expand_cache(prefix.cache, B)})
        rr, cc = valid.nonzero(as_tuple=True)  # real positions only (never padding)
        lp, kk = _logprobs(o.logits[rr, cc], tgt[rr, cc + 1], top_k)  # (M,)
        lp_full = torch.zeros(B, W, dtype=torch.float32, device=device)
        lp_full[:, 0] = lp0
        lp_full[rr, cc + 1] = lp
        k_full = None
        if top_k is not None:
            k_full = torch.zeros(B, W, dtype=torch.float32, device=device)
            k_full[:, 0] = k0
            k_full[rr, cc + 1] = kk
    else:
        lp_full = lp0[:, None]
        k_full = k0[:, None] if top_k is not None else None
    return lp_full, k_full
