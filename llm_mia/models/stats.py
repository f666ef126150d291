"""Batched per-token statistics: the one place a model is run for scoring.

For each token sequence we compute, for every *scored* token x_t (t >= the sequence's context
length, and t >= 1 since position 0 has no prediction):

- ``token_logprob``  log p(x_t | x_<t), natural log, read from the logits at position t-1;
- ``mean_logprob``   mu_t    = sum_v p(v | x_<t) log p(v | x_<t)            (Zhang et al. 2025, eq. 3)
- ``std_logprob``    sigma_t = sqrt(sum_v p(v | x_<t) (log p(v | x_<t) - mu_t)^2)
- ``token_is_top1``  whether x_t has the highest logit at that prediction (ties count as top-1),
  i.e. the model's greedy prediction is right there (EZ-MIA's error zone is where it is not)

Everything is computed in one forward pass per batch, with log-softmax in fp32 whatever the model's
dtype, and the ``(B, T, V)`` logits never leave this module. For architectures whose logits are
exactly ``lm_head(hidden)`` (GPT-2, GPT-NeoX, Llama, Mistral, Qwen2) they are not even materialised:
the head runs on the scored positions only, in blocks of rows x vocabulary ids fused with the
vocabulary statistics (:func:`head_stats`): no (m, V) temporary either.

Correctness rules (each a test in tests/test_stats.py, under its case id C01-C06, C17):
- masks come from sequence lengths, never from ``ids != pad_id`` (pad may equal EOS/BOS);
- padded positions are removed by index selection, never multiplied by a 0/1 mask (NaN x 0 = NaN);
- results do not depend on batch mates, batch size, order or padding side;
- sequences longer than the model's context are scored with a sliding context: windows of
  ``max_context`` tokens moving by ``stride``; each token is scored exactly once, in the first window
  that contains it with at least ``max_context - stride`` tokens of context (or all of its prefix).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.device import model_max_context


@dataclass
class TokenStats:
    """Per-token statistics of N sequences under one model, scored tokens left-aligned.

    Unscored cells hold 0.0, never NaN; always select with ``mask``. Computed with ``moments=False``,
    the scored cells of ``mean_logprob`` and ``std_logprob`` are NaN.

    Attributes:
        token_logprob: float32 (N, T), nats; column j is the j-th scored token of the row.
        mean_logprob: float32 (N, T), mu over the vocabulary at that prediction, nats.
        std_logprob: float32 (N, T), sigma over the vocabulary at that prediction, nats.
        mask: bool (N, T), True for the first ``n_scored[i]`` columns of row i.
        n_scored: int64 (N,), number of scored tokens of each sequence (0 is possible).
        truncated: bool (N,), True where the sequence was scored with a sliding context.
        token_id: int64 (N, T), the id of each scored token (for frequency-based signals); -1 elsewhere.
        token_is_top1: bool (N, T), True where the scored token's logit equals the maximum logit of
            its prediction (the model's top-1 is the true token; ties count as top-1); False elsewhere.
    """

    token_logprob: torch.Tensor
    mean_logprob: torch.Tensor
    std_logprob: torch.Tensor
    mask: torch.Tensor
    n_scored: torch.Tensor
    truncated: torch.Tensor
    token_id: torch.Tensor | None = None  # int64 (N, T): the scored token ids (-1 where unscored)
    token_is_top1: torch.Tensor | None = None  # bool (N, T): the scored token is the model's top-1

    def __len__(self) -> int:
        return int(self.n_scored.shape[0])

    def row(self, i: int) -> dict[str, torch.Tensor]:
        """The scored values of sequence i, each of shape (n_scored[i],)."""
        n = int(self.n_scored[i])
        return {"token_logprob": self.token_logprob[i, :n], "mean_logprob": self.mean_logprob[i, :n],
                "std_logprob": self.std_logprob[i, :n]}

    def select(self, index: Sequence[int]) -> TokenStats:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        fields = ("token_logprob", "mean_logprob", "std_logprob", "mask", "n_scored", "truncated", "token_id",
                  "token_is_top1")
        return TokenStats(*(None if getattr(self, f) is None else getattr(self, f)[idx] for f in fields))


@dataclass(frozen=True)
class _Window:
    seq: int        # index of the sequence
    start: int      # first position fed to the model
    end: int        # one past the last position fed
    score_from: int # first absolute position scored in this window


def _windows(length: int, context_len: int, max_context: int | None, stride: int) -> list[tuple[int, int, int]]:
    """Split positions [0, length) into model inputs; each position >= max(1, context_len) scored once."""
    first = max(1, context_len)
    if length <= first:
        return []
    if max_context is None or length <= max_context:
        return [(0, length, first)]
    out, scored_to, start = [], first, 0
    while scored_to < length:
        end = min(start + max_context, length)
        if end > scored_to:
            out.append((start, end, scored_to))
            scored_to = end
        start += stride
    return out


def vocab_stats(logits: torch.Tensor, targets: torch.Tensor, *, moments: bool = True,
                chunk_rows: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(target), mu and sigma of log p over the vocabulary, and whether the target is top-1.

    Args:
        logits: (M, V), any float dtype; everything is computed in fp32.
        targets: (M,) token ids.
        moments: compute mu and sigma (Min-K%++); when False they come back as NaN (not computed),
            and only log p(target) is paid for (one exp pass over the vocabulary).
        chunk_rows: rows processed at a time, so the fp32 temporaries stay in the CPU cache.

    Returns:
        three float32 tensors of shape (M,), in nats: log p(target) (-inf when the target's logit is
        -inf), mu = E_p[log p] and sigma = sqrt(E_p[(log p - mu)^2]) (Zhang et al. 2025, eq. 3);
        and a bool tensor (M,): the target's logit equals the row maximum (it is the top-1
        prediction; ties count as top-1), read from the same fp32 row maximum, never a second pass
        (like any argmax, a near-tie within rounding may flip between batchings).

    Everything is computed from the logits shifted by their row maximum, ``x = logits - max``, with
    ``e = exp(x)`` and ``s = sum(e)``: log p = x - log s, mu = E_p[x] - log s,
    sigma^2 = E_p[(x - E_p[x])^2] (centred: the E[x^2] - E[x]^2 form cancels badly in fp32), the
    expectations as dot products e.x / s. A uniform (or uniform-over-its-support) distribution then
    has x = 0 exactly, so sigma = 0 and log p(target) = mu exactly, instead of rounding noise (~1e-6)
    that would make Min-K%++'s z = (log p - mu) / sigma an arbitrary number such as -1. Tokens with
    probability 0 (logit -inf) contribute exactly 0 to mu and sigma, never NaN: their x is clamped
    to -1e4 after e is taken (e = 0 there, and exp(-1e4) is 0 in fp32 anyway).
    """
    m_rows = logits.shape[0]
    dev = logits.device
    tok = torch.empty(m_rows, dtype=torch.float32, device=dev)
    mu = torch.full((m_rows,), float("nan"), dtype=torch.float32, device=dev)
    sigma = torch.full((m_rows,), float("nan"), dtype=torch.float32, device=dev)
    top1 = torch.empty(m_rows, dtype=torch.bool, device=dev)
    for c0 in range(0, m_rows, max(1, chunk_rows)):
        c = slice(c0, c0 + chunk_rows)
        lg = logits[c].float()  # (m, V); a view when already fp32: never written to
        mx = lg.max(dim=-1, keepdim=True).values  # (m, 1)
        x = lg - mx  # (m, V), <= 0, max exactly 0
        e = torch.exp(x)
        s = e.sum(-1)  # (m,) >= 1
        lse = s.log()
        tgt = lg.gather(-1, targets[c].long()[:, None])[:, 0]  # (m,) the target's logit
        top1[c] = tgt == mx[:, 0]
        tok[c] = tgt - mx[:, 0] - lse
        if moments:
            x.clamp_(min=-1e4)  # -inf -> finite, so 0 * x stays 0
            m = torch.linalg.vecdot(e, x) / s  # E_p[x]
            x.sub_(m[:, None]).square_()
            var = torch.linalg.vecdot(e, x) / s
            mu[c] = m - lse
            sigma[c] = var.clamp_min(0).sqrt()
    return tok, mu, sigma, top1


def head_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, *,
               moments: bool = True, vocab_block: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
    """:func:`vocab_stats` of the logits ``hidden @ weight.T + bias``, fused into the head's GEMM.

    The vocabulary is cut into blocks of ``vocab_block`` ids; each block's (M, b) logits are made by
    one GEMM and reduced at once, while they are in the cache (one pass: row maximum, exp, sum, the
    target's logit, and with ``moments`` the centred first and second moments), so no (M, V)
    temporary is ever made. The blocks are then merged exactly as partial softmaxes are
    (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax", sec. 3) and weighted
    moments are (Chan, Golub & LeVeque 1979, pairwise update): with block maxima m_j, sums
    s_j = sum e^(z - m_j), means a_j and centred variances q_j of z - m_j under the block's softmax,
    M = max m_j, w_j = s_j e^(m_j - M), S = sum w_j, r_j = m_j - M + a_j:
    E = sum w_j r_j / S, log p(target) = z_target - M - log S, mu = E - log S (Zhang et al. 2025,
    eq. 3), sigma^2 = sum w_j (q_j + (r_j - E)^2) / S. Uniform logits give r_j = 0 and q_j = 0
    exactly, hence sigma = 0 and log p(target) = mu exactly, as in :func:`vocab_stats`.

    Args:
        hidden: (M, d) hidden states of the predictions, any float dtype.
        weight: (V, d) output-head weight; bias: (V,) or None.
        targets: (M,) int64 token ids in [0, V).
        moments: compute mu and sigma; when False they come back as NaN.
        vocab_block: vocabulary ids per block (>= 1); the whole vocabulary in one block is
            :func:`vocab_stats` on the full logits.

    Returns:
        as :func:`vocab_stats`: log p(target), mu, sigma (float32 (M,), nats) and whether the target
        is top-1 (bool (M,), the target's logit equals the maximum logit; ties count).

    Raises:
        LlmMiaError: ``vocab_block`` < 1.
    """
    if vocab_block < 1:
        raise LlmMiaError(f"vocab_block must be >= 1, got {vocab_block}")
    m_rows, vocab = hidden.shape[0], weight.shape[0]
    n_blocks = max(1, -(-vocab // vocab_block))
    part = torch.empty(4, m_rows, n_blocks, dtype=torch.float32, device=hidden.device)  # m_j, s_j, a_j, q_j
    tgt = torch.zeros(m_rows, dtype=torch.float32, device=hidden.device)
    for j, v0 in enumerate(range(0, vocab, vocab_block)):
        v1 = min(v0 + vocab_block, vocab)
        z = torch.nn.functional.linear(hidden, weight[v0:v1], None if bias is None else bias[v0:v1]).float()
        inside = (targets >= v0) & (targets < v1)
        tgt = torch.where(inside, z.gather(1, (targets - v0).clamp(0, v1 - v0 - 1)[:, None])[:, 0], tgt)
        _block_moments(z, part[:, :, j], moments)
    mx = part[0].max(dim=-1, keepdim=True).values  # (M, 1)
    w = part[1] * torch.exp(part[0] - mx)  # (M, n_blocks)
    s = w.sum(-1)
    lse = s.log()
    tok = tgt - mx[:, 0] - lse
    top1 = tgt == mx[:, 0]
    if not moments:
        nan = torch.full_like(tok, float("nan"))
        return tok, nan, nan.clone(), top1
    rel = part[0] - mx + part[2]  # block means relative to the global maximum
    mean = (w * rel).sum(-1) / s
    var = (w * (part[3] + (rel - mean[:, None]).square())).sum(-1) / s
    return tok, mean - lse, var.clamp_min(0).sqrt(), top1


def _block_moments(z: torch.Tensor, out: torch.Tensor, moments: bool) -> None:
    """One vocabulary block's (M, b) fp32 logits ``z`` (overwritten) reduced into ``out`` (4, M): its row
    maximum m, s = sum e^(z - m), and with ``moments`` the mean a and centred variance q of z - m
    under the block's softmax (else a = q = 0)."""
    mx = z.max(dim=-1, keepdim=True).values
    x = z.sub_(mx)  # <= 0, max exactly 0
    e = torch.exp(x)
    s = e.sum(-1)
    out[0], out[1] = mx[:, 0], s
    if not moments:
        out[2:] = 0
        return
    a = torch.linalg.vecdot(e, x) / s
    x.sub_(a[:, None]).square_()
    out[2], out[3] = a, torch.linalg.vecdot(e, x) / s


#: rows and vocabulary ids of one fused head block on a CPU (1,024 x 2,048 fp32 logits = 8 MiB):
#: the fastest of 128-2,048 rows x 1,024-4,096 ids measured for GPT-2 124M's head (docs/benchmarks.md)
HEAD_BLOCK_ROWS, HEAD_VOCAB_BLOCK = 1024, 2048


# Causal LMs whose logits are exactly ``lm_head(last_hidden_state)`` (no logit scaling or soft-capping),
# so the head can run on the scored positions only: the (B, T, V) logits are never materialised.
_PLAIN_HEAD = {"GPT2LMHeadModel", "GPTNeoXForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
               "Qwen2ForCausalLM"}


def _body_and_head(model: torch.nn.Module):
    """(decoder body, output head) for the architectures in ``_PLAIN_HEAD``, else None (full logits)."""
    if type(model).__name__ not in _PLAIN_HEAD:
        return None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


def _batches(windows: list[_Window], batch_size: int | None, device: torch.device):
    """Consecutive groups of the (length-sorted) windows: ``batch_size`` each, or by token budget."""
    if batch_size is not None:
        for b0 in range(0, len(windows), batch_size):
            yield windows[b0:b0 + batch_size]
        return
    budget, max_rows = (1024, 64) if device.type == "cpu" else (32768, 256)
    cur: list[_Window] = []
    for w in windows:
        longest = max([w.end - w.start] + [c.end - c.start for c in cur[:1]])
        if cur and (len(cur) >= max_rows or (len(cur) + 1) * longest > budget):
            yield cur
            cur = []
        cur.append(w)
    if cur:
        yield cur


@dataclass
class _Plan:
    """The model inputs of one :func:`compute_token_stats` call, and the shape of its result.

    Attributes:
        windows: every model input, sequence by sequence (several for a sequence with a sliding context).
        n_scored: int64 (N,), number of scored tokens of each sequence.
        truncated: bool (N,), True where the sequence is scored with a sliding context (several windows).
        context: N ints, the ``context_lens`` of each sequence.
    """

    windows: list[_Window]
    n_scored: torch.Tensor
    truncated: torch.Tensor
    context: list[int]


@dataclass
class _Buffers:
    """The result being filled in, scored tokens left-aligned (width W = the longest ``n_scored``), on the CPU.

    Attributes:
        values: float32 (3, N, W): token log p, mu, sigma (nats); 0.0 where unscored.
        token_id: int64 (N, W), the scored token ids; -1 where unscored.
        top1: bool (N, W), the scored token is the model's top-1; False where unscored.
    """

    values: torch.Tensor
    token_id: torch.Tensor
    top1: torch.Tensor


@dataclass(frozen=True)
class _RunOptions:
    """How each batch is run and reduced (the options of :func:`compute_token_stats`, resolved).

    Attributes:
        device: the model's device; inputs are moved there, results come back to the CPU.
        split: (decoder body, output head) when the head can run on the scored positions only, else None.
        pad_id: token id that fills padding (masks never depend on it).
        padding_side: "right" or "left".
        moments: compute mu and sigma.
        max_rows_per_chunk: predictions whose vocabulary statistics are computed at a time.
        vocab_block: vocabulary ids per head GEMM block when the head is fused (:func:`head_stats`).
        logprob_transform: maps (m, V) fp32 log-probs to the log-probs the caller may see, or None.
    """

    device: torch.device
    split: tuple[torch.nn.Module, torch.nn.Module] | None
    pad_id: int
    padding_side: str
    moments: bool
    max_rows_per_chunk: int
    vocab_block: int
    logprob_transform: Callable[[torch.Tensor], torch.Tensor] | None


@torch.inference_mode()
def compute_token_stats(model: torch.nn.Module, sequences: Sequence[Sequence[int]], *,
                        context_lens: Sequence[int] | int = 1, batch_size: int | None = None,
                        max_context: int | None = None, stride: int | None = None,
                        pad_id: int = 0, padding_side: str = "right", moments: bool = True,
                        max_rows_per_chunk: int | None = None, progress: Callable[[int], None] | None = None,
                        logprob_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> TokenStats:
    """Per-token statistics of ``sequences`` under ``model`` (see the module docstring).

    Args:
        model: a causal LM called as ``model(input_ids=, attention_mask=, position_ids=)`` returning
            ``.logits`` of shape (B, T, V).
        sequences: N token-id lists, of any lengths (0 allowed: that row gets ``n_scored = 0``).
        context_lens: int or N ints; the first ``context_lens[i]`` tokens of sequence i condition the
            model but are not scored (1 = the GPT-2 convention: every token but the first is scored;
            a prompt or a prepended BOS is context too). Position 0 is never scored.
        batch_size: model inputs per forward pass; default (None): as many as fit a token budget
            (rows x longest row <= 1,024 tokens on a CPU, where larger batches only spill the cache,
            and <= 32,768 tokens, at most 256 rows, on an accelerator). Inputs are sorted by length
            (longest first, so an out-of-memory error shows at once and padding is minimal); results
            come back in input order and never depend on the batching.
        max_context: longest input the model accepts; default: the model config's ``n_positions``.
        stride: sliding-context step for longer sequences; default ``max_context // 2``.
        pad_id: any valid token id used to fill padding; masks never depend on it.
        padding_side: "right" (default) or "left" (position ids then come from the attention mask).
        max_rows_per_chunk: predictions whose vocabulary statistics are computed at a time;
            default 1024 on a CPU (with the fused head, 1,024 x 2,048 logits a block: measured
            fastest for GPT-2 124M's head, see docs/benchmarks.md), 4096 elsewhere.
        moments: compute ``mean_logprob`` and ``std_logprob`` (only Min-K%++ reads them); when False
            they are NaN in every scored cell and the pass is cheaper.
        progress: called with the number of inputs finished after each batch.
        logprob_transform: maps (m, V) fp32 log-probs to the normalised log-probs the caller may see
            (an API output limit, :func:`llm_mia.models.output_modes.limit_logprobs`); None: the model's own.

    Returns:
        TokenStats with N rows.

    Raises:
        LlmMiaError: on a bad stride, batch size or padding side.
    """
    n = len(sequences)
    ctx = [context_lens] * n if isinstance(context_lens, int) else list(context_lens)
    if len(ctx) != n:
        raise LlmMiaError(f"context_lens has {len(ctx)} entries for {n} sequences")
    if batch_size is not None and batch_size < 1:
        raise LlmMiaError("batch size must be >= 1")
    if padding_side not in ("right", "left"):
        raise LlmMiaError(f"padding side must be 'right' or 'left', not '{padding_side}'")
    if max_context is None:
        max_context = model_max_context(model)
    if stride is None:
        stride = max(1, max_context // 2) if max_context else 1
    if max_context is not None and not 1 <= stride <= max_context - 1:
        raise LlmMiaError(f"stride must be between 1 and max_context - 1 = {max_context - 1}, got {stride}")

    plan = _plan(sequences, ctx, max_context, stride)
    n_scored, windows = plan.n_scored, plan.windows
    width = int(n_scored.max()) if n else 0
    buf = _Buffers(values=torch.zeros(3, n, width, dtype=torch.float32),
                   token_id=torch.full((n, width), -1, dtype=torch.long),
                   top1=torch.zeros((n, width), dtype=torch.bool))

    # Longest inputs first: minimal padding in each batch and an early out-of-memory error.
    order = sorted(range(len(windows)), key=lambda k: -(windows[k].end - windows[k].start))
    opts = _run_options(model, pad_id=pad_id, padding_side=padding_side, moments=moments,
                        max_rows_per_chunk=max_rows_per_chunk, logprob_transform=logprob_transform)
    done = _InputsDone(windows, n, progress)  # progress counts inputs, not windows
    for batch in _batches([windows[k] for k in order], batch_size, opts.device):
        _score_batch(model, batch, sequences, plan.context, opts, buf)  # the batch's activations freed on return
        done(batch)
    out = buf.values
    mask = torch.arange(width)[None, :] < n_scored[:, None]
    return TokenStats(token_logprob=out[0], mean_logprob=out[1], std_logprob=out[2], mask=mask, token_id=buf.token_id,
                      token_is_top1=buf.top1, n_scored=n_scored, truncated=plan.truncated)


def _run_options(model: torch.nn.Module, *, max_rows_per_chunk: int | None, **kw) -> _RunOptions:
    """The :class:`_RunOptions` of ``model`` (its device, head split and block sizes) and ``kw``."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if max_rows_per_chunk is None:  # measured (docs/benchmarks.md, roofline.py): GEMM-sized blocks
        max_rows_per_chunk = HEAD_BLOCK_ROWS if device.type == "cpu" else 4096
    return _RunOptions(device=device, split=_body_and_head(model), max_rows_per_chunk=max_rows_per_chunk,
                       vocab_block=HEAD_VOCAB_BLOCK if device.type == "cpu" else 16384, **kw)


class _InputsDone:
    """``progress`` told how many inputs finished: an input counts when its last window is scored, and
    inputs with nothing to score count at once (field case B4-15: windows were counted)."""

    def __init__(self, windows: list, n: int, progress: Callable[[int], None] | None):
        self.left, self.progress = Counter(w.seq for w in windows), progress
        if progress is not None and n - len(self.left):
            progress(n - len(self.left))

    def __call__(self, batch: list) -> None:
        self.left.subtract(w.seq for w in batch)
        if self.progress is not None:
            self.progress(sum(self.left[s] == 0 for s in {w.seq for w in batch}))


def _plan(sequences: Sequence[Sequence[int]], ctx: list[int], max_context: int | None, stride: int) -> _Plan:
    """The windows of every sequence (:func:`_windows`), its number of scored tokens and whether it slides."""
    n = len(sequences)
    windows: list[_Window] = []
    n_scored = torch.zeros(n, dtype=torch.long)
    truncated = torch.zeros(n, dtype=torch.bool)
    for i, seq in enumerate(sequences):
        w = _windows(len(seq), ctx[i], max_context, stride)
        windows.extend(_Window(i, *x) for x in w)
        n_scored[i] = max(0, len(seq) - max(1, ctx[i]))
        truncated[i] = len(w) > 1
    return _Plan(windows=windows, n_scored=n_scored, truncated=truncated, context=ctx)


def _pad(batch: list[_Window], sequences: Sequence[Sequence[int]], pad_id: int,
         padding_side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's windows padded to one length T on the CPU.

    Returns:
        ids int64 (B, T) (``pad_id`` in padding), attention mask int64 (B, T) (1 on real tokens) and
        offs int64 (B,), the column of each row's first real token (0 with right padding).
    """
    lens = torch.tensor([w.end - w.start for w in batch])
    T = int(lens.max())
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    offs = (T - lens) if padding_side == "left" else torch.zeros_like(lens)
    for r, w in enumerate(batch):
        o = int(offs[r])
        ids[r, o:o + int(lens[r])] = torch.as_tensor(sequences[w.seq][w.start:w.end], dtype=torch.long)
        attn[r, o:o + int(lens[r])] = 1
    return ids, attn, offs


def _predictions(batch: list[_Window], offs: torch.Tensor, ctx: list[int]) -> list[torch.Tensor]:
    """Where every prediction of the batch is: position p predicts token p+1.

    Returns:
        one int64 (5, m_r) tensor per window (m_r its scored positions): batch row, column of the
        prediction, column of the target token, sequence index, column in the result.
    """
    parts = []
    for r, w in enumerate(batch):
        a = torch.arange(w.score_from, w.end)  # absolute positions scored in this window
        col = int(offs[r]) + a - w.start
        parts.append(torch.stack([torch.full_like(a, r), col - 1, col,
                                  torch.full_like(a, w.seq), a - max(1, ctx[w.seq])]))
    return parts


def _score_batch(model: torch.nn.Module, batch: list[_Window], sequences: Sequence[Sequence[int]], ctx: list[int],
                 opts: _RunOptions, buf: _Buffers) -> None:
    """Run one batch of windows through ``model`` and write the statistics of its scored tokens into ``buf``."""
    ids, attn, offs = _pad(batch, sequences, opts.pad_id, opts.padding_side)
    device, split = opts.device, opts.split
    pos = (attn.cumsum(-1) - 1).clamp_min(0)  # (B, T): 0.. for real tokens on either side
    inputs = dict(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device))
    fused = (split is not None and opts.logprob_transform is None and type(split[1]) is torch.nn.Linear
             and split[1].weight.is_floating_point())  # a quantised head subclass runs as itself
    if split is not None:  # hidden states only; the head runs on the predictions we need
        hidden = split[0](**inputs).last_hidden_state  # (B, T, d)
        predict = lambda r, c: split[1](hidden[r, c])  # noqa: E731  (m, V); called within this batch
    else:
        logits = model(**inputs).logits  # (B, T, V)
        predict = lambda r, c: logits[r, c]  # noqa: E731  (called within this batch)
    # Gather the (row, column) of every prediction we need: position p predicts token p+1.
    parts = _predictions(batch, offs, ctx)
    if not parts:
        return
    max_rows_per_chunk = opts.max_rows_per_chunk
    rows_t, cols_t, tgt_t, ds_all, dc_all = torch.cat(parts, dim=1)
    targets = ids[rows_t, tgt_t]
    rows_d, cols_d = rows_t.to(device), cols_t.to(device)
    for c0 in range(0, rows_t.shape[0], max_rows_per_chunk):
        part = slice(c0, c0 + max_rows_per_chunk)
        if fused:  # the head's GEMM and the vocabulary statistics in one blockwise pass
            tok, mu, sigma, top1 = head_stats(hidden[rows_d[part], cols_d[part]], split[1].weight, split[1].bias,
                                              targets[part].to(device), moments=opts.moments,
                                              vocab_block=opts.vocab_block)
        else:
            tok, mu, sigma, top1 = _logits_stats(predict(rows_d[part], cols_d[part]), targets[part].to(device), opts)
        ds, dc = ds_all[part], dc_all[part]
        buf.token_id[ds, dc] = targets[part].cpu()
        buf.top1[ds, dc] = top1.cpu()
        buf.values[0, ds, dc] = tok.float().cpu()
        buf.values[1, ds, dc] = mu.float().cpu()
        buf.values[2, ds, dc] = sigma.float().cpu()


def _logits_stats(sel: torch.Tensor, targets: torch.Tensor, opts: _RunOptions):
    """:func:`vocab_stats` of a block of (m, V) logits, through ``opts.logprob_transform`` when set."""
    if opts.logprob_transform is not None:  # normalised log-probs: the log-softmax in vocab_stats keeps them
        sel = opts.logprob_transform(torch.log_softmax(sel.float(), dim=-1))
    return vocab_stats(sel, targets, moments=opts.moments, chunk_rows=opts.max_rows_per_chunk)


def generation_key(ids: Sequence[int], ctx: int) -> bytes:
    """A 16-byte key of (context length, token ids): how a generation pass's log-probs are found again
    when the same sample is scored (:meth:`llm_mia.models.hf.LoadedModel.token_stats`)."""
    return hashlib.blake2b(np.asarray([ctx, *ids], dtype=np.int64).tobytes(), digest_size=16).digest()


def stats_from_arrays(sequences: Sequence[Sequence[int]], first: Sequence[int], logprob: Sequence,
                      top1: Sequence) -> TokenStats:
    """TokenStats (moments NaN) from per-sequence arrays: ``logprob[i]`` (nats, float) and ``top1[i]`` (bool)
    of the tokens at positions ``first[i]..len - 1`` of sequence i, e.g. recorded by a generation pass."""
    n = len(sequences)
    n_scored = torch.tensor([len(r) for r in logprob], dtype=torch.long)
    width = int(n_scored.max()) if n else 0
    lp = torch.zeros((n, width), dtype=torch.float32)
    t1 = torch.zeros((n, width), dtype=torch.bool)
    tid = torch.full((n, width), -1, dtype=torch.long)
    for i, (a, b) in enumerate(zip(logprob, top1)):
        k = len(a)
        if k:
            lp[i, :k] = torch.as_tensor(a, dtype=torch.float32)
            t1[i, :k] = torch.as_tensor(b, dtype=torch.bool)
            tid[i, :k] = torch.as_tensor(list(sequences[i][first[i]:]), dtype=torch.long)
    mask = torch.arange(width)[None, :] < n_scored[:, None]
    nan = torch.where(mask, float("nan"), 0.0).float()
    return TokenStats(token_logprob=lp, mean_logprob=nan, std_logprob=nan.clone(), mask=mask, n_scored=n_scored,
                      truncated=torch.zeros(n, dtype=torch.bool), token_id=tid, token_is_top1=t1 & mask)


def combine_stats(n: int, parts: Sequence[tuple[Sequence[int], TokenStats]]) -> TokenStats:
    """One TokenStats of ``n`` rows from pieces: ``(rows, stats)`` puts ``stats``' row k at row ``rows[k]``.

    Every row must be covered once; a piece without ``token_id`` / ``token_is_top1`` leaves -1 / False."""
    width = max((int(s.token_logprob.shape[1]) for _, s in parts), default=0)
    vals = torch.zeros(3, n, width, dtype=torch.float32)
    tid = torch.full((n, width), -1, dtype=torch.long)
    t1 = torch.zeros((n, width), dtype=torch.bool)
    n_scored = torch.zeros(n, dtype=torch.long)
    trunc = torch.zeros(n, dtype=torch.bool)
    for rows, s in parts:
        if not len(rows):
            continue
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        w = int(s.token_logprob.shape[1])
        for f, name in enumerate(("token_logprob", "mean_logprob", "std_logprob")):
            vals[f, idx, :w] = getattr(s, name)
        if s.token_id is not None:
            tid[idx, :w] = s.token_id
        if s.token_is_top1 is not None:
            t1[idx, :w] = s.token_is_top1
        n_scored[idx], trunc[idx] = s.n_scored, s.truncated
    mask = torch.arange(width)[None, :] < n_scored[:, None]
    return TokenStats(token_logprob=vals[0], mean_logprob=vals[1], std_logprob=vals[2], mask=mask, n_scored=n_scored,
                      truncated=trunc, token_id=tid, token_is_top1=t1)
