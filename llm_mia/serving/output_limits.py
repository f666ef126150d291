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
- ``memguard:EPS`` (``memguard`` = ``memguard:0.5``) the whole distribution with MemGuard's
  adversarial noise (Jia et al. 2019; :mod:`llm_mia.serving.memguard`): the defender's membership
  classifier is pushed toward 0.5 at every position, the top token is kept and the L1 distance
  between returned and true distribution stays within EPS in (0, 2]. Every signal is computable;
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
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.exposure.estimators import queries_to_extract
from llm_mia.membership import signals as S
from llm_mia.membership.metrics import bootstrap_auc_ci, roc_metrics
from llm_mia.membership.scoring import score
from llm_mia.models.hf import LoadedModel
from llm_mia.models.output_modes import (
    ApiMode,
    computable_signals,
    limit_logprobs,
    parse_mode,
)
from llm_mia.models.tokenizer import text_ids
from llm_mia.serving.memguard import (
    defense_training_set,
    fit_classifier,
    memguard_logprobs,
)

__all__ = ["ApiMode", "ApiView", "limit_logprobs", "parse_mode", "greedy_match_scores", "computable_signals",
           "score_under_limit", "membership_under_limits", "query_limits", "MEMBER_SHARE"]

#: Share of members among the texts a membership attacker tests, in the query count of
#: :func:`query_limits` (the balanced evaluation's 1/2).
MEMBER_SHARE = 0.5


@dataclass
class ApiView(LoadedModel):
    """A loaded model seen through an API output limit: an implementation of the model contract
    (:class:`llm_mia.models.contract.LanguageModel`) whose :meth:`token_stats` read only what the
    attacker gets, :func:`limit_logprobs` of the model's log-probs, so every signal runs on exactly
    that. Generation (label-only access) is the model's own. Build one with :meth:`of`; a
    "memguard" view carries the defender's classifier (:class:`llm_mia.serving.memguard.MemGuardClassifier`).
    """

    mode: ApiMode | None = None
    memguard: object | None = None
    seed: int = 0

    @classmethod
    def of(cls, loaded: LoadedModel, mode: ApiMode, *, memguard=None, seed: int = 0) -> ApiView:
        """``loaded`` under ``mode``. Raises LlmMiaError for "label-only" (no log-prob view) and for
        "memguard" without ``memguard`` (the classifier)."""
        if mode.kind == "label-only":
            raise LlmMiaError("label-only returns text only: no log-prob view")
        if mode.kind == "memguard" and memguard is None:
            raise LlmMiaError("memguard needs the defender's classifier")
        return cls(model=loaded.model, tokenizer=loaded.tokenizer, source=loaded.source,
                   max_context=loaded.max_context, base=loaded.base, adapter=loaded.adapter, folder=loaded.folder,
                   base_folder=loaded.base_folder, mode=mode, memguard=memguard, seed=seed)

    @property
    def logprob_transform(self):
        if self.mode.kind == "memguard":
            return lambda lp: memguard_logprobs(lp, self.memguard, epsilon=self.mode.epsilon, seed=self.seed)
        return lambda lp: limit_logprobs(lp, self.mode)


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
                      reference: LoadedModel | None = None, memguard=None, seed: int = 0) -> dict[str, list[float]]:
    """Every computable signal (higher = member) of ``texts`` under ``mode``: name -> N scores.
    ``memguard``: the defender's classifier of a "memguard" mode; ``seed`` its coins' seed."""

    if mode.kind == "label-only":
        return {"greedy_match": greedy_match_scores(target, texts)}
    view = ApiView.of(target, mode, memguard=memguard, seed=seed)

    avail = {"text", "lowercase", "moments"} | ({"reference"} if reference is not None else set())
    names = [s.name for s in S.get_signals(None, available=avail)]
    ok, _ = computable_signals(mode, names)
    res = score(view, list(texts), reference=reference, signals=ok, prepend_bos=True)
    return {sig: [r["scores"][sig] for r in res.rows] for sig in ok}


