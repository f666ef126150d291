"""Per-record membership risk: for every member, the best attack's score and a false-positive rate
calibrated for that record (Jalko et al. 2026, arXiv 2605.25819; Meeus et al. 2024, arXiv 2405.15423:
a pooled low-FPR figure says nothing about which records are at risk).

The calibrated FPR of a record with score s against reference scores r_1..r_m (scores of
non-members) is the p-value (1 + #{r_i >= s}) / (1 + m), with the +1 correction that keeps it a valid
p-value for m reference scores (Phipson and Smyth 2010). The reference scores are the record's own
OUT scores when shadow models give them (each shadow model that did not train on the record, as a
target: its score of the record), else the audit's non-members' scores (one shared reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.signals.shadow import lira_scores, lira_token_scores
from llm_mia.report.markdown import redact_text

#: The FPRs each record is flagged at (0.1% and 1%); the policy gates the 1% one.
RECORD_FPRS = (0.001, 0.01)
#: Characters of a record's text kept (redacted) in report.json.
PREVIEW_CHARS = 60


def calibrated_fpr(score: float, reference: Sequence[float] | np.ndarray) -> float:
    """(1 + #{r >= score}) / (1 + m) over the m non-NaN reference scores, in (0, 1].

    Returns:
        float; NaN where ``score`` is NaN or no reference score is usable.
    """
    r = np.asarray(reference, dtype=np.float64)
    r = r[~np.isnan(r)]
    if math.isnan(score) or r.size == 0:
        return math.nan
    return float((1 + (r >= score).sum()) / (1 + r.size))


def best_signal(signals: dict) -> str | None:
    """The signal with the highest TPR at 1% FPR (ties: higher AUC) among ``signals`` (name -> roc_metrics
    dict; entries with an error are skipped); None when none has metrics."""
    ok = {k: v for k, v in signals.items() if isinstance(v, dict) and "auc" in v and "tpr_at_fpr" in v}
    if not ok:
        return None
    key = lambda k: (io_float(ok[k]["tpr_at_fpr"]["0.01"]["tpr"]), io_float(ok[k]["auc"]))  # noqa: E731
    return max(ok, key=key)


def io_float(v) -> float:
    """A report number (float, or "NaN" string) as a float, NaN -> -inf for ordering."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return -math.inf
    return -math.inf if math.isnan(f) else f


def record_risk(member_scores: Sequence[float], nonmember_scores: Sequence[float], *,
                out_scores: np.ndarray | None = None, texts: Sequence[str] | None = None, secrets: Sequence = (),
                fprs: tuple[float, ...] = RECORD_FPRS) -> list[dict]:
    """Every member's calibrated FPR under one attack, most vulnerable first.

    Args:
        member_scores: (N,) the attack's scores of the members, higher = member.
        nonmember_scores: (M,) its scores of the non-members (the fallback reference).
        out_scores: (N, K) the record's scores by the K shadow models as targets, NaN where the model
            trained on the record (IN) or gives none; a row with no number falls back to the non-members.
        texts: the members' texts, for a redacted preview (:func:`llm_mia.report.markdown.redact_text`).
        secrets: planted secrets to redact.
        fprs: the FPRs to flag at.

    Returns:
        A list of dicts ``{"member": index, "score", "fpr", "fpr_from": "shadow_out" | "nonmembers",
        "n_reference", "flagged": {"0.001": bool, ...}, "preview"}``, sorted by fpr (ascending, NaN
        last) then score (descending). A NaN score has fpr NaN and is never flagged.

    Raises:
        LlmMiaError: ``out_scores`` not (N, K), or ``texts`` of another length.
    """
    ms = np.asarray(member_scores, dtype=np.float64)
    if out_scores is not None and (np.ndim(out_scores) != 2 or np.shape(out_scores)[0] != len(ms)):
        raise LlmMiaError(f"per-record risk needs out_scores (N, K) for N = {len(ms)} members; got {np.shape(out_scores)}")
    if texts is not None and len(texts) != len(ms):
        raise LlmMiaError(f"per-record risk: {len(texts)} texts for {len(ms)} members")
    rows = []
    for i, s in enumerate(ms):
        own = None if out_scores is None else np.asarray(out_scores[i], dtype=np.float64)
        use_own = own is not None and bool((~np.isnan(own)).any())
        ref = own if use_own else np.asarray(nonmember_scores, dtype=np.float64)
        fpr = calibrated_fpr(float(s), ref)
        row = {"member": i, "score": float(s), "fpr": fpr, "fpr_from": "shadow_out" if use_own else "nonmembers",
               "n_reference": int((~np.isnan(ref)).sum()),
               "flagged": {f"{f:g}": bool(fpr <= f) for f in fprs}}
        if texts is not None:
            row["preview"] = redact_text(texts[i][:PREVIEW_CHARS], secrets)
        rows.append(row)
    return sorted(rows, key=lambda r: (math.isnan(r["fpr"]), r["fpr"] if not math.isnan(r["fpr"]) else 0.0,
                                       -r["score"] if not math.isnan(r["score"]) else math.inf))


def records_summary(records: list[dict], signal: str | None, fprs: tuple[float, ...] = RECORD_FPRS) -> dict:
    """``{"signal", "n_records", "n_flagged": {"0.001": n, "0.01": n}}`` of :func:`record_risk`'s list."""
    return {"signal": signal, "n_records": len(records),
            "n_flagged": {f"{f:g}": sum(r["flagged"][f"{f:g}"] for r in records) for f in fprs}}


def membership_records(signals: dict, per_doc: dict, member_texts: Sequence[str], secrets: Sequence = (),
                       shadow=None) -> dict:
    """report.json's ``membership["records"]`` and ``membership["records_summary"]`` for the best signal
    (:func:`best_signal`) of an audit whose per-document scores list the members first.

    The shadow models give a record its own OUT scores for ``loss`` and the LiRA signals
    (:func:`shadow_out_scores`); the other signals are calibrated against the non-members. Returns {}
    when no signal has metrics.
    """
    sig = best_signal(signals)
    if sig is None:
        return {}
    n = len(member_texts)
    scores = np.array([float(v) for v in per_doc["scores"][sig]], dtype=np.float64)
    out = None if shadow is None else shadow_out_scores(sig, shadow)
    out = None if out is None else out[:n]
    recs = record_risk(scores[:n], scores[n:], out_scores=out, texts=list(member_texts), secrets=secrets)
    return {"records": recs, "records_summary": records_summary(recs, sig)}


#: Signals whose per-record OUT scores the shadow models give (:func:`shadow_out_scores`).
SHADOW_CALIBRATED = ("loss", "lira_online", "lira_offline", "lira_token_online", "lira_token_offline")


def shadow_out_scores(signal: str, shadow) -> np.ndarray | None:
    """(N, K): the score of each record with shadow model k as the target, NaN where k trained on it.

    ``loss``: model k's mean log p. The LiRA signals: leave-one-out (Carlini et al. 2022 sec. VI's
    protocol), model k as the target and the other K - 1 as its shadow models (pooled variances from
    those K - 1 too), so an OUT score is computed like the target's with one model fewer. None for
    the other signals (and for the per-token ones without per-token log-probs).
    """
    x_in, k_all = np.asarray(shadow.x_in, dtype=bool), shadow.x_in.shape[1]
    if signal == "loss":
        return np.where(x_in, math.nan, shadow.x_logprob)
    tok = signal.startswith("lira_token_")
    if signal not in SHADOW_CALIBRATED or (tok and shadow.x_token_logprob is None) or k_all < 2:
        return None
    x, z = (shadow.x_token_logprob, shadow.z_token_logprob) if tok else (shadow.x_logprob, shadow.z_logprob)
    fn, online = (lira_token_scores if tok else lira_scores), signal.endswith("_online")
    out = np.full(x_in.shape, math.nan)
    for k in range(k_all):
        o = [j for j in range(k_all) if j != k]
        sc = fn(x[:, k], x[:, o], x_in[:, o], online=online, variance_from=(z[:, o], shadow.z_in[:, o]))
        out[:, k] = np.where(x_in[:, k], math.nan, sc)
    return out
