"""Batched generation with Hugging Face ``generate``: left padding, per-sample seeds.

Sampling randomness comes from one ``torch.Generator`` per sample, seeded from
(base seed, sample index), which draws that sample's uniforms once: the same seed gives the same
samples whatever the batch size or the number of processes (only numerically different batched
forward passes could change a draw). The draw is made by :class:`PerSampleSampler`, a logits
processor that applies the temperature and top-k, picks every row's token by inverse transform in
one vectorised step, and hands ``generate`` a one-point distribution, which ``generate`` then takes
by argmax (``do_sample=False``): each token is drawn once, never a second time by HF's multinomial.
A :class:`LogprobRecorder`, first in the processor list, keeps each new token's log-probability under
the model's raw logits (before temperature and top-k), so a generated sample need not be scored again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.device import model_max_context


def sample_seed(base_seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` derived from ``base_seed`` (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class PerSampleSampler(LogitsProcessor):
    """Temperature + top-k sampling with one random stream per batch row, vectorised over the batch.

    Row r's sample seed fixes a ``torch.Generator`` that draws, once, ``n_steps`` uniforms
    u_0, u_1, ... in [0, 1) (float64). The i-th new token of row r is drawn by inverse transform:
    with p the row's top-k, temperature-scaled distribution over the vocabulary (in id order) and
    F its cumulative sum, the token is the first id v with F(v) > u_i * F(V - 1). So a row's
    sample depends only on its seed and its own logits: never on batch mates, batch size or the
    number of processes, and one step costs a few tensor operations for the whole batch (no
    per-row sampling call).

    Args:
        seeds: one seed per row of the batch.
        top_k: keep the k most likely tokens (0 = all); ties with the k-th logit are kept.
        temperature: callable ``i -> T`` for the i-th generated token (0-based), or a float.
        prompt_width: width of the (left-padded) prompt batch, to count generated tokens.
        banned_until: ``(ids, n)``: forbid these ids for the first n generated tokens (e.g. EOS).
        n_steps: how many tokens each row may generate (uniforms drawn per row).
        vocab_limit: ids >= this (padded rows of an embedding matrix wider than the tokenizer,
            which decode to nothing) get probability 0 before top-k (T3-09); None: all ids.
    """

    def __init__(self, seeds: Sequence[int], *, top_k: int, temperature: float | Callable[[int], float],
                 prompt_width: int, banned_until: tuple[Sequence[int], int] = ((), 0), n_steps: int = 1024,
                 vocab_limit: int | None = None):
        self.uniforms = torch.stack([torch.rand(n_steps, generator=torch.Generator().manual_seed(int(s)),
                                                dtype=torch.float64) for s in seeds])  # (B, n_steps)
        self.top_k = top_k
        self.temperature = temperature if callable(temperature) else (lambda i, t=float(temperature): t)
        self.prompt_width = prompt_width
        self.banned, self.banned_n = list(banned_until[0]), banned_until[1]
        self.vocab_limit = vocab_limit

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        if step >= self.uniforms.shape[1]:
            raise LlmMiaError(f"sampler asked for token {step + 1} of at most {self.uniforms.shape[1]}")
        x = self.uniforms[:, step]  # (B,) float64 in [0, 1)
        t = self.temperature(step)
        choice = self._pick_among_top_k(scores, step, t, x)
        if choice is None:
            choice = self._pick_over_vocabulary(scores, step, t, x)
        out = torch.full_like(scores, -torch.inf)  # ``scores`` itself is never written to
        out[torch.arange(out.shape[0], device=out.device), choice.to(out.device)] = 0.0
        return out

    def _banned_now(self, step: int) -> list[int]:
        return self.banned if self.banned and step < self.banned_n else []

    def _pick_over_vocabulary(self, scores, step: int, t: float, u: torch.Tensor) -> torch.Tensor:
        """The draw as defined: (B,) ids, from the full (B, V) tempered, masked, top-k-cut distribution."""
        logits = scores.float() / t  # (B, V), a new tensor
        if self.vocab_limit is not None and self.vocab_limit < logits.shape[-1]:
            logits[:, self.vocab_limit:] = -torch.inf  # padded rows: never sampled, never in the top k
        if self._banned_now(step):
            logits[:, self.banned] = -torch.inf
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1)  # (B, V)
        x = u.to(cdf.device)[:, None] * cdf[:, -1:]
        return torch.searchsorted(cdf, x, right=True)[:, 0].clamp_max(cdf.shape[-1] - 1)  # (B,)

    def _pick_among_top_k(self, scores, step: int, t: float, u: torch.Tensor) -> torch.Tensor | None:
        """The same draw computed on the k candidates only: (B,) ids, or None where it would differ.

        ``topk`` of the raw logits (the allowed ids only) gives k + 1 candidates past the banned ids;
        tempering is monotone, so the tempered top k are the same ids unless the k-th and (k+1)-th
        tempered values tie, where the definition keeps every tie: then None (the caller draws over
        the vocabulary). The k candidates, put back in id order, carry the same probabilities as the
        full distribution's non-zero entries, so the inverse transform picks the same id (up to the
        rounding of a softmax over k values instead of V, about 1e-16). No (B, V) temporary is made.
        """
        limit = scores.shape[-1] if self.vocab_limit is None else min(self.vocab_limit, scores.shape[-1])
        banned = self._banned_now(step)
        k = self.top_k
        if not k or k + len(banned) + 1 > limit:
            return None
        vals, idx = torch.topk(scores[:, :limit], k + len(banned) + 1, dim=-1)  # (B, c), descending
        vals = vals.float() / t
        if banned:
            vals = vals.masked_fill(torch.isin(idx, torch.tensor(banned, device=idx.device)), -torch.inf)
            vals, order = vals.sort(dim=-1, descending=True, stable=True)
            idx = idx.gather(1, order)
        if bool((vals[:, k] == vals[:, k - 1]).any()):
            return None
        ids, order = idx[:, :k].sort(dim=-1)  # the k candidates in id order
        cdf = torch.softmax(vals[:, :k].gather(1, order).double(), dim=-1).cumsum(-1)  # (B, k)
        x = u.to(cdf.device)[:, None] * cdf[:, -1:]
        return ids.gather(1, torch.searchsorted(cdf, x, right=True).clamp_max(k - 1))[:, 0]


class LogprobRecorder(LogitsProcessor):
    """Records log p(token) of each generated token under the model's raw logits, and whether it is top-1.

    Runs first in the processor list and returns ``scores`` unchanged. At step i it keeps the step's
    fp32 logits x (B, V); at step i + 1 (or :meth:`finish`) the token chosen at step i is known and
    log p = x[tok] - logsumexp(x), top-1 = (x[tok] == max x) are kept, as
    :func:`llm_mia.models.stats.vocab_stats` computes them in a scoring pass. Memory: one (B, V) step.
    """

    def __init__(self):
        self._x: torch.Tensor | None = None
        self.logprob: list[torch.Tensor] = []  # per step, (B,) float32, nats
        self.top1: list[torch.Tensor] = []  # per step, (B,) bool

    def _take(self, tok: torch.Tensor) -> None:
        x = self._x
        picked = x.gather(1, tok.to(x.device)[:, None])[:, 0]
        self.logprob.append((picked - torch.logsumexp(x, dim=-1)).cpu())
        self.top1.append((picked >= x.max(dim=-1).values).cpu())
        self._x = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._x is not None:
            self._take(input_ids[:, -1])
        # kept by reference, not copied: no later processor writes into ``scores`` (each makes a new tensor)
        self._x = scores.float()
        return scores

    def finish(self, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs (B, steps) and top-1 flags (B, steps) once ``last`` (B,), the final tokens, are known."""
        if self._x is not None:
            self._take(last)
        if not self.logprob:
            return torch.zeros((0, 0)), torch.zeros((0, 0), dtype=torch.bool)
        return torch.stack(self.logprob, 1), torch.stack(self.top1, 1)