def membership_under_limits(target: LoadedModel, members: Sequence[str], nonmembers: Sequence[str], *,
                            modes: Sequence[str] = ("full", "topk:5", "rounded:2", "label-only"),
                            reference: LoadedModel | None = None, n: int = 100, seed: int = 0,
                            n_boot: int = 1000, memguard=None) -> dict:
    """Membership ROC metrics of every computable signal under each API mode.

    ``n`` members and ``n`` non-members (seeded sample) are scored under each mode. A signal
    "still works" when the lower end of its 95% bootstrap AUC interval (``n_boot`` resamples) is
    above 0.5. A "memguard" mode uses the defender's classifier ``memguard``
    (:class:`llm_mia.serving.memguard.MemGuardClassifier`, e.g. fitted on shadow models); when None it is
    fitted on the target itself, on the members and non-members left out of the evaluated sample
    (the defender's own training texts against a reference set it never trained on; none of the
    evaluated texts).

    Returns:
        {"n_members", "n_nonmembers", "modes": {mode: {"computable": [...], "not_computable":
        {signal: why}, "signals": {signal: {"auc", "auc_ci", "tpr_at_1pct_fpr", "works"}},
        "working": [...]}}}, plus "memguard": the classifier's record (weights, positions trained
        on, ``trained_on``) when a memguard mode ran.
    Raises:
        LlmMiaError: an unknown mode, fewer than 2 texts of either kind, or a memguard mode without a
            classifier and fewer than 2 left-out texts of either kind.
    """

    parsed = [parse_mode(m) for m in modes]
    rng = random.Random(seed)
    k = min(n, len(members), len(nonmembers))
    if k < 2:
        raise LlmMiaError("membership under output limits needs at least 2 members and 2 non-members")
    mi, ni = rng.sample(range(len(members)), k), rng.sample(range(len(nonmembers)), k)
    texts = [members[i] for i in mi] + [nonmembers[i] for i in ni]
    y = [1] * k + [0] * k
    record = None
    if any(m.kind == "memguard" for m in parsed):
        if memguard is None:
            seen_m, seen_n = set(mi), set(ni)
            rest_m = [t for i, t in enumerate(members) if i not in seen_m]
            rest_n = [t for i, t in enumerate(nonmembers) if i not in seen_n]
            if min(len(rest_m), len(rest_n)) < 2:
                raise LlmMiaError(f"memguard: the defender's classifier needs >= 2 members and 2 non-members outside "
                                  f"the {k} + {k} evaluated (got {len(rest_m)} + {len(rest_n)}); lower n")
            memguard = fit_classifier(*defense_training_set([(target, rest_m, rest_n)]), seed=seed)
            record = memguard.to_dict() | {"trained_on": f"the target: {len(rest_m)} members vs {len(rest_n)} "
                                                         "non-members outside the evaluation"}
        else:
            record = memguard.to_dict() | {"trained_on": "given"}
    avail = {"text", "lowercase", "moments"} | ({"reference"} if reference is not None else set())
    names = [s.name for s in S.get_signals(None, available=avail)]
    out = {"n_members": k, "n_nonmembers": k, "modes": {}}
    for mode in parsed:
        ok, why = computable_signals(mode, names)
        scores = score_under_limit(target, texts, mode, reference=reference, memguard=memguard, seed=seed)
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
    if record is not None:
        out["memguard"] = record
    return out


def query_limits(secrets: Sequence[dict], limits: dict | None, modes: Sequence[str], *,
                 min_insertions: int = 1, member_share: float = MEMBER_SHARE) -> dict:
    """Per API mode, the queries an attacker needs: to extract a secret, and per member found.

    Counting model:

    - extraction: :func:`llm_mia.exposure.estimators.queries_to_extract` of each secret inserted >=
      ``min_insertions`` times (``secrets``: report.json's secret records), with sampling for every
      mode but "label-only" (greedy answers only). Output limits and MemGuard change returned
      log-probs, never the generated text, so only label-only differs. ``fewest`` is the smallest
      count (the easiest secret); a rate limit of fewer than that many queries per attacker would
      have stopped every extraction measured (``stopping_rate_limit`` = fewest - 1; inf: none was
      extractable).
    - membership: one query per decision (one scoring request returns every position's log-probs of
      a text; label-only: one greedy generation from its prefix; the reference and shadow models
      are the attacker's own), and at the 1% FPR threshold of the mode's best signal a decision on a
      text drawn with member share ``member_share`` finds a member with probability share x TPR:
      ``queries_per_member_found = 1 / (share x TPR)`` (inf when the TPR is 0).

    ``limits`` is :func:`membership_under_limits`'s result (None: no membership columns).

    Returns:
        {mode: {"sampling", "fewest", "secret" (its id), "extractable" (secrets with a finite count),
        "gated" (secrets counted), "stopping_rate_limit", "best_signal", "tpr_at_1pct_fpr",
        "queries_per_member_found"}}.
    """

    rows = [r for r in secrets if (r.get("count") or 0) >= min_insertions]
    out = {}
    for name in modes:
        mode = parse_mode(name)
        sampling = mode.kind != "label-only"
        counts = [(queries_to_extract(r, sampling=sampling), r["id"]) for r in rows]
        finite = [c for c in counts if math.isfinite(c[0])]
        fewest, sid = min(finite) if finite else (math.inf, None)
        d = {"sampling": sampling, "fewest": fewest, "secret": sid, "extractable": len(finite), "gated": len(rows),
             "stopping_rate_limit": fewest - 1 if math.isfinite(fewest) else math.inf,
             "best_signal": None, "tpr_at_1pct_fpr": None, "queries_per_member_found": None}
        per = ((limits or {}).get("modes", {}).get(mode.name) or {}).get("signals") or {}
        tprs = {k: v["tpr_at_1pct_fpr"] for k, v in per.items() if v.get("tpr_at_1pct_fpr") is not None}
        if tprs:
            best = max(tprs, key=lambda k: (tprs[k], per[k].get("auc", 0)))
            t = float(tprs[best])
            d.update(best_signal=best, tpr_at_1pct_fpr=t,
                     queries_per_member_found=1.0 / (member_share * t) if t > 0 else math.inf)
        out[mode.name] = d
    return out
