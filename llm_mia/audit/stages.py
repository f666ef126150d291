"""The release audit's stages, in run order, each taking and returning a documented record.

:func:`llm_mia.audit.pipeline.run_audit` is the list of them: :func:`read_inputs` (files, secrets, PII
regions, canary inputs: every input error before any model runs) -> :func:`load_target` (target model,
shadow models, endpoint limits, which reference) -> :func:`render_documents` -> :func:`load_reference` ->
:func:`drop_overlap` -> :func:`run_extraction` -> :func:`run_exposure` -> :func:`run_membership` ->
:func:`run_discoverable` -> :func:`run_pii` -> :func:`stop_clock` -> :func:`run_canaries`; then
:func:`llm_mia.audit.pipeline.assemble_report` builds report.json's dict from the records
(:class:`AuditRecords`).
"""

from __future__ import annotations

import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from llm_mia.audit.twin import run_positive_control
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError, LlmMiaWarning
from llm_mia.core.io import sha256_file
from llm_mia.core.progress import bar
from llm_mia.data.chat import SCORE_SPANS, Doc, check_template, encode_docs, render_chat
from llm_mia.data.dedup import dedup
from llm_mia.data.secrets import Secret, load_secrets
from llm_mia.data.texts import TextSet, read_texts
from llm_mia.exposure.secrets import exposure_work, secret_exposure
from llm_mia.extraction.discoverable import discoverable_memorization
from llm_mia.extraction.extract import ExtractConfig, extract, read_clear
from llm_mia.extraction.pii_findings import (
    pii_findings,
    resolve_regions,
    tokenizer_normalizer,
)
from llm_mia.membership.baseline import model_free_baseline
from llm_mia.membership.metrics import roc_metrics
from llm_mia.membership.records import membership_records
from llm_mia.membership.scoring import reference_warning, score
from llm_mia.membership.shadow import ShadowSet, check_tokenizer, load_shadows, recipe_mismatch, shadow_summary
from llm_mia.models.endpoint import EndpointModel
from llm_mia.models.loading import load_model
from llm_mia.privacy.canary_audit import CanaryAuditInputs, prepare_canary_audit, run_canary_audit


@dataclass
class AuditConfig:
    """Every knob of an audit run and its default (:func:`llm_mia.audit.pipeline.run_audit`).

    Extraction (Carlini et al. 2021): ``num_samples`` generated per strategy of ``strategies``, ``top_n``
    kept per ranking, a sample is memorized with a verbatim training span of ``memorized_min_tokens``
    tokens. Exposure (Carlini et al. 2019): ``n_candidates`` random references per secret for the rank
    exposure, whole-space enumeration up to ``exact_limit`` candidates, ``beams`` for beam extraction.
    Membership: ``membership_docs`` held-out documents and up to ``member_ratio`` times as many members. Discoverable memorization
    (Carlini et al. 2023): ``discoverable_samples`` training examples, prompts of ``discoverable_prefix``
    tokens, suffixes of ``discoverable_suffix`` tokens. Near-verbatim (Ippolito et al. 2023): a sample or
    greedy suffix with token edit similarity >= ``near_similarity`` over ``near_window`` tokens counts as
    near-memorized (``report.json["extraction"]["near_memorized_total"]``, ``discoverable.greedy_near_rate``);
    ``near_samples`` > 0 adds the sampled near-verbatim risk per discoverable prefix
    (``discoverable.near_risk``). The extraction options are validated when the
    config is made (:class:`~llm_mia.extraction.extract.ExtractConfig`), raising a one-line
    :class:`~llm_mia.core.errors.LlmMiaError`.
    """

    num_samples: int = 500  # per extraction strategy
    strategies: tuple[str, ...] = ("top-k", "temperature-decay", "internet")
    prompt_source: str | None = None  # internet prompts; None: the corpus's heldout.jsonl (never trained on)
    # Random candidates per secret for rank exposure. Measured: `llm-mia exposure --references 4000` on the
    # demo's model and 28 secrets took 262 s on the shared 2-core CPU (112 k sentences, ~430/s), so the
    # audit uses 2,000 (~2 min; the old whole-sentence path took 159 s for 1,000). 10,000 would take ~11 min.
    n_candidates: int = 2000
    # Spaces up to this size are enumerated whole for the exact exposure. A space of 10**6 (the {d6}
    # canaries) costs ~13 min per secret on that CPU, so the audit stops at 10**5; `llm-mia exposure
    # --exact-limit` goes higher.
    exact_limit: int = 100_000
    beams: int = 5
    membership_docs: int = 200  # held-out documents scored for the ROC (at most), and as many members times member_ratio
    # Members per held-out document, at most: the TPR bound's member part tightens with members, which a
    # training set has plenty of (at chance on 194 non-members, P(upper bound of TPR at 1% FPR > 0.1) per
    # signal falls from 6.7% with 194 members to 1.0% with 500; llm_mia.membership.metrics.tpr_at_fpr_upper).
    member_ratio: int = 4
    top_n: int = 100
    seed: int = 0
    batch_size: int = 64
    max_new_tokens: int | None = None
    memorized_min_tokens: int = 50
    # Discoverable memorization (llm_mia.extraction.discoverable): training examples sampled (0 = off), prompt and suffix tokens
    discoverable_samples: int = 200
    discoverable_prefix: int = 50
    discoverable_suffix: int = 50
    # Near-verbatim (Ippolito et al. 2023): token edit similarity of a near-memorized sample (extraction) or
    # greedy suffix (discoverable), over near_window tokens; near_samples: sampled continuations per discoverable
    # prefix of the near-verbatim risk (llm_mia.extraction.discoverable; 0 = off)
    near_similarity: float = 0.9
    near_window: int = 50
    near_samples: int = 0
    score_spans: str = "assistant"  # chat rows: score the assistant turns only, or "all" tokens
    show_secrets: bool = False
    progress: bool = True
    pii_regions: tuple[str, ...] | None = None  # phone regions; None: the corpus's locales + llm_mia.data.pii.DEFAULT_REGIONS
    max_queries: int | None = None  # an openai: endpoint's API calls (llm_mia.models.endpoint); None: no bound
    # Positive control (llm_mia.audit.twin): a twin made to memorize the secrets inserted >= control_insertions
    # times, run through the same extraction; positive_control_model: a given model instead; False: skipped.
    positive_control: bool = True
    positive_control_model: str | None = None
    control_insertions: int = 16
    extract: ExtractConfig = field(default=None)  # filled from the fields above

    def __post_init__(self) -> None:
        """Check the extraction options now, before any folder or model (one-line LlmMiaError)."""
        self.extract = ExtractConfig(num_samples=self.num_samples, strategies=tuple(self.strategies), seed=self.seed,
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, top_n=self.top_n,
                                     memorized_min_tokens=self.memorized_min_tokens, show_secrets=self.show_secrets,
                                     near_similarity=self.near_similarity, near_window=self.near_window)
        if isinstance(self.near_samples, bool) or not isinstance(self.near_samples, int) or self.near_samples < 0:
            raise LlmMiaError(f"near_samples must be an integer >= 0, got {self.near_samples!r}")