class TemperatureDecay(LogitsProcessor):
    """Carlini et al. 2021 sec. 5.1.1 "decaying temperature": logits / T(i) for the i-th new token.

    T(i) falls linearly from ``start`` (10) at i = 0 to ``end`` (1) at i = ``steps`` (20) and stays at
    ``end`` after: T(i) = start + (end - start) * min(i, steps) / steps. The high temperature at the
    start lets a sample leave the model's most likely openings; the model then continues at T = 1.
    ``i`` is counted from the end of the (left-padded) prompt batch of width ``prompt_width``, so it
    is the same for every row and for any prompt length.

    Runs before :class:`PerSampleSampler` in the processor list; returns a new tensor.
    """

    def __init__(self, prompt_width: int, *, start: float = 10.0, end: float = 1.0, steps: int = 20):
        if start <= 0 or end <= 0 or steps < 1:
            raise LlmMiaError("temperature decay needs start > 0, end > 0 and steps >= 1")
        self.prompt_width, self.start, self.end, self.steps = prompt_width, float(start), float(end), int(steps)

    def temperature(self, i: int) -> float:
        """T(i) for the i-th generated token (0-based)."""
        return self.start + (self.end - self.start) * min(max(i, 0), self.steps) / self.steps

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores / self.temperature(input_ids.shape[1] - self.prompt_width)


