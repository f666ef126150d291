"""Discoverable memorization of training examples: greedy (Carlini et al. 2023) and (n, p) (Hayes et al. 2024).

Carlini et al. 2023, "Quantifying Memorization Across Neural Language Models", sec. 2: an example
is *discoverably memorized* when, prompted with its first k tokens, greedy decoding returns its next
``suffix_len`` tokens exactly (compared as token ids). We prompt with [BOS] + the first k tokens of
the document (the documents are trained EOS-separated, so BOS/EOS precedes each one).

Hayes et al. 2024, "Measuring memorization in language models via probabilistic extraction", sec. 3:
with p_suffix the probability that one sampled continuation of the prompt equals the true suffix
(here: the product of per-token probabilities under top-k = 40, T = 1 sampling, the audit's top-k
extraction strategy), the example is (n, p)-discoverable when 1 - (1 - p_suffix)^n >= p, i.e. n
independent samples return the suffix with probability at least p.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.prefix import score_shared_prefix

DEFAULT_N_GRID = (1, 10, 100, 1000, 10000)


def p_extract(log_p_suffix: float, n: int) -> float:
    """1 - (1 - p_suffix)^n from log p_suffix (nats), computed without cancellation."""
    if log_p_suffix == -math.inf:
        return 0.0
    p = math.exp(log_p_suffix)
    if p >= 1.0:
        return 1.0
    return -math.expm1(n * math.log1p(-p))


def discoverable_memorization(loaded, texts: Sequence[str], *, n_examples: int = 200, prefix_len: int = 50,
                              suffix_len: int = 50, seed: int = 0, top_k: int = 40, n: int = 100, p: float = 0.5,
                              batch_size: int = 32, n_grid: Sequence[int] = DEFAULT_N_GRID) -> dict:
    """Greedy and (n, p) discoverable memorization of a seeded sample of ``texts`` (the training examples).

    Args:
        loaded: the target :class:`~llm_mia.models.hf.LoadedModel`.
        texts: training documents; those with at least ``prefix_len + suffix_len`` tokens are eligible.
        n_examples: documents sampled (seeded by ``seed``) among the eligible ones.
        prefix_len / suffix_len: k prompt tokens and the suffix length compared (tokens).
        top_k: k of the sampling distribution of p_suffix.
        n / p: the (n, p) of the headline ``np_discoverable_rate``; ``n_grid`` gives the rate at p for more n.

    Returns:
        dict: ``n_eligible``, ``n_examples``, ``greedy_rate`` (fraction whose greedy suffix equals the
        true one), ``np_discoverable_rate``, ``np_rate_by_n`` ({n: rate}), ``median_log10_p_suffix``,
        the settings, and ``examples`` (per example: index into ``texts``, ``greedy``,
        ``log_p_suffix`` in nats, ``greedy_match_tokens`` = length of the common greedy prefix).
        With no eligible document, the rates are None and ``skipped`` says why; for an endpoint
        (:mod:`llm_mia.models.endpoint`) the (n, p) rates are None and ``np_skipped`` says why.

    Raises:
        LlmMiaError: non-positive lengths or counts, p outside (0, 1], or a prompt + suffix longer
            than the model's context.
    """

    for name, v in (("n_examples", n_examples), ("prefix_len", prefix_len), ("suffix_len", suffix_len),
                    ("top_k", top_k), ("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LlmMiaError(f"discoverable memorization: {name} must be a positive integer, got {v!r}")
    if not 0 < p <= 1:
        raise LlmMiaError(f"discoverable memorization: p must be in (0, 1], got {p!r}")
    ids, _ = loaded.encode(texts, prepend_bos=True)
    start = 1  # the BOS (prepended or the tokenizer's own) conditions; document tokens follow
    if loaded.max_context is not None and start + prefix_len + suffix_len > loaded.max_context:
        raise LlmMiaError(f"discoverable memorization: 1 + {prefix_len} + {suffix_len} tokens exceed the model's "
                          f"context of {loaded.max_context}")
    eligible = [i for i, x in enumerate(ids) if len(x) >= start + prefix_len + suffix_len]
    settings = {"prefix_len": prefix_len, "suffix_len": suffix_len, "seed": seed, "top_k": top_k, "n": n, "p": p,
                "sampling": f"top-k = {top_k}, temperature 1", "prompt": "[BOS] + the first prefix_len tokens"}
    if not eligible:
        return {"n_eligible": 0, "n_examples": 0, "greedy_rate": None, "np_discoverable_rate": None,
                "np_rate_by_n": {}, "skipped": f"no training document has {prefix_len + suffix_len} tokens",
                **settings, "examples": []}
    chosen = sorted(random.Random(seed).sample(eligible, min(n_examples, len(eligible))))
    prompts = [ids[i][:start + prefix_len] for i in chosen]
    suffixes = [ids[i][start + prefix_len:start + prefix_len + suffix_len] for i in chosen]
    examples = []
    for b0 in range(0, len(chosen), batch_size):
        gen = loaded.generate(prompts[b0:b0 + batch_size], max_new_tokens=suffix_len, greedy=True, eos_id=None)
        for k, g in enumerate(gen):
            true, got = suffixes[b0 + k], g.new_ids[:suffix_len]
            match = next((j for j, (a, b) in enumerate(zip(true, got)) if a != b), min(len(true), len(got)))
            examples.append({"index": chosen[b0 + k], "greedy": got == true, "greedy_match_tokens": match})
    greedy = {"n_eligible": len(eligible), "n_examples": len(examples),
              "greedy_rate": float(np.mean([ex["greedy"] for ex in examples])),
              "n_greedy": int(sum(ex["greedy"] for ex in examples))}
    if loaded.model is None:  # an endpoint: the top-k renormalised probability of the suffix is not returned
        return {**greedy, "np_discoverable_rate": None, "np_rate_by_n": {}, "median_log10_p_suffix": None,
                "np_skipped": "the endpoint's API returns no top-k distribution: p_suffix not computable",
                **settings, "examples": examples}
    seqs = [a + b for a, b in zip(prompts, suffixes)]
    sc = score_shared_prefix(loaded.model, seqs, [len(a) for a in prompts], batch_size=batch_size, top_k=top_k,
                             max_context=loaded.max_context)
    for r, ex in enumerate(examples):
        nt = int(sc.n_tail[r])
        ex["log_p_suffix"] = float(sc.tail_topk_logprob[r, nt - suffix_len:nt].double().sum())  # the suffix's tokens
    logs = [ex["log_p_suffix"] for ex in examples]
    by_n = {str(m): float(np.mean([p_extract(lp, m) >= p for lp in logs])) for m in sorted({*n_grid, n})}
    return {**greedy, "np_discoverable_rate": by_n[str(n)], "np_rate_by_n": by_n,
            "median_log10_p_suffix": float(np.median(np.array(logs) / math.log(10))),
            **settings, "examples": examples}