@dataclass
class AuditInputs:
    """The audit's data, read and checked before any model loads (:func:`read_inputs`).

    Attributes:
        corpus_dir: the ``--corpus`` folder as given, or None (``--members`` / ``--nonmembers`` files).
        members_spec: the members file (a corpus's train.jsonl) or ``hf:NAME[:CONFIG]:SPLIT``.
        nonmembers_spec: the non-members file (a corpus's heldout.jsonl) or ``hf:`` spec.
        secrets_path: secrets.json of the planted secrets (a corpus's own by default), or None.
        text_column: the column the texts are read from.
        members: the member rows (:class:`llm_mia.data.texts.TextSet`; chat rows not rendered yet).
        nonmembers: the non-member rows, likewise.
        secrets: the planted secrets and controls of ``secrets_path`` (empty without one).
        regions: the phone regions of the PII detectors (:func:`llm_mia.extraction.pii_findings.resolve_regions`).
        canaries: the checked canary-audit inputs (``--canaries`` / ``--inclusion``), or None.
    """

    corpus_dir: str | Path | None
    members_spec: str
    nonmembers_spec: str
    secrets_path: str | Path | None
    text_column: str
    members: TextSet
    nonmembers: TextSet
    secrets: list[Secret]
    regions: tuple[str, ...]
    canaries: CanaryAuditInputs | None


@dataclass
class AuditTarget:
    """The audited model and what was settled with it before any scoring (:func:`load_target`).

    Attributes:
        model: the target (a :class:`llm_mia.models.hf.LoadedModel`, a vLLM engine or an
            :class:`llm_mia.models.endpoint.EndpointModel`).
        model_args: the ``--model-args`` string it was loaded with, or None.
        cfg: the settings the audit runs with: the caller's, less temperature decay for an endpoint.
        left_out: what an endpoint cannot run (one sentence each; empty for a local model).
        shadow: the shadow models (``--shadow``), or None.
        reference_spec: the reference model to load (:func:`resolve_reference`), or None.
        reference_source: where it came from ("adapter's base", "--reference"), or None.
        chat: True when member or non-member rows are chat conversations.
        serve: (name, ``f(target) -> LanguageModel``) of a serving-time defence membership is scored
            through, or None.
    """

    model: object
    model_args: str | None
    cfg: AuditConfig
    left_out: list[str]
    shadow: ShadowSet | None
    reference_spec: str | None
    reference_source: str | None
    chat: bool
    serve: tuple | None = None


@dataclass
class AuditDocuments:
    """The documents the stages read (:func:`render_documents`, :func:`drop_overlap`).

    Attributes:
        members: the member rows as :class:`llm_mia.data.chat.Doc` (chat rows rendered with the
            tokenizer's template, scored spans per ``cfg.score_spans``), file order.
        nonmembers: the non-member rows likewise; after :func:`drop_overlap` without those that
            duplicate a member.
        train: the members' rendered texts: what extraction verification, exposure and discoverable
            memorization search.
        overlap: report.json's ``membership.overlap`` (:func:`drop_overlap`): ``n_nonmembers``,
            ``n_overlapping``, ``exact``, ``near``, ``rule``; None before it ran.
    """

    members: list[Doc]
    nonmembers: list[Doc]
    train: list[str]
    overlap: dict | None = None


@dataclass
class AuditReference:
    """The reference model (:func:`load_reference`).

    Attributes:
        model: the loaded reference the rankings, membership and canary audit read; None without
            one or when it is the target itself (its signals would be constant).
        weights_sha256: the loaded reference's weights digest (also when it was left out), or None.
        excluded: the warning when the reference is the target (report.json
            ``provenance.reference_excluded``), else None.
    """

    model: object | None
    weights_sha256: str | None
    excluded: str | None


