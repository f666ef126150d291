"""Exposure of planted secrets (Carlini et al. 2019, "The Secret Sharer", sec. 3-4).

Log-perplexity (sec. 3) of a secret sentence s = prefix + secret + suffix is
``sum_t -log2 p(s_t | s_<t)`` over all of its tokens (tokenized together, conditioned on the model's
BOS token), in bits; it is computed identically for the secret and for every candidate, and
candidates are compared by that sum, never by a per-token mean.

Rank-based exposure against R candidates drawn from the secret's space:
``exposure = log2 |R| - log2 rank``, ``rank = 1 + #{r in R : logppl(r) <= logppl(secret)}``
(ties count against the secret; values can be negative and are not clipped).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from llm_mia.errors import LlmMiaError
from llm_mia.models.generation import generate
from llm_mia.models.loading import LoadedModel
from llm_mia.scoring import encode
from llm_mia.signals import total_nll
from llm_mia.models.stats import compute_token_stats


def rank_exposure(secret_logppl: float | np.ndarray, candidate_logppl: Sequence[float]) -> np.ndarray:
    """Rank-based exposure in bits (Carlini et al. 2019, sec. 4.1, estimated by sampling).

    Args:
        secret_logppl: scalar or array of shape (S,), log-perplexities of the secrets.
        candidate_logppl: shape (R,), log-perplexities of candidates from the same space.

    Returns:
        float64 array of shape (S,) (or 0-d): log2(R) - log2(rank), rank = 1 + #candidates with
        log-perplexity <= the secret's. Order of candidates does not matter.

    Raises:
        ValueError: if there are no candidates.
    """
    ref = np.sort(np.asarray(candidate_logppl, dtype=np.float64))
    if ref.size == 0:
        raise ValueError("rank exposure needs at least one candidate")
    s = np.asarray(secret_logppl, dtype=np.float64)
    rank = 1 + np.searchsorted(ref, s, side="right")
    return np.log2(ref.size) - np.log2(rank)


def log_perplexity_bits(loaded: LoadedModel, sentences: Sequence[str], *, batch_size: int = 64,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Carlini et al. 2019 log-perplexity of each sentence: sum of -log2 p over all its tokens.

    Each sentence is conditioned on the model's BOS id, so its first token is scored too.
    Returns float64 array of shape (N,), bits.
    """
    ids, ctx = encode(loaded, sentences, prepend_bos=True)
    st = compute_token_stats(loaded.model, ids, context_lens=ctx, batch_size=batch_size, pad_id=loaded.bos_id,
                             max_context=loaded.max_context, progress=progress)
    return total_nll(st).double().numpy() / math.log(2)


def greedy_extracted(loaded: LoadedModel, secrets: Sequence, *, batch_size: int = 32) -> list[dict]:
    """Whether greedy decoding of each secret's prefix reproduces the secret (Carlini et al. 2019 sec. 8).

    The prompt is the prefix without its trailing whitespace (a byte-level BPE writes that space as
    part of the next word); the secret counts as extracted when the decoded continuation starts with
    the trailing whitespace + secret. A prompt that would not fit the model's context together with
    its continuation keeps only its last tokens. Returns one dict per secret: ``greedy_extracted`` (bool) and
    ``greedy_completion`` (the decoded new text).
    """
    tok = loaded.tokenizer
    out = []
    for b0 in range(0, len(secrets), batch_size):
        batch = secrets[b0:b0 + batch_size]
        prompts, wants, budgets = [], [], []
        for s in batch:
            prompt = s.prefix.rstrip()
            want = s.prefix[len(prompt):] + s.secret
            p_ids, _ = encode(loaded, [prompt], prepend_bos=True)
            prompts.append(p_ids[0])
            wants.append(want)
            budgets.append(len(tok(want + s.suffix, add_special_tokens=False)["input_ids"]) + 2)
        if loaded.max_context:  # keep the end of a prompt that would not fit with its continuation
            keep = loaded.max_context - max(budgets)
            if keep < 1:
                raise LlmMiaError(f"model context of {loaded.max_context} tokens is too short for these secrets")
            prompts = [p[-keep:] for p in prompts]
        gens = generate(loaded.model, prompts, max_new_tokens=max(budgets), pad_id=loaded.bos_id, greedy=True,
                        eos_id=tok.eos_token_id)
        for g, want in zip(gens, wants):
            text = tok.decode(g.new_ids)
            out.append({"greedy_extracted": text.startswith(want), "greedy_completion": text})
    return out


@dataclass
class ExposureResult:
    """Per-secret exposure records (dicts, in the order of the secrets given) and the settings used."""

    rows: list[dict]
    n_candidates: int
    seed: int


def secret_exposure(loaded: LoadedModel, secrets: Sequence, *, n_candidates: int = 1000, seed: int = 0,
                    batch_size: int = 64, progress: Callable[[int], None] | None = None) -> ExposureResult:
    """Rank exposure (bits) of each secret against ``n_candidates`` random members of its space,
    plus greedy extraction of its prefix. ``progress`` is called with the number of sentences scored.

    Candidates are drawn with ``random.Random(seed * 1_000_003 + i)`` for the i-th secret, from the secret's
    ``format`` (see :mod:`llm_mia.secrets`), and placed in the same prefix and suffix.
    """
    from llm_mia.secrets import sample_candidates

    rows = []
    greedy = greedy_extracted(loaded, list(secrets), batch_size=batch_size)
    groups = []
    for i, s in enumerate(secrets):
        cands = sample_candidates(s.format, n_candidates, random.Random(seed * 1_000_003 + i))
        groups.append([s.text] + [s.prefix + c + s.suffix for c in cands])
    # one call for all secrets: length-sorted batches across secrets pad less than one call each
    lp_all = log_perplexity_bits(loaded, [x for g in groups for x in g], batch_size=batch_size, progress=progress)
    start = 0
    for i, (s, g) in enumerate(zip(secrets, groups)):
        lp = lp_all[start:start + len(g)]
        start += len(g)
        exp = float(rank_exposure(lp[0], lp[1:]))
        rows.append({"id": s.id, "kind": s.kind, "count": s.count, "format": s.format, "space_size": s.space_size,
                     "log_perplexity_bits": float(lp[0]), "exposure_rank": exp,
                     "max_exposure_rank": math.log2(n_candidates), **greedy[i]})
    return ExposureResult(rows=rows, n_candidates=n_candidates, seed=seed)