class MaskPaddedVocab(LogitsProcessor):
    """Logits of ids >= ``vocab_limit`` (padded embedding rows the tokenizer cannot decode) set to -inf,
    for greedy and beam decoding (the sampler masks them itself, before its top-k)."""

    def __init__(self, vocab_limit: int):
        self.vocab_limit = int(vocab_limit)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.vocab_limit >= scores.shape[-1]:
            return scores
        scores = scores.clone()
        scores[:, self.vocab_limit:] = -torch.inf
        return scores


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists to (B, W) ids and attention mask; the mask comes from lengths."""
    if any(len(p) == 0 for p in prompts):
        raise LlmMiaError("every generation prompt needs at least one token (e.g. the BOS token)")
    W = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), W), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), W), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, W - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, W - len(p):] = 1
    return ids, mask


@dataclass
class Generated:
    """New tokens of one prompt: ``prompt`` and ``new_ids`` are token-id lists (pads excluded)."""

    prompt: list[int]
    new_ids: list[int]
    logprob: list[float] | None = None  # log p of each new token under the raw logits, nats (None: not recorded)
    top1: list[bool] | None = None  # whether each new token had the highest raw logit


@torch.inference_mode()
def generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
             seeds: Sequence[int] | None = None, top_k: int = 40, temperature: float | Callable[[int], float] = 1.0,
             min_new_tokens: int = 0, eos_id: int | Sequence[int] | None = None, greedy: bool = False,
             temperature_decay: tuple[float, float, int] | None = None, num_beams: int = 1,
             vocab_limit: int | None = None) -> list[Generated]:
    """Generate continuations of a batch of prompts (token ids) in one ``generate`` call.

    Args:
        prompts: B token-id lists of any lengths >= 1 (left-padded here with ``pad_id``).
        max_new_tokens: new tokens per row.
        seeds: one seed per row (required unless ``greedy``).
        top_k / temperature: sampling controls (Carlini et al. 2021 sec. 5.1 uses top-k = 40).
        eos_id: one id or several (e.g. ``</s>`` and a chat template's end-of-turn id) that end a row.
        vocab_limit: ``len(tokenizer)``: ids at or above it (padded embedding rows) are never
            generated, by sampling, greedy or beam decoding (T3-09); None: every id of the output.
        min_new_tokens: ``eos_id`` is forbidden for the first ``min_new_tokens`` NEW tokens (counted
            from the prompt's end, never including the prompt).
        greedy: argmax decoding (no seeds needed).
        temperature_decay: ``(start, end, steps)``: a :class:`TemperatureDecay` processor runs before
            the sampler (Carlini et al. 2021 use (10, 1, 20)); ``temperature`` then multiplies it.
        num_beams: with ``greedy``, beam search with this many beams (HF ``num_beams``, no sampling,
            no length penalty); the best beam of each prompt is returned. Raises LlmMiaError if < 1 or
            used with sampling.

    Returns:
        B :class:`Generated`, in prompt order; ``new_ids`` stop before the first EOS if one is emitted.
        With sampling or plain greedy decoding (no beams, no ``min_new_tokens`` on the greedy path,
        where HF masks the logits before the recorder) each carries ``logprob`` and ``top1`` of its
        new tokens (:class:`LogprobRecorder`); otherwise they are None.
    """
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise LlmMiaError(f"number of beams must be a positive int, got {num_beams!r}")
    if num_beams > 1 and not greedy:
        raise LlmMiaError("beam search is deterministic: use it with greedy=True")
    ids, mask = left_pad(prompts, pad_id)

    ctx = model_max_context(model)
    if ctx is not None and ids.shape[1] + max_new_tokens > ctx:
        raise LlmMiaError(f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the model's "
                          f"context of {ctx} tokens")
    device = next(model.parameters()).device
    W = ids.shape[1]
    eos = [] if eos_id is None else ([int(eos_id)] if isinstance(eos_id, int) else [int(e) for e in eos_id])
    eos_id = (eos[0] if len(eos) == 1 else eos) if eos else None
    recorder = LogprobRecorder()
    processors = LogitsProcessorList([recorder])
    if greedy:
        if vocab_limit is not None:
            processors.append(MaskPaddedVocab(vocab_limit))
        cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                               eos_token_id=eos_id, num_beams=num_beams, num_return_sequences=1,
                               length_penalty=0.0 if num_beams > 1 else 1.0, early_stopping=True if num_beams > 1 else False)
        if min_new_tokens and eos_id is not None:
            cfg.min_new_tokens = min_new_tokens
    else:
        if seeds is None or len(seeds) != len(prompts):
            raise LlmMiaError("sampling needs one seed per prompt")
        banned = (eos, min_new_tokens) if eos else ((), 0)
        if temperature_decay is not None:
            start, end, steps = temperature_decay
            processors.append(TemperatureDecay(W, start=start, end=end, steps=steps))
        processors.append(PerSampleSampler(seeds, top_k=top_k, temperature=temperature, prompt_width=W,
                                           n_steps=max_new_tokens, banned_until=banned, vocab_limit=vocab_limit))
        # the sampler hands a one-point distribution: argmax takes it (no second draw by multinomial)
        cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                               num_beams=1)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg,
                         logits_processor=processors)
    recorded = num_beams == 1 and not (greedy and min_new_tokens and eos_id is not None) and out.shape[1] > W
    lp, t1 = recorder.finish(out[:, -1]) if recorded else (None, None)
    return _collect(out, prompts, W, eos, lp, t1)


def _collect(out: torch.Tensor, prompts, W: int, eos: list[int], lp, t1) -> list[Generated]:
    """One :class:`Generated` per prompt from ``out`` (B, W + new): the new ids cut at the first EOS, with
    the recorded log-probs and top-1 flags (``lp``, ``t1`` (B, new) or None) of the ids kept."""
    res = []
    for i, p in enumerate(prompts):
        new = out[i, W:].tolist()
        stop = [k for k, t in enumerate(new) if t in eos]
        if stop:
            new = new[:stop[0]]
        g = Generated(prompt=list(p), new_ids=new)
        if lp is not None:
            g.logprob, g.top1 = lp[i, :len(new)].tolist(), t1[i, :len(new)].tolist()
        res.append(g)
    return res