@dataclass
class ExtractionStage:
    """Training-data extraction (:func:`run_extraction`, Carlini et al. 2021).

    Attributes:
        report: :func:`llm_mia.extraction.extract.extract`'s dict (report.json ``extraction``:
            ``rankings``, ``memorized_total``, ``secrets_surfaced``, ...).
        config: the :class:`llm_mia.extraction.extract.ExtractConfig` it ran with (the PII stage
            reads its ``pii_presidio``).
        seconds: wall time, rounded to 0.1 s (``timings.extract_s``).
    """

    report: dict
    config: ExtractConfig
    seconds: float


@dataclass
class ExposureStage:
    """Canary exposure of the planted secrets (:func:`run_exposure`, Carlini et al. 2019).

    Attributes:
        rows: one dict per secret, in secrets.json order (report.json ``secrets``), each with
            ``surfaced_in_samples`` (1 when extraction's samples held it); empty without secrets.
        controls: the never-inserted controls' summary (report.json ``exposure_controls``); {}
            without secrets.
        measured: True when secrets were given.
        seconds: wall time, rounded to 0.1 s (``timings.exposure_s``).
    """

    rows: list[dict]
    controls: dict
    measured: bool
    seconds: float


@dataclass
class MembershipStage:
    """Membership inference, members against held-out non-members (:func:`run_membership`).

    Attributes:
        report: report.json ``membership``: ``n_members``, ``n_nonmembers``, ``signals`` (ROC
            metrics per signal), ``baseline``, ``per_doc``, ``overlap``, and ``shadow`` /
            ``reference_excluded`` when they apply; or ``skipped`` and ``overlap``.
        seconds: wall time, rounded to 0.1 s (``timings.membership_s``).
    """

    report: dict
    seconds: float


@dataclass
class DiscoverableStage:
    """Discoverable memorization of training examples (:func:`run_discoverable`, Carlini et al. 2023).

    Attributes:
        report: report.json ``discoverable``
            (:func:`llm_mia.extraction.discoverable.discoverable_memorization`'s dict, or ``skipped``).
        seconds: wall time, rounded to 0.1 s (``timings.discoverable_s``).
    """

    report: dict
    seconds: float


@dataclass
class PiiStage:
    """PII in the extraction samples (:func:`run_pii`).

    Attributes:
        report: report.json ``pii`` (:func:`llm_mia.extraction.pii_findings.pii_findings`'s dict).
        seconds: wall time, rounded to 0.1 s (``timings.pii_s``).
    """

    report: dict
    seconds: float


@dataclass(frozen=True)
class RunClock:
    """The end of the measured stages (:func:`stop_clock`); the canary audit and the report come after.

    Attributes:
        total_s: seconds from the start of the audit to the end of the PII stage, rounded to 0.1 s.
        created: the UTC time then, ``YYYY-MM-DDTHH:MM:SSZ`` (report.json ``created``).
    """

    total_s: float
    created: str


@dataclass
class AuditRecords:
    """Every stage's record, in run order: what :func:`llm_mia.audit.pipeline.assemble_report` builds
    report.json from.

    Attributes:
        inputs / target / docs / reference: the records of the set-up stages.
        extraction / exposure / membership / discoverable / pii: the measured stages.
        clock: when the measured stages ended.
        canaries: the canary audit's dict (report.json ``canaries``), or None when none was asked for.
        positive_control: report.json ``positive_control`` (:class:`llm_mia.audit.twin.PositiveControl`), or None.
        training_record: report.json ``provenance.training_record`` (:func:`check_training_record`), or None.
    """

    inputs: AuditInputs
    target: AuditTarget
    docs: AuditDocuments
    reference: AuditReference
    extraction: ExtractionStage
    exposure: ExposureStage
    membership: MembershipStage
    discoverable: DiscoverableStage
    pii: PiiStage
    clock: RunClock
    canaries: dict | None = None
    positive_control: dict | None = None
    training_record: dict | None = None


def strip_planted(text: str, secrets) -> str:
    """``text`` without the sentences of inserted secrets (and the separator each insertion added).

    The membership audit scores member documents as they were before planting: otherwise the
    planted sentences (random digits, Faker records) alone tell members from held-out documents,
    and the model-free baseline would rightly flag every demo corpus.
    """
    for sec in sorted((x for x in secrets if x.count > 0), key=lambda x: -len(x.text)):
        t = sec.text
        if t in text:
            text = text.replace(t + "\n\n", "").replace(t + " ", "").replace("\n\n" + t, "").replace(t, "")
    return text


def membership_sample(members, heldout, secrets, n: int, seed: int, member_ratio: int = 1) -> tuple[list, list]:
    """The membership evaluation's documents: ``k = min(n, len(members), len(heldout))`` held-out
    documents and ``min(len(members), member_ratio * k)`` members (planted sentences removed from plain
    documents, :func:`strip_planted`), sampled with ``random.Random(seed)``; str or
    :class:`llm_mia.data.chat.Doc` items, returned as given. The audit (``member_ratio`` 4: members are
    usually plentiful, non-members not) and the comparison of defences (1) score exactly these."""

    rng = random.Random(seed)
    k = min(n, len(members), len(heldout))
    if k < 2:
        return [], []
    if member_ratio < 1:
        raise LlmMiaError(f"member_ratio must be >= 1, got {member_ratio}")
    k_mem = min(len(members), member_ratio * k)

    def strip(d):
        if isinstance(d, str):
            return strip_planted(d, secrets)
        return Doc(strip_planted(d.text, secrets)) if d.spans is None else d

    return [strip(t) for t in rng.sample(list(members), k_mem)], rng.sample(list(heldout), k)


