"""Output limits: run the membership attacks through what a restricted API would return.

Modes (``parse_mode``):

- ``full``        the whole next-token distribution (white-box log-probs): every signal;
- ``topk:K``      the K largest log-probs at each position (as the OpenAI-style ``top_logprobs``).
  The attacker fills every token outside the top K with the remaining probability mass spread
  evenly, ``log((1 - sum_topK p) / (V - K))`` -- a floor that uses nothing the API hid. Signals
  over token log-probs are computed on that view; Min-K%++ is not (it needs the mean and spread
  of log p over the whole vocabulary, which the top K do not give);
- ``rounded:D``   every probability rounded to D decimals; zeros are floored at half the rounding
  step ``0.5 * 10**-D`` and the vector renormalised (what an attacker must do to take logs). Every
  signal is computable, on the degraded values;
- ``label-only``  generated text only (greedy decoding, temperature 0). No log-prob signal is
  computable; the one membership signal is ``greedy_match``: the share of the next ``n_new``
  tokens of a text that greedy decoding reproduces from its first ``prefix`` tokens (the
  "extractable with a k-token prefix" test of Carlini et al. 2023, "Quantifying Memorization Across
  Neural Language Models", used as a score). Greedy secret extraction is label-only too, so it
  works under every mode.

The reference model of the reference signals is the attacker's own, always with full access.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from llm_mia.errors import LlmMiaError
from llm_mia.models.loading import LoadedModel

__all__ = ["ApiMode", "ApiView", "limit_logprobs", "parse_mode", "greedy_match_scores", "computable_signals",
           "score_under_limit", "membership_under_limits"]

#: Signals that read the whole distribution (mu, sigma over the vocabulary).
_NEEDS_FULL_DISTRIBUTION = {"min_k_plus_plus"}


@dataclass(frozen=True)
class ApiMode:
    """One API output limit: ``kind`` in {"full", "topk", "rounded", "label-only"}; ``k`` / ``digits``."""

    kind: str
    k: int | None = None
    digits: int | None = None

    @property
    def name(self) -> str:
        return {"topk": f"topk:{self.k}", "rounded": f"rounded:{self.digits}"}.get(self.kind, self.kind)


def parse_mode(text: str) -> ApiMode:
    """``"full"``, ``"topk:K"`` (K >= 1), ``"rounded:D"`` (0 <= D <= 12) or ``"label-only"``.

    Raises:
        LlmMiaError: any other text.
    """
    t = str(text).strip().lower()
    if t in ("full", "label-only"):
        return ApiMode(t)
    kind, _, arg = t.partition(":")
    try:
        v = int(arg)
    except ValueError:
        v = None
    if kind == "topk" and v is not None and v >= 1:
        return ApiMode("topk", k=v)
    if kind == "rounded" and v is not None and 0 <= v <= 12:
        return ApiMode("rounded", digits=v)
    raise LlmMiaError(f"unknown API mode '{text}' (full | topk:K | rounded:D | label-only)")


def limit_logprobs(logprobs: torch.Tensor, mode: ApiMode) -> torch.Tensor:
    """What an attacker can reconstruct from the API's answer, as log-probs of the same shape (..., V).

    ``logprobs`` are normalised natural-log probabilities (log-softmax output). Returns normalised
    log-probs (logsumexp 0 over the last dim) for "full", "topk" and "rounded" (see the module
    docstring for each rule). Raises LlmMiaError for "label-only" (no log-probs at all).
    """
    if mode.kind == "full":
        return logprobs
    V = logprobs.shape[-1]
    if mode.kind == "topk":
        k = min(mode.k, V)
        top, idx = logprobs.topk(k, dim=-1)  # (..., k)
        if k == V:
            return logprobs
        rest = (1.0 - top.exp().sum(-1, keepdim=True)).clamp_min(1e-30)  # (..., 1) hidden mass
        out = torch.log(rest / (V - k)).expand_as(logprobs).clone()  # (..., V)
        return out.scatter(-1, idx, top)
    if mode.kind == "rounded":
        step = 10.0 ** -mode.digits
        p = torch.round(logprobs.double().exp() / step) * step
        p = p.clamp_min(0.5 * step)
        return torch.log(p / p.sum(-1, keepdim=True)).to(logprobs.dtype)
    raise LlmMiaError(f"API mode '{mode.name}' returns no log-probs")


@dataclass
class ApiView(LoadedModel):
    """A loaded model seen through an API output limit: an implementation of the model contract
    (:class:`llm_mia.models.contract.LanguageModel`) whose :meth:`token_stats` read only what the
    attacker gets, :func:`limit_logprobs` of the model's log-probs, so every signal runs on exactly
    that. Generation (label-only access) is the model's own. Build one with :meth:`of`.
    """

    mode: ApiMode | None = None

    @classmethod
    def of(cls, loaded: LoadedModel, mode: ApiMode) -> "ApiView":
        """``loaded`` under ``mode``. Raises LlmMiaError for "label-only" (no log-prob view)."""
        if mode.kind == "label-only":
            raise LlmMiaError("label-only returns text only: no log-prob view")
        return cls(model=loaded.model, tokenizer=loaded.tokenizer, source=loaded.source,
                   max_context=loaded.max_context, base=loaded.base, adapter=loaded.adapter, folder=loaded.folder,
                   base_folder=loaded.base_folder, mode=mode)

    @property
    def logprob_transform(self):
        return lambda lp: limit_logprobs(lp, self.mode)


def computable_signals(mode: ApiMode, available: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(computable signal names, {not computable: why}) under ``mode`` among ``available``."""
    if mode.kind == "label-only":
        return ["greedy_match"], {s: "label-only: no log-probs" for s in available}
    if mode.kind == "topk":
        return ([s for s in available if s not in _NEEDS_FULL_DISTRIBUTION],
                {s: "needs mu/sigma over the whole vocabulary" for s in available if s in _NEEDS_FULL_DISTRIBUTION})
    return list(available), {}


