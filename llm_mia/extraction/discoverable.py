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

Near-verbatim (Ippolito et al. 2023's approximate memorization; token-level normalized edit
similarity, rapidfuzz ``Levenshtein.normalized_similarity`` on token ids, 1 - distance / longer
length): ``greedy_near_rate`` is the fraction of examples whose greedy suffix has similarity >=
``near_similarity`` (default 0.9) with the true one. With ``near_samples = n_s > 0``, the
probabilistic near-verbatim risk in the framing of Cooper et al. 2026 (arXiv 2603.24917, the
(n, p)-discoverable extraction idea applied to near-verbatim matches; what is implemented here, not
the paper's own estimator, which could not be consulted): per prefix, ``n_s`` independent top-k
(T = 1) continuations are sampled, ``k`` of them are near-verbatim, ``p_near = k / n_s`` estimates
the probability that one sample is near-verbatim, with the one-sided Clopper-Pearson upper bound at
``confidence`` (``scipy.stats.beta.ppf(confidence, k + 1, n_s - k)``, 1 when k = n_s). Reported:
the mean of ``p_near`` over prefixes, the mean upper bound, and the prefixes whose ``p_near`` (and
whose upper bound) reach ``near_p``.
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


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided exact (Clopper-Pearson) upper bound on a binomial proportion from ``k`` of ``n``:
    ``beta.ppf(confidence, k + 1, n - k)``, 1.0 when ``k == n``."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(confidence, k + 1, n - k))


def _near_fields(loaded, prompts: list[list[int]], suffixes: list[list[int]], examples: list[dict], *,
                 near_similarity: float, near_samples: int, near_p: float, confidence: float, seed: int,
                 top_k: int, batch_size: int) -> dict:
    """Greedy near-verbatim rate, and with ``near_samples`` the sampled near-verbatim risk (module
    docstring); fills ``greedy_similarity`` (and ``p_near``, ``p_near_upper``) into ``examples``."""
    from rapidfuzz.distance import Levenshtein

    for ex in examples:
        ex["greedy_similarity"] = float(Levenshtein.normalized_similarity(ex.pop("_got"), ex["_true"]))
    out = {"near_similarity": near_similarity, "near_samples": near_samples, "near_p": near_p,
           "confidence": confidence,
           "greedy_near_rate": float(np.mean([ex["greedy_similarity"] >= near_similarity for ex in examples]))}
    if not near_samples or loaded.model is None:
        for ex in examples:
            ex.pop("_true")
        return {**out, "near_risk": None}
    runs = [(r, j) for r in range(len(examples)) for j in range(near_samples)]
    hits = [0] * len(examples)
    for b0 in range(0, len(runs), batch_size):
        batch = runs[b0:b0 + batch_size]
        seeds = [seed * 1_000_003 + examples[r]["index"] * 1009 + j for r, j in batch]
        gen = loaded.generate([prompts[r] for r, _ in batch], max_new_tokens=len(suffixes[0]), seeds=seeds,
                              top_k=top_k, eos_id=None)
        for (r, _), g in zip(batch, gen):
            hits[r] += Levenshtein.normalized_similarity(g.new_ids[:len(suffixes[r])], suffixes[r]) >= near_similarity
    for r, ex in enumerate(examples):
        ex.pop("_true")
        ex["p_near"] = hits[r] / near_samples
        ex["p_near_upper"] = clopper_pearson_upper(hits[r], near_samples, confidence)
    return {**out, "near_risk": {
        "mean_p_near": float(np.mean([ex["p_near"] for ex in examples])),
        "mean_p_near_upper": float(np.mean([ex["p_near_upper"] for ex in examples])),
        "n_at_least_near_p": sum(ex["p_near"] >= near_p for ex in examples),
        "n_upper_at_least_near_p": sum(ex["p_near_upper"] >= near_p for ex in examples),
        "indices_at_least_near_p": [ex["index"] for ex in examples if ex["p_near"] >= near_p]}}


def _check_args(*, confidence: float, near_samples: int, **kw) -> None:
    """One-line :class:`LlmMiaError` for an argument of :func:`discoverable_memorization` out of range:
    non-positive lengths or counts, p, near_p or near_similarity outside (0, 1], confidence outside
    (0, 1), near_samples < 0."""
    n_examples, prefix_len, suffix_len, top_k, n, batch_size = (kw[k] for k in (
        "n_examples", "prefix_len", "suffix_len", "top_k", "n", "batch_size"))
    p, near_p, near_similarity = kw["p"], kw["near_p"], kw["near_similarity"]
    for name, v in (("n_examples", n_examples), ("prefix_len", prefix_len), ("suffix_len", suffix_len),
                    ("top_k", top_k), ("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LlmMiaError(f"discoverable memorization: {name} must be a positive integer, got {v!r}")
    for name, v in (("p", p), ("near_p", near_p), ("near_similarity", near_similarity)):
        if not 0 < v <= 1:
            raise LlmMiaError(f"discoverable memorization: {name} must be in (0, 1], got {v!r}")
    if not 0 < confidence < 1 or isinstance(near_samples, bool) or not isinstance(near_samples, int) or near_samples < 0:
        raise LlmMiaError(f"discoverable memorization: need 0 < confidence < 1 and near_samples >= 0, "
                          f"got {confidence!r}, {near_samples!r}")


def discoverable_memorization(loaded, texts: Sequence[str], *, n_examples: int = 200, prefix_len: int = 50,
                              suffix_len: int = 50, seed: int = 0, top_k: int = 40, n: int = 100, p: float = 0.5,
                              batch_size: int = 32, n_grid: Sequence[int] = DEFAULT_N_GRID,
                              near_similarity: float = 0.9, near_samples: int = 0, near_p: float = 0.1,
                              confidence: float = 0.95) -> dict:
    """Greedy and (n, p) discoverable memorization of a seeded sample of ``texts`` (the training examples).

    Args:
        loaded: the target :class:`~llm_mia.models.hf.LoadedModel`.
        texts: training documents; those with at least ``prefix_len + suffix_len`` tokens are eligible.
        n_examples: documents sampled (seeded by ``seed``) among the eligible ones.
        prefix_len / suffix_len: k prompt tokens and the suffix length compared (tokens).
        top_k: k of the sampling distribution of p_suffix.
        n / p: the (n, p) of the headline ``np_discoverable_rate``; ``n_grid`` gives the rate at p for more n.
        near_similarity: token edit similarity of a near-verbatim suffix (``greedy_near_rate``).
        near_samples / near_p / confidence: sampled continuations per prefix of the near-verbatim risk
            (0: not run), the per-prefix probability flagged, and the Clopper-Pearson confidence.

    Returns:
        dict: ``n_eligible``, ``n_examples``, ``greedy_rate`` (fraction whose greedy suffix equals the
        true one), ``np_discoverable_rate``, ``np_rate_by_n`` ({n: rate}), ``median_log10_p_suffix``,
        the settings, and ``examples`` (per example: index into ``texts``, ``greedy``,
        ``log_p_suffix`` in nats, ``greedy_match_tokens`` = length of the common greedy prefix).
        With no eligible document, the rates are None and ``skipped`` says why; for an endpoint
        (:mod:`llm_mia.models.endpoint`) the (n, p) rates are None and ``np_skipped`` says why.
        Near-verbatim: ``greedy_near_rate``, per example ``greedy_similarity``, and ``near_risk``
        (None unless ``near_samples``: ``mean_p_near``, ``mean_p_near_upper``, ``n_at_least_near_p``,
        ``n_upper_at_least_near_p``, ``indices_at_least_near_p``; per example ``p_near``, ``p_near_upper``).

    Raises:
        LlmMiaError: an argument out of range (:func:`_check_args`) or prompt + suffix over the context.
    """
    _check_args(n_examples=n_examples, prefix_len=prefix_len, suffix_len=suffix_len, top_k=top_k, n=n,
                batch_size=batch_size, p=p, near_p=near_p, near_similarity=near_similarity, confidence=confidence,
                near_samples=near_samples)
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
                "greedy_near_rate": None, "near_risk": None, "np_rate_by_n": {}, "skipped": f"no training document has {prefix_len + suffix_len} tokens",
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
            examples.append({"index": chosen[b0 + k], "greedy": got == true, "greedy_match_tokens": match,
                             "_got": list(got), "_true": list(true)})
    greedy = {"n_eligible": len(eligible), "n_examples": len(examples),
              "greedy_rate": float(np.mean([ex["greedy"] for ex in examples])),
              "n_greedy": int(sum(ex["greedy"] for ex in examples)),
              **_near_fields(loaded, prompts, suffixes, examples, near_similarity=near_similarity,
                             near_samples=near_samples, near_p=near_p, confidence=confidence, seed=seed, top_k=top_k,
                             batch_size=batch_size)}
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