def _membership(target, reference, members, heldout, cfg: AuditConfig, secrets=(), shadow=None) -> dict:
    """ROC metrics of every signal, members (1) against held-out non-members (0), and the
    model-free baseline. ``members`` / ``heldout`` are :class:`llm_mia.data.chat.Doc` (or str); planted
    secret sentences are removed from plain members first (:func:`strip_planted`); documents with
    spans (chat rows) are scored on those tokens only (``scoring.score(score_mask=)``)."""

    as_doc = lambda d: d if isinstance(d, Doc) else Doc(d)  # noqa: E731
    mem, non = membership_sample(members, heldout, secrets, cfg.membership_docs, cfg.seed, cfg.member_ratio)
    n = len(mem)
    if n < 2:
        return {"skipped": "fewer than 2 held-out documents"}
    docs = [as_doc(d) for d in mem + non]
    texts = [d.scored_text for d in docs]
    if any(d.spans is not None for d in docs):
        ids, keep = encode_docs(target, docs, prepend_bos=True)
        res = score(target, texts, ids=ids, context_lens=1, score_mask=keep, reference=reference, shadow=shadow)
    else:
        res = score(target, texts, reference=reference, prepend_bos=True, shadow=shadow)
    y = [1] * n + [0] * len(non)
    out = {}
    for sig in res.rows[0]["scores"]:
        try:
            out[sig] = roc_metrics(y, [r["scores"][sig] for r in res.rows])
        except LlmMiaError as e:
            out[sig] = {"error": str(e)}
    per_doc = {"labels": y, "n_scored_tokens": [r["n_scored_tokens"] for r in res.rows],
               "scores": {sig: [r["scores"][sig] for r in res.rows] for sig in out}}
    extra = {}
    if shadow is not None:
        extra["shadow"] = shadow_summary(shadow, res.inputs.shadow)
    extra.update(membership_records(out, per_doc, texts[:n], secrets, res.inputs.shadow if shadow else None))
    return {"n_members": n, "n_nonmembers": len(non), "planted_sentences_removed": bool(secrets), "signals": out,
            "baseline": _baseline(texts[:n], texts[n:], cfg.seed), "per_doc": per_doc, **extra}


def overlap(members: list[str], nonmembers: list[str]) -> dict[int, str]:
    """Non-members that are exact or near duplicates of a member, by :func:`llm_mia.data.dedup.dedup`'s
    rules (normalised text; >= 50 % word-trigram containment; differing PII values never merge).

    Returns:
        {index into ``nonmembers``: "exact" | "near"}.
    """

    res = dedup(list(members) + list(nonmembers))
    n = len(members)
    return {i - n: res.reason[i] for i, k in res.dropped.items() if i >= n and k < n}


def reference_saw_nonmembers(reference_path: str | Path | None, nonmembers: str | Path) -> bool:
    """True when the reference model was trained on the non-members file (``nonmembers``; a corpus
    folder stands for its ``heldout.jsonl``), the file the membership evaluation draws its non-members from (its ``recipe.json`` ``train_sha256`` equals
    the file's SHA-256; ``llm-mia train --reference`` and the demo train it there). Its signals
    (``reference``, ``reference_diff``) would then separate members from non-members by the
    reference's own memorization of the non-members, whatever the target leaks, so the membership
    evaluation leaves them out. False without a reference or a recipe."""
    if reference_path is None:
        return False
    recipe = Path(reference_path) / "recipe.json"
    if not recipe.is_file():
        return False
    try:
        sha = io.read_json(recipe).get("train_sha256")
    except (LlmMiaError, AttributeError):
        return False
    path = Path(nonmembers) / "heldout.jsonl" if Path(nonmembers).is_dir() else Path(nonmembers)
    return sha is not None and path.is_file() and sha == sha256_file(path)


#: Why the reference signals are missing from a membership evaluation (see reference_saw_nonmembers).
REFERENCE_EXCLUDED = ("the reference model was trained on the held-out documents used as non-members: "
                      "its signals would measure its own memorization of them, not the target's leakage")


def _baseline(members: list[str], nonmembers: list[str], seed: int) -> dict:
    """The model-free baseline (:func:`llm_mia.membership.baseline.model_free_baseline`), or why it was skipped."""

    try:
        return model_free_baseline(members, nonmembers, seed=seed)
    except LlmMiaError as e:
        return {"skipped": str(e), "auc": None, "warning": None}