@torch.no_grad()
def greedy_match_scores(loaded: LoadedModel, texts: Sequence[str], *, prefix: int = 32, n_new: int = 16,
                        batch_size: int = 16) -> list[float]:
    """Label-only membership score of each text: share of its next tokens reproduced by greedy decoding.

    Text i is tokenized (no special tokens); with L tokens, the prompt is its first
    ``p = min(prefix, L // 2)`` tokens and the target the next ``m = min(n_new, L - p)``; the score
    is (number of positions j < m where the greedy token equals the text's) / m, in [0, 1], higher
    = member. NaN when the text has fewer than 2 tokens. Source: Carlini et al. 2023 (extractable
    with a k-token prefix), as a graded score.
    """
    from llm_mia.models.tokenizer import text_ids

    ids = [text_ids(loaded.tokenizer, t) for t in texts]
    out = [math.nan] * len(ids)
    jobs = []
    for i, x in enumerate(ids):
        if len(x) < 2:
            continue
        p = min(prefix, len(x) // 2)
        m = min(n_new, len(x) - p)
        jobs.append((i, x[:p], x[p:p + m]))
    # group by (prompt length, m) so one generate call has one max_new_tokens and no EOS cuts mismatch
    jobs.sort(key=lambda j: (len(j[2]), len(j[1])))
    for b0 in range(0, len(jobs), batch_size):
        chunk = jobs[b0:b0 + batch_size]
        m = max(len(j[2]) for j in chunk)
        gen = loaded.generate([j[1] for j in chunk], max_new_tokens=m, greedy=True, eos_id=None)
        for (i, _, want), g in zip(chunk, gen):
            got = g.new_ids[:len(want)]
            out[i] = sum(int(a == b) for a, b in zip(got, want)) / len(want)
    return out


def score_under_limit(target: LoadedModel, texts: Sequence[str], mode: ApiMode, *,
                      reference: LoadedModel | None = None) -> dict[str, list[float]]:
    """Every computable signal (higher = member) of ``texts`` under ``mode``: name -> N scores."""
    from llm_mia.scoring import score

    if mode.kind == "label-only":
        return {"greedy_match": greedy_match_scores(target, texts)}
    view = ApiView.of(target, mode)
    from llm_mia import signals as S

    avail = {"text", "lowercase", "moments"} | ({"reference"} if reference is not None else set())
    names = [s.name for s in S.get_signals(None, available=avail)]
    ok, _ = computable_signals(mode, names)
    res = score(view, list(texts), reference=reference, signals=ok, prepend_bos=True)
    return {sig: [r["scores"][sig] for r in res.rows] for sig in ok}


def membership_under_limits(target: LoadedModel, members: Sequence[str], nonmembers: Sequence[str], *,
                            modes: Sequence[str] = ("full", "topk:5", "rounded:2", "label-only"),
                            reference: LoadedModel | None = None, n: int = 100, seed: int = 0,
                            n_boot: int = 1000) -> dict:
    """Membership ROC metrics of every computable signal under each API mode.

    ``n`` members and ``n`` non-members (seeded sample) are scored under each mode. A signal
    "still works" when the lower end of its 95% bootstrap AUC interval (``n_boot`` resamples) is
    above 0.5.

    Returns:
        {"n_members", "n_nonmembers", "modes": {mode: {"computable": [...], "not_computable":
        {signal: why}, "signals": {signal: {"auc", "auc_ci", "tpr_at_1pct_fpr", "works"}},
        "working": [...]}}}.
    Raises:
        LlmMiaError: an unknown mode, or fewer than 2 texts of either kind.
    """
    from llm_mia import signals as S
    from llm_mia.metrics import bootstrap_auc_ci, roc_metrics

    parsed = [parse_mode(m) for m in modes]
    rng = random.Random(seed)
    k = min(n, len(members), len(nonmembers))
    if k < 2:
        raise LlmMiaError("membership under output limits needs at least 2 members and 2 non-members")
    texts = rng.sample(list(members), k) + rng.sample(list(nonmembers), k)
    y = [1] * k + [0] * k
    avail = {"text", "lowercase", "moments"} | ({"reference"} if reference is not None else set())
    names = [s.name for s in S.get_signals(None, available=avail)]
    out = {"n_members": k, "n_nonmembers": k, "modes": {}}
    for mode in parsed:
        ok, why = computable_signals(mode, names)
        scores = score_under_limit(target, texts, mode, reference=reference)
        per = {}
        for sig, vals in scores.items():
            try:
                m = roc_metrics(y, vals)
                lo, hi = bootstrap_auc_ci(y, vals, seed=seed, n_boot=n_boot)
                per[sig] = {"auc": m["auc"], "auc_ci": [lo, hi], "tpr_at_1pct_fpr": m["tpr_at_fpr"]["0.01"]["tpr"],
                            "works": bool(lo > 0.5)}
            except LlmMiaError as e:
                per[sig] = {"error": str(e), "works": False}
        out["modes"][mode.name] = {"computable": ok, "not_computable": why, "signals": per,
                                   "working": [s for s, v in per.items() if v.get("works")]}
    return out
