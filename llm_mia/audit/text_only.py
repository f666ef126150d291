"""The audit of a text-only endpoint (``api=chat`` / ``api=text``): membership by text-only signals.

Such an endpoint returns generated text and no log-prob, so extraction (which ranks samples by
log-probs), exposure, discoverable memorization and the PII of extraction's samples cannot run
through it; the audit says so ("not measured", never a 0) and runs membership with the signals that
read continuations only (:data:`llm_mia.membership.signals.text_overlap.TEXT_SIGNALS`: SaMIA,
Kaneko et al. 2024 sec. 3; n-gram coverage, Hallinan et al. 2025 sec. 3): the same members and
held-out documents the log-prob audit would score (:func:`llm_mia.audit.stages.membership_sample`),
the same ROC metrics (:func:`llm_mia.membership.metrics.roc_metrics`: AUC, TPR at 0.1% / 1% / 5% FPR)
and per-document scores, so the release gate's membership limit reads them as it reads the others.
Every sampled continuation is one counted query; the plan (2 x documents x :data:`SAMPLES_PER_TEXT`)
is checked against ``--max-queries`` before the first one.
"""

from __future__ import annotations

import time

from llm_mia.audit.stages import (
    AuditDocuments,
    AuditInputs,
    AuditRecords,
    AuditReference,
    AuditTarget,
    DiscoverableStage,
    ExposureStage,
    ExtractionStage,
    MembershipStage,
    PiiStage,
    membership_sample,
    stop_clock,
)
from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.baseline import model_free_baseline
from llm_mia.membership.metrics import roc_metrics
from llm_mia.membership.signals.text_overlap import TEXT_SIGNALS
from llm_mia.membership.text_scoring import text_signal_scores
from llm_mia.models.endpoint import EndpointModel

#: Endpoint APIs that return text only (no prompt log-probs).
TEXT_ONLY_APIS = ("chat", "text")
#: Continuations sampled per document (:func:`llm_mia.models.continuations.sample_continuations`'s default).
SAMPLES_PER_TEXT = 5


def is_text_only(model) -> bool:
    """True for an endpoint whose API returns text only (:data:`TEXT_ONLY_APIS`)."""
    return isinstance(model, EndpointModel) and model.api in TEXT_ONLY_APIS


def not_measured_reason(api: str) -> str:
    """Why extraction, exposure, discoverable memorization and PII are not measured on ``api``."""
    return (f"the endpoint's api={api} returns text without log-probs (extraction ranks and verifies by "
            f"log-probs; exposure and discoverable memorization score them)")


def check_query_plan(model, n_docs: int) -> int:
    """The queries the text-only membership needs (``2 * n_docs * SAMPLES_PER_TEXT``), checked against
    the endpoint's ``max_queries`` (None: no bound) before any query.

    Raises:
        LlmMiaError: the plan exceeds what ``--max-queries`` leaves (one line).
    """
    need = 2 * n_docs * SAMPLES_PER_TEXT
    budget = getattr(model, "max_queries", None)
    if budget is not None and need > budget - model.usage.queries:
        raise LlmMiaError(f"the text-only membership needs {need} queries ({n_docs} members and as many held-out "
                          f"documents x {SAMPLES_PER_TEXT} samples) but --max-queries leaves "
                          f"{budget - model.usage.queries}: raise it or lower --membership-docs")
    return need


def text_only_membership(model, docs: AuditDocuments, inputs: AuditInputs, cfg) -> dict:
    """report.json ``membership`` from the text-only signals: ``n_members``, ``n_nonmembers``,
    ``planted_sentences_removed``, ``signals`` ({name: roc_metrics}; members = 1, higher = member),
    ``baseline`` (model-free), ``per_doc`` (``labels``, ``scores``, ``flags``), ``text_only`` (True),
    ``queries`` (made by this stage); or ``skipped`` with fewer than 2 held-out documents.

    Raises:
        LlmMiaError: the query plan exceeds ``--max-queries`` (:func:`check_query_plan`), before any query.
    """
    mem, non = membership_sample(docs.members, docs.nonmembers, inputs.secrets, cfg.membership_docs, cfg.seed)
    n = len(mem)
    if n < 2:
        return {"skipped": "fewer than 2 held-out documents"}
    check_query_plan(model, n)
    texts = [getattr(d, "scored_text", d) for d in mem + non]
    before = model.usage.queries
    vals, flags = text_signal_scores(model, texts, list(TEXT_SIGNALS), n_samples=SAMPLES_PER_TEXT, seed=cfg.seed)
    y = [1] * n + [0] * n
    signals = {}
    for sig, v in vals.items():
        try:
            signals[sig] = roc_metrics(y, v)
        except LlmMiaError as e:  # e.g. every score NaN
            signals[sig] = {"error": str(e)}
    try:
        baseline = model_free_baseline(texts[:n], texts[n:], seed=cfg.seed)
    except LlmMiaError as e:
        baseline = {"skipped": str(e), "auc": None, "warning": None}
    return {"n_members": n, "n_nonmembers": n, "planted_sentences_removed": bool(inputs.secrets),
            "signals": signals, "baseline": baseline, "text_only": True,
            "per_doc": {"labels": y, "scores": vals, "flags": flags}, "queries": model.usage.queries - before}


def text_only_records(inputs: AuditInputs, target: AuditTarget, docs: AuditDocuments, *, started: float,
                      training_record) -> AuditRecords:
    """Every stage's record for a text-only endpoint: membership measured (:func:`text_only_membership`),
    extraction, discoverable memorization and PII ``skipped`` with the reason, exposure not measured."""
    t = time.time()
    target.model.stage = "membership"
    membership = text_only_membership(target.model, docs, inputs, target.cfg)
    membership["overlap"] = docs.overlap
    why = not_measured_reason(target.model.api)
    return AuditRecords(
        inputs=inputs, target=target, docs=docs, reference=AuditReference(model=None, weights_sha256=None, excluded=None),
        extraction=ExtractionStage(report={"skipped": why}, config=target.cfg.extract, seconds=0.0),
        exposure=ExposureStage(rows=[], controls={}, measured=False, seconds=0.0),
        membership=MembershipStage(report=membership, seconds=round(time.time() - t, 1)),
        discoverable=DiscoverableStage(report={"skipped": why}, seconds=0.0),
        pii=PiiStage(report=None, seconds=0.0), clock=stop_clock(started), canaries=None,
        positive_control=None, training_record=training_record)


def mark_not_measured(report: dict, api: str) -> dict:
    """Say in ``report`` why exposure was not measured on a text-only endpoint (it read "no planted
    secrets given" otherwise, even with --secrets). Returns ``report``."""
    report["exposure"] = {"measured": False, "reason": not_measured_reason(api)}
    return report