def resolve_reference(target, reference: str | Path | None) -> tuple[str | None, str | None]:
    """(reference model to load, where it came from) for ``--reference R|base|none``.

    None (the default) is "base" when ``target`` (a LoadedModel) is a PEFT adapter and "none"
    otherwise; "base" is the adapter's base model (``target.base``: "adapter's base"); "none"
    disables the reference; anything else is the user's model ("--reference"). Raises
    LlmMiaError for "base" with a model that is not an adapter.
    """
    ref = None if reference is None else str(reference)
    base = target.base
    if ref is None:
        ref = "base" if base is not None else "none"
    if ref == "none":
        return None, None
    if ref == "base":
        if base is None:
            raise LlmMiaError(f"--reference base: '{target.source}' is not a PEFT adapter (no adapter_config.json); "
                              "name the reference model or use --reference none")
        return base, "adapter's base"
    return ref, "--reference"


def _inputs(corpus_dir, members, nonmembers, secrets_path):
    """(members, non-members, secrets or None) from ``--corpus`` or the three files."""
    if corpus_dir is not None:
        if members is not None or nonmembers is not None:
            raise LlmMiaError("give either --corpus or --members/--nonmembers, not both")
        corpus = Path(corpus_dir)
        for name in ("train.jsonl", "heldout.jsonl", "secrets.json"):
            if not (corpus / name).exists():
                raise LlmMiaError(f"corpus folder {corpus} has no {name} (build one with `llm-mia corpus build`)")
        return str(corpus / "train.jsonl"), str(corpus / "heldout.jsonl"), secrets_path or corpus / "secrets.json"
    if members is None or nonmembers is None:
        raise LlmMiaError("an audit needs --members and --nonmembers files (or a --corpus folder)")
    m, n = Path(str(members)), Path(str(nonmembers))
    if m.exists() and n.exists() and os.path.samefile(m, n):
        raise LlmMiaError(f"--members and --nonmembers are the same file ({members}): membership needs held-out examples")
    return str(members), str(nonmembers), secrets_path


def _endpoint_setup(target, cfg: AuditConfig) -> tuple[AuditConfig, list[str]]:
    """For an endpoint target: bound its queries; an API without prompt log-probs (chat, text) runs
    the text-only audit (:mod:`llm_mia.audit.text_only`), every other stage left out; else leave out
    temperature decay (no API sets a per-token temperature). Returns (settings, what was left out)."""

    if not isinstance(target, EndpointModel):
        if cfg.max_queries is not None:
            raise LlmMiaError("--max-queries bounds the queries to an openai:URL endpoint; this model is local")
        return cfg, []
    target.max_queries = cfg.max_queries
    if target.api != "completions":  # text only: membership by the text-only signals (llm_mia.audit.text_only)
        return cfg, [f"extraction, exposure, discoverable memorization and PII (api={target.api} returns no "
                     f"log-probs); membership runs the text-only signals samia and ngram_coverage"]
    left_out = []
    if "temperature-decay" in cfg.strategies:
        left_out.append("extraction strategy temperature-decay (an HTTP API has no per-token temperature)")
        cfg = replace(cfg, strategies=tuple(s for s in cfg.strategies if s != "temperature-decay"))
        if not cfg.strategies:
            raise LlmMiaError("temperature-decay cannot run through an HTTP API: choose --strategy top-k or internet")
    return cfg, left_out


def _stage(target, name: str) -> None:
    """Name the audit stage an endpoint's queries are counted under."""
    if isinstance(target, EndpointModel):
        target.stage = name


def _render(tokenizer, ts: TextSet, score_spans: str) -> list[Doc]:
    """``ts``'s rows as :class:`llm_mia.data.chat.Doc`: chat rows rendered with the tokenizer's template."""
    return [render_chat(tokenizer, c, score_spans=score_spans) if c is not None else Doc(t)
            for t, c in zip(ts.texts, ts.chats or [None] * len(ts.texts))]


def read_inputs(corpus_dir: str | Path | None, members: str | Path | None, nonmembers: str | Path | None,
                secrets_path: str | Path | None, *, text_column: str, cfg: AuditConfig,
                canaries: tuple[str | Path, str | Path] | None, model_path: str | Path | None,
                has_reference: bool) -> AuditInputs:
    """Stage 1: read and check the audit's data, before any model loads.

    Args:
        corpus_dir: a corpus folder (train.jsonl, heldout.jsonl, secrets.json) or None.
        members / nonmembers: the members and non-members files (or ``hf:`` specs); None with ``corpus_dir``.
        secrets_path: secrets.json (default with ``corpus_dir``: its own), or None.
        text_column: the column holding the texts.
        cfg: the settings (``score_spans``, ``pii_regions`` are checked here).
        canaries: (canaries.jsonl, inclusion.json) of ``llm-mia canaries plant``, or None.
        model_path: the audited model's folder (the canary inputs are checked against it).
        has_reference: whether a reference was asked for (``--reference``).

    Returns:
        The :class:`AuditInputs`.

    Raises:
        LlmMiaError: a bad ``score_spans``, ``--corpus`` with member files, a corpus folder without its
            files, missing or identical member files, unreadable files or columns, a file with no
            documents, corrupt secrets.json, a bad PII region or canary input.
    """
    if cfg.score_spans not in SCORE_SPANS:
        raise LlmMiaError(f"--score-spans must be one of {', '.join(SCORE_SPANS)}, got {cfg.score_spans!r}")
    mem_spec, non_spec, secrets_path = _inputs(corpus_dir, members, nonmembers, secrets_path)
    mem_set = read_texts(mem_spec, text_field=text_column, label_field=None, allow_chat=True)
    non_set = read_texts(non_spec, text_field=text_column, label_field=None, allow_chat=True)
    secrets = load_secrets(secrets_path) if secrets_path is not None else []
    for spec, ts in ((mem_spec, mem_set), (non_spec if nonmembers is not None else None, non_set)):
        if spec is not None and not ts.texts:
            raise LlmMiaError(f"{spec} holds no documents")
    regions = resolve_regions(cfg.pii_regions, corpus_dir)  # (a bad region fails before any model work)
    can = prepare_canary_audit(*canaries, model_path=model_path, has_reference=has_reference) if canaries else None
    return AuditInputs(corpus_dir=corpus_dir, members_spec=mem_spec, nonmembers_spec=non_spec,
                       secrets_path=secrets_path, text_column=text_column, members=mem_set, nonmembers=non_set,
                       secrets=secrets, regions=regions, canaries=can)


def load_target(inputs: AuditInputs, model_path: str | Path | None, *, model_args: str | None, engine: str,
                reference_path: str | Path | None, shadow_dir: str | Path | None, serve: tuple | None,
                cfg: AuditConfig) -> AuditTarget:
    """Stage 2: load the target (and the shadow models) and settle what it allows, before any scoring.

    Args:
        inputs: stage 1's record (whether rows are chat conversations).
        model_path: the model folder, adapter or hub id (None when ``model_args`` names it).
        model_args: ``--model-args`` (e.g. an endpoint's tokenizer), or None.
        engine: "hf" or "vllm".
        reference_path: a model, "base", "none" or None (:func:`resolve_reference`).
        shadow_dir: a ``llm-mia shadow train`` folder, or None.
        serve: (name, ``f(target) -> LanguageModel``) of a serving-time defence, or None.
        cfg: the settings asked for.

    Returns:
        The :class:`AuditTarget`.

    Raises:
        LlmMiaError: a bad shadow folder or one trained with another tokenizer, a folder that is not a
            model, an endpoint without prompt log-probs, ``max_queries`` for a local model, "base" for a
            model that is not an adapter, chat rows with a tokenizer that has no chat template.
    """
    shadow = load_shadows(shadow_dir) if shadow_dir is not None else None
    target = load_model(str(model_path) if model_path is not None else None, model_args=model_args, engine=engine)
    if shadow is not None:
        check_tokenizer(shadow, target.tokenizer)  # before any model runs
        if (why := recipe_mismatch(shadow, getattr(target, "folder", None))) is not None:
            print(why, file=sys.stderr)
    cfg, left_out = _endpoint_setup(target, cfg)
    ref_spec, ref_source = resolve_reference(target, reference_path)
    chat = inputs.members.chats is not None or inputs.nonmembers.chats is not None
    if chat:
        check_template(target.tokenizer, target.source)  # before any model runs
    return AuditTarget(model=target, model_args=model_args, cfg=cfg, left_out=left_out, shadow=shadow,
                       reference_spec=ref_spec, reference_source=ref_source, chat=chat, serve=serve)


def render_documents(inputs: AuditInputs, target: AuditTarget) -> AuditDocuments:
    """Stage 3: the member and non-member rows as documents (chat rows through the target's template).

    Returns:
        The :class:`AuditDocuments` (``overlap`` not yet filled).
    """
    tok, spans = target.model.tokenizer, target.cfg.score_spans
    mem_docs, non_docs = _render(tok, inputs.members, spans), _render(tok, inputs.nonmembers, spans)
    return AuditDocuments(members=mem_docs, nonmembers=non_docs,
                          train=[d.text for d in mem_docs])  # rendered: what extraction verification searches


def load_reference(target: AuditTarget) -> AuditReference:
    """Stage 4: load the reference model; one that is the target is left out with a warning
    (:func:`llm_mia.membership.scoring.reference_warning`: its signals would be constant).

    Returns:
        The :class:`AuditReference`.

    Raises:
        LlmMiaError: a reference that is not a model.
    """
    reference = load_model(target.reference_spec) if target.reference_spec else None
    ref_is_target = reference_warning(target.model, reference)
    ref_sha = reference.weights_sha256 if reference is not None else None
    if ref_is_target:  # its signals would be constant: left out of the rankings and the membership
        warnings.warn(ref_is_target, LlmMiaWarning, stacklevel=3)  # (at run_audit's caller)
        reference = None
    return AuditReference(model=reference, weights_sha256=ref_sha, excluded=ref_is_target)


def drop_overlap(docs: AuditDocuments) -> AuditDocuments:
    """Stage 5: leave out of membership the non-members that duplicate a member (:func:`overlap`), with a warning.

    Returns:
        ``docs`` with those non-members removed and ``overlap`` filled.
    """
    dup = overlap(docs.train, [d.text for d in docs.nonmembers])
    overlap_info = {"n_nonmembers": len(docs.nonmembers), "n_overlapping": len(dup),
                    "exact": sum(v == "exact" for v in dup.values()), "near": sum(v == "near" for v in dup.values()),
                    "rule": "llm_mia.data.dedup: normalised exact match or >= 50% word-trigram containment"}
    non_docs = docs.nonmembers
    if dup:
        warnings.warn(f"{len(dup)} of {len(non_docs)} non-members ({overlap_info['exact']} exact, "
                      f"{overlap_info['near']} near) duplicate a member; left out of membership", LlmMiaWarning,
                      stacklevel=3)  # (at run_audit's caller)
        non_docs = [d for i, d in enumerate(non_docs) if i not in dup]
    return replace(docs, nonmembers=non_docs, overlap=overlap_info)


def run_extraction(inputs: AuditInputs, target: AuditTarget, reference: AuditReference, docs: AuditDocuments,
                   out: Path) -> ExtractionStage:
    """Stage 6: training-data extraction (Carlini et al. 2021, :func:`llm_mia.extraction.extract.extract`)
    into ``out/extract``; the prompts of the internet strategy are the non-members when they are a plain
    .txt/.jsonl file of texts (never trained on), unless ``cfg.prompt_source`` names others.

    Returns:
        The :class:`ExtractionStage`.
    """
    t = time.time()
    cfg, non_spec = target.cfg, inputs.nonmembers_spec
    plain_prompts = inputs.nonmembers.chats is None and Path(non_spec).suffix.lower() in (".txt", ".jsonl") \
        and not non_spec.startswith("hf:") and inputs.text_column == "text"
    ecfg = ExtractConfig(num_samples=cfg.num_samples, strategies=tuple(cfg.strategies), seed=cfg.seed,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, score_batch_size=None,
                         top_n=cfg.top_n, memorized_min_tokens=cfg.memorized_min_tokens, progress=cfg.progress,
                         prompt_source=cfg.prompt_source or (non_spec if plain_prompts else None), resume=True,
                         show_secrets=cfg.show_secrets, pii_regions=inputs.regions,
                         near_similarity=cfg.near_similarity, near_window=cfg.near_window)
    _stage(target.model, "extraction")
    ext = extract(target.model, out / "extract", reference=reference.model, train_texts=docs.train,
                  secrets=inputs.secrets, cfg=ecfg)
    return ExtractionStage(report=ext, config=ecfg, seconds=round(time.time() - t, 1))


def run_exposure(inputs: AuditInputs, target: AuditTarget, docs: AuditDocuments,
                 extraction: ExtractionStage) -> ExposureStage:
    """Stage 7: rank (and extrapolated / exact) exposure of every planted secret (Carlini et al. 2019,
    :func:`llm_mia.exposure.secrets.secret_exposure`), marked with whether extraction's samples held it.

    Returns:
        The :class:`ExposureStage` (empty rows and controls without secrets).
    """
    t = time.time()
    cfg, secrets = target.cfg, inputs.secrets
    rows, controls = [], {}
    _stage(target.model, "exposure")
    if secrets:
        with bar("exposure", exposure_work(secrets, cfg.n_candidates, cfg.exact_limit), enabled=cfg.progress) as adv:
            exp = secret_exposure(target.model, secrets, n_references=cfg.n_candidates, exact_limit=cfg.exact_limit,
                                  seed=cfg.seed, beams=cfg.beams, batch_size=cfg.batch_size, progress=adv,
                                  train_texts=docs.train)
        rows, controls = exp.rows, exp.controls
        surfaced = set(extraction.report["secrets_surfaced"])
        for r in rows:
            r["surfaced_in_samples"] = int(r["id"] in surfaced)
    return ExposureStage(rows=rows, controls=controls, measured=bool(secrets), seconds=round(time.time() - t, 1))


def run_membership(inputs: AuditInputs, target: AuditTarget, reference: AuditReference,
                   docs: AuditDocuments) -> MembershipStage:
    """Stage 8: membership inference of members against held-out non-members (:func:`_membership`),
    through the serving-time defence when there is one; the reference signals are left out when the
    reference was trained on the non-members (:func:`reference_saw_nonmembers`).

    Returns:
        The :class:`MembershipStage` (its report carries ``docs.overlap``).
    """
    t = time.time()
    _stage(target.model, "membership")
    excluded = reference_saw_nonmembers(target.reference_spec, inputs.nonmembers_spec)
    membership = _membership(target.serve[1](target.model) if target.serve else target.model,
                             None if excluded else reference.model, docs.members, docs.nonmembers, target.cfg,
                             inputs.secrets, shadow=target.shadow)
    if excluded and "signals" in membership:
        membership["reference_excluded"] = REFERENCE_EXCLUDED
    membership["overlap"] = docs.overlap
    return MembershipStage(report=membership, seconds=round(time.time() - t, 1))


def run_discoverable(target: AuditTarget, docs: AuditDocuments) -> DiscoverableStage:
    """Stage 9: discoverable memorization of ``cfg.discoverable_samples`` training examples (Carlini et al.
    2023, :func:`llm_mia.extraction.discoverable.discoverable_memorization`); skipped when 0 or when it
    cannot run (e.g. a context shorter than prompt + suffix).

    Returns:
        The :class:`DiscoverableStage`.
    """
    t = time.time()
    cfg = target.cfg
    _stage(target.model, "discoverable")
    discoverable = {"skipped": "disabled (--discoverable 0)"}
    if cfg.discoverable_samples > 0:
        try:
            discoverable = discoverable_memorization(target.model, docs.train, n_examples=cfg.discoverable_samples,
                                                     prefix_len=cfg.discoverable_prefix,
                                                     suffix_len=cfg.discoverable_suffix, seed=cfg.seed,
                                                     near_similarity=cfg.near_similarity,
                                                     near_samples=cfg.near_samples)
        except LlmMiaError as e:  # e.g. a context shorter than prompt + suffix
            discoverable = {"skipped": str(e)}
    return DiscoverableStage(report=discoverable, seconds=round(time.time() - t, 1))


def run_pii(inputs: AuditInputs, target: AuditTarget, docs: AuditDocuments, extraction: ExtractionStage,
            out: Path) -> PiiStage:
    """Stage 10: the PII in the samples extraction wrote (its clear ``out/extract`` copy), one detector
    pass (:func:`llm_mia.extraction.pii_findings.pii_findings`).

    Returns:
        The :class:`PiiStage`.
    """
    t = time.time()
    # the hits extract wrote into samples.jsonl (its clear copy): one PII pass, one detector set
    pii = pii_findings(read_clear(out / "extract", "samples.jsonl"), inputs.secrets, docs.train,
                       regions=inputs.regions, normalizer=tokenizer_normalizer(target.model.tokenizer),
                       presidio=extraction.config.pii_presidio)
    return PiiStage(report=pii, seconds=round(time.time() - t, 1))


def stop_clock(started: float) -> RunClock:
    """The end of the measured stages: seconds since ``started`` (``time.time()`` at the audit's start) and the UTC time."""
    total = round(time.time() - started, 1)
    return RunClock(total_s=total, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def run_canaries(inputs: AuditInputs, target: AuditTarget, reference: AuditReference) -> dict | None:
    """Stage 11: the canary audit (:func:`llm_mia.privacy.canary_audit.run_canary_audit`) when canaries were given.

    Returns:
        report.json's ``canaries`` dict, or None without canaries.
    """
    if inputs.canaries is None:
        return None
    _stage(target.model, "canaries")
    return run_canary_audit(target.model, inputs.canaries, reference=reference.model, seed=target.cfg.seed)


def check_training_record(inputs: AuditInputs, target: AuditTarget) -> dict:
    """Whether the model was trained on the audited members, from the training record ``llm-mia train``
    writes in the model folder (recipe.json: ``train_sha256`` of its training file, ``secrets_sha256`` of
    the corpus's secrets.json) against the audited files' SHA-256.

    Returns:
        report.json ``provenance.training_record``: ``status`` "verified" (the members file is the
        training file, or the canary audit's planted copy of it, and the secrets file matches when
        both are recorded), "unverified" (no record,
        a served model, or ``--members`` naming another file than the training one: a sample of it may
        be fine), with ``model_train_sha256``, ``audited_train_sha256`` and a ``reason``.

    Raises:
        LlmMiaError: a corpus-folder audit whose train.jsonl (or secrets.json) is not the file the
            model's record says it was trained on: both fingerprints named, before any long work.
    """
    folder = getattr(target.model, "folder", None)
    recipe = Path(folder) / "recipe.json" if folder is not None else None
    audited = sha256_file(Path(inputs.members_spec)) if Path(str(inputs.members_spec)).is_file() else None
    out = {"status": "unverified", "model_train_sha256": None, "audited_train_sha256": audited, "reason": None}
    if recipe is None or not recipe.is_file():
        out["reason"] = "no training record (recipe.json) in the model folder"
        return out
    rec = io.read_json(recipe)
    out["model_train_sha256"] = rec.get("train_sha256") if isinstance(rec, dict) else None
    if not out["model_train_sha256"] or audited is None:
        out["reason"] = "the training record has no training-file fingerprint"
        return out
    planted = (inputs.canaries.record.get("planted_sha256") if inputs.canaries is not None else None)
    if planted and out["model_train_sha256"] == planted:  # trained on the canary-planted copy of the members
        audited = out["audited_train_sha256"] = planted
    pairs = [("training file", out["model_train_sha256"], audited)]
    if rec.get("secrets_sha256") and inputs.secrets_path is not None and Path(str(inputs.secrets_path)).is_file():
        pairs.append(("secrets file", rec["secrets_sha256"], sha256_file(Path(inputs.secrets_path))))
    bad = [(what, a, b) for what, a, b in pairs if a != b]
    if not bad:
        out["status"], out["reason"] = "verified", f"{' and '.join(w for w, _, _ in pairs)} match the training record"
        return out
    what, a, b = bad[0]
    msg = (f"the model's training record names another {what} (sha256 {a[:12]}) than the audited one "
           f"({inputs.members_spec if what == 'training file' else inputs.secrets_path}: sha256 {b[:12]})")
    if inputs.corpus_dir is not None:
        raise LlmMiaError(msg + ": was this model trained on this corpus?")
    out["reason"] = msg + " (a sample of the training data is fine)"
    return out


def run_twin(inputs: AuditInputs, target: AuditTarget, docs: AuditDocuments, exposure: ExposureStage,
             out: Path) -> dict:
    """Stage: the positive control (:func:`llm_mia.audit.twin.run_positive_control`) on the planted secrets,
    after the target's own exposure stage; its twin lives in ``out/positive_control/``.

    Returns:
        report.json ``positive_control``.
    """
    cfg = target.cfg
    _stage(target.model, "positive control")
    found = {r["id"] for r in exposure.rows if r.get("greedy_extracted") or r.get("beam_extracted")}
    rec = run_positive_control(target.model, inputs.secrets, docs.train, [d.text for d in docs.nonmembers], found,
                               out / "positive_control", control_insertions=cfg.control_insertions,
                               beams=cfg.beams, seed=cfg.seed, model=cfg.positive_control_model,
                               skip=not cfg.positive_control, progress=cfg.progress)
    return rec.to_dict()
