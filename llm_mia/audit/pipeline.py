"""The release audit: extraction, secret exposure and membership scoring of one model, one report.

``run_audit`` works on the user's model (a folder, a PEFT adapter, a hub id) and their members and
non-members files (or a corpus folder); ``run_demo`` builds the embedded python-docs corpus with
planted secrets, pre-trains a base GPT-2 on a public part, fine-tunes it with LoRA on the private
part and audits the adapter with the base as reference.
"""

from __future__ import annotations

import os
import platform
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError, LlmMiaWarning
from llm_mia.core.io import sha256_file
from llm_mia.core.progress import bar
from llm_mia.core.version import __version__
from llm_mia.data.chat import SCORE_SPANS, Doc, check_template, encode_docs, render_chat
from llm_mia.data.dedup import dedup
from llm_mia.data.secrets import load_secrets
from llm_mia.data.texts import read_texts
from llm_mia.exposure.secrets import exposure_by_count, exposure_work, secret_exposure
from llm_mia.extraction.discoverable import discoverable_memorization
from llm_mia.extraction.extract import ExtractConfig, extract, read_clear
from llm_mia.extraction.pii_findings import (
    pii_findings,
    resolve_regions,
    tokenizer_normalizer,
)
from llm_mia.membership import signals as S
from llm_mia.membership.baseline import model_free_baseline
from llm_mia.membership.metrics import roc_metrics
from llm_mia.membership.scoring import reference_warning, score
from llm_mia.membership.shadow import check_tokenizer, load_shadows, shadow_summary
from llm_mia.models.endpoint import EndpointModel
from llm_mia.models.loading import load_model
from llm_mia.privacy.canary_audit import (
    prepare_canary_audit,
    run_canary_audit,
    summary_line,
)
from llm_mia.report.html import redact_report, render_html
from llm_mia.report.markdown import render_markdown
from llm_mia.report.modelcard import render_modelcard
from llm_mia.report.plots import exposure_plot
from llm_mia.report.schema import SCHEMA_VERSION


@dataclass
class AuditConfig:
    """Every knob of an audit run and its default."""

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
    membership_docs: int = 200  # members and as many held-out documents scored for the ROC
    top_n: int = 100
    seed: int = 0
    batch_size: int = 64
    max_new_tokens: int | None = None
    memorized_min_tokens: int = 50
    # Discoverable memorization (llm_mia.extraction.discoverable): training examples sampled (0 = off), prompt and suffix tokens
    discoverable_samples: int = 200
    discoverable_prefix: int = 50
    discoverable_suffix: int = 50
    score_spans: str = "assistant"  # chat rows: score the assistant turns only, or "all" tokens
    show_secrets: bool = False
    progress: bool = True
    pii_regions: tuple[str, ...] | None = None  # phone regions; None: the corpus's locales + llm_mia.data.pii.DEFAULT_REGIONS
    max_queries: int | None = None  # an openai: endpoint's API calls (llm_mia.models.endpoint); None: no bound
    extract: ExtractConfig = field(default=None)  # filled from the fields above

    def __post_init__(self) -> None:
        """Check the extraction options now, before any folder or model (one-line LlmMiaError)."""
        self.extract = ExtractConfig(num_samples=self.num_samples, strategies=tuple(self.strategies), seed=self.seed,
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, top_n=self.top_n,
                                     memorized_min_tokens=self.memorized_min_tokens, show_secrets=self.show_secrets)


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"llm_mia": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


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


def membership_sample(members, heldout, secrets, n: int, seed: int) -> tuple[list, list]:
    """The membership evaluation's documents: ``min(n, len(members), len(heldout))`` members (planted
    sentences removed from plain documents, :func:`strip_planted`) and as many held-out documents,
    sampled with ``random.Random(seed)``; str or :class:`llm_mia.data.chat.Doc` items, returned as given.
    The audit and the comparison of defences score exactly these."""

    rng = random.Random(seed)
    k = min(n, len(members), len(heldout))
    if k < 2:
        return [], []

    def strip(d):
        if isinstance(d, str):
            return strip_planted(d, secrets)
        return Doc(strip_planted(d.text, secrets)) if d.spans is None else d

    return [strip(t) for t in rng.sample(list(members), k)], rng.sample(list(heldout), k)


def _membership(target, reference, members, heldout, cfg: AuditConfig, secrets=(), shadow=None) -> dict:
    """ROC metrics of every signal, members (1) against held-out non-members (0), and the
    model-free baseline. ``members`` / ``heldout`` are :class:`llm_mia.data.chat.Doc` (or str); planted
    secret sentences are removed from plain members first (:func:`strip_planted`); documents with
    spans (chat rows) are scored on those tokens only (``scoring.score(score_mask=)``)."""

    as_doc = lambda d: d if isinstance(d, Doc) else Doc(d)  # noqa: E731
    mem, non = membership_sample(members, heldout, secrets, cfg.membership_docs, cfg.seed)
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
    y = [1] * n + [0] * n
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
    return {"n_members": n, "n_nonmembers": n, "planted_sentences_removed": bool(secrets), "signals": out,
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


def _observations(report: dict) -> list[str]:
    """Plain statements of what happened, including what went worse than expected."""
    obs = []
    secrets = report["secrets"]
    hi = [s for s in secrets if s["count"] >= 16]
    if hi:
        g = sum(s["greedy_extracted"] for s in hi)
        obs.append(f"{g} of {len(hi)} secrets inserted >= 16 times were reproduced by greedy completion of their prefix"
                   + ("." if g == len(hi) else " (expected all: the model memorized less than the demo's design assumes)."))
    ctrl = [s for s in secrets if s["count"] == 0]
    if ctrl:
        m = float(np.mean([s["exposure_rank"] for s in ctrl]))
        c = report.get("exposure_controls") or {}
        exp = c.get("expected_bits", 1 / np.log(2))
        se = c.get("stderr_bits", (1 / np.log(2)) / np.sqrt(len(ctrl)))
        obs.append(f"never-inserted controls: mean rank exposure {m:.2f} bits (chance: {exp:.2f} bits, about 1/ln 2; "
                   f"off by {m - exp:+.2f} bits = {(m - exp) / se:+.1f} standard errors of {se:.2f}), "
                   f"{sum(s['greedy_extracted'] for s in ctrl)} of {len(ctrl)} greedily 'extracted'.")
    ep = report.get("provenance", {}).get("endpoint")
    if ep:
        per = ep.get("queries_per_extracted_secret")
        obs.append(f"endpoint {ep['url']} ({ep['model']}, api={ep['api']}, mode {ep['mode']}): {ep['queries']} queries "
                   f"({ep['prompts']} prompts, {ep['retries']} retries); "
                   + (f"{per:.1f} queries per extracted secret." if per is not None else "no secret extracted.")
                   + (f" Not computable through it: {', '.join(ep['not_computable'])}." if ep["not_computable"] else "")
                   + (f" Left out: {'; '.join(ep['left_out'])}." if ep.get("left_out") else ""))
    if report.get("exposure", {}).get("measured") is False:
        obs.append("exposure: " + report["exposure"]["reason"] + ".")
    ov = report.get("membership", {}).get("overlap") or {}
    if ov.get("n_overlapping"):
        obs.append(f"WARNING: {ov['n_overlapping']} of {ov['n_nonmembers']} non-members ({ov['exact']} exact, "
                   f"{ov['near']} near duplicates) also occur among the members; they were left out of membership.")
    disc = report.get("discoverable") or {}
    if disc.get("greedy_rate") is not None:
        npd = disc.get("np_discoverable_rate")
        obs.append(f"discoverable memorization: {disc['n_greedy']} of {disc['n_examples']} training examples "
                   f"({disc['greedy_rate']:.1%}) give back their next {disc['suffix_len']} tokens greedily from their "
                   f"first {disc['prefix_len']}; ({disc['n']}, {disc['p']})-discoverable: "
                   + (f"{npd:.1%}." if npd is not None else f"not measured ({disc.get('np_skipped')})."))
    elif disc.get("skipped"):
        obs.append(f"discoverable memorization not measured: {disc['skipped']}.")
    ext = report["extraction"]
    for name, row in ext["rankings"].items():
        if row["memorized"] == 0:
            obs.append(f"ranking '{name}' found no memorized sample among its top {row['top_n']}.")
    best = max(ext["rankings"].items(), key=lambda kv: kv[1]["memorized"], default=None)
    if best and best[1]["memorized"]:
        obs.append(f"best ranking: '{best[0]}' with {best[1]['memorized']} memorized samples in its top {best[1]['top_n']}.")
    if report.get("provenance", {}).get("reference_excluded"):
        obs.append("reference: " + report["provenance"]["reference_excluded"] + " (its ranking and membership signals "
                   "are left out).")
    if report.get("membership", {}).get("reference_excluded"):
        obs.append("membership: the reference signals are left out: " + report["membership"]["reference_excluded"] + ".")
    mem = report.get("membership", {}).get("signals", {})
    if mem:
        aucs = {k: v["auc"] for k, v in mem.items() if "auc" in v}
        if aucs:
            k = max(aucs, key=aucs.get)
            obs.append(f"membership: best signal '{k}' with AUC {aucs[k]:.3f} (members vs held-out documents).")
            weak = [k for k, a in aucs.items() if a < 0.5]
            if weak:
                obs.append(f"signals ranking members below non-members (AUC < 0.5): {', '.join(weak)}.")
    base = report.get("membership", {}).get("baseline") or {}
    if base.get("auc") is not None:
        obs.append(f"model-free baseline (text features only): AUC {base['auc']:.3f}"
                   + (f" -- WARNING: {base['warning']}." if base.get("warning") else ", members and held-out "
                      "documents are not told apart without the model."))
    if report.get("canaries"):
        obs.append("canary audit: " + summary_line(report["canaries"]) + ".")
    pii = report.get("pii")
    if pii:
        pl = pii["planted"]
        obs.append(f"PII: {pii['n_values']} distinct values in the samples, {pii['extracted_training_values']} of them "
                   f"training data; {pl['n_planted_extracted']} of {pl['n_planted']} planted PII values emitted.")
    return obs


def headline(report: dict) -> str:
    """One line summing up the leakage when no policy is given (the verdict slot of the report)."""
    parts = []
    ins = [s for s in report.get("secrets", []) if s.get("count", 0) >= 1]
    if ins:
        got = sum(bool(s.get("greedy_extracted") or s.get("surfaced_in_samples")) for s in ins)
        parts.append(f"{got} of {len(ins)} inserted secrets extracted")
    parts.append(f"{report['extraction'].get('memorized_total', 0)} memorized samples")
    if (report.get("discoverable") or {}).get("greedy_rate") is not None:
        parts.append(f"discoverable memorization {report['discoverable']['greedy_rate']:.1%}")
    if report.get("pii"):
        parts.append(f"{report['pii']['extracted_training_values']} training PII values emitted")
    sigs = report.get("membership", {}).get("signals", {})
    tprs = {k: v["tpr_at_fpr"]["0.01"]["tpr"] for k, v in sigs.items() if "tpr_at_fpr" in v}
    if tprs:
        k = max(tprs, key=tprs.get)
        parts.append(f"best membership TPR at 1% FPR {tprs[k]:.3f} ({k})")
    return "NO POLICY: " + "; ".join(parts)


def write_reports(out_dir: str | Path, report: dict, secrets, *, show_secrets: bool = False) -> dict:
    """Write report.json, report.md, report.html and modelcard.md into ``out_dir`` (atomic writes).

    Secrets and PII are redacted everywhere unless ``show_secrets``; the (possibly redacted) report
    that went into report.json is returned. Reads the clear ``extract/private/top.jsonl`` and
    ``extract/private/samples.jsonl`` beside it for the sample listings and the scatter (redacted here).
    """

    out = Path(out_dir)
    if not show_secrets:
        report = redact_report(report, secrets)
    io.write_json(out / "report.json", report)
    top, samples = read_clear(out / "extract", "top.jsonl"), read_clear(out / "extract", "samples.jsonl")
    io.write_text(out / "report.md", render_markdown(report, top, secrets, show_secrets=show_secrets))
    io.write_text(out / "report.html", render_html(report, top, samples, secrets, show_secrets=show_secrets))

    io.write_text(out / "modelcard.md", render_modelcard(report))
    return report


def apply_policy(report: dict, policy) -> dict:
    """Put the verdict into ``report["verdict"]``: the policy's (:func:`llm_mia.audit.policy.evaluate`) or,
    without one, :func:`headline`. Returns the verdict dict."""
    if policy is None:
        report["verdict"] = {"policy": None, "status": None, "passed": None, "line": headline(report), "checks": []}
    else:
        from llm_mia.audit.policy import UnanswerableLimit, evaluate

        try:
            report["verdict"] = {"policy": policy.source, **evaluate(report, policy).to_dict()}
        except UnanswerableLimit as e:  # ERROR: the verdict goes into the report all the same
            report["verdict"] = {"policy": policy.source, **e.verdict.to_dict()}
            raise
    return report["verdict"]


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
    """For an endpoint target: refuse an API without prompt log-probs, bound its queries, and leave
    out temperature decay (no API sets a per-token temperature). Returns (settings, what was left out)."""

    if not isinstance(target, EndpointModel):
        if cfg.max_queries is not None:
            raise LlmMiaError("--max-queries bounds the queries to an openai:URL endpoint; this model is local")
        return cfg, []
    if target.api != "completions":
        raise LlmMiaError(f"an audit scores texts, which needs prompt log-probs: {target.url} offers api={target.api} "
                          f"(label-only); audit an endpoint with /v1/completions echo + logprobs")
    target.max_queries = cfg.max_queries
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


def _endpoint_record(target, rows: list[dict], ext: dict, left_out: list[str]) -> dict:
    """report.json's ``provenance.endpoint``: the endpoint, its API and mode, the signals it allows,
    the queries made (per stage) and the queries per extracted secret (None when none was extracted)."""

    rec = target.describe([s.name for s in S.REGISTRY.values() if s.needs <= {"text", "lowercase", "moments"}])
    got = sum(bool(r.get("greedy_extracted") or r.get("surfaced_in_samples")) for r in rows if r.get("count", 0) >= 1)
    rec.update(extracted_secrets=got, queries_per_extracted_secret=rec["queries"] / got if got else None,
               left_out=left_out)
    return rec


def _sha(spec: str | Path | None) -> str | None:
    return sha256_file(Path(spec)) if spec is not None and Path(str(spec)).is_file() else None


def run_audit(corpus_dir: str | Path | None, model_path: str | Path, out_dir: str | Path, *,
              members: str | Path | None = None, nonmembers: str | Path | None = None,
              secrets_path: str | Path | None = None, text_column: str = "text",
              reference_path: str | Path | None = None, cfg: AuditConfig | None = None, policy=None,
              model_args: str | None = None, canaries: tuple[str | Path, str | Path] | None = None,
              shadow_dir: str | Path | None = None, engine: str = "hf", serve=None) -> dict:
    """Audit ``model_path`` (or the model ``model_args`` names) on its training data; write report.json / .md / .html.

    The data: ``members`` (the training examples: extraction verification, the suffix-array index,
    membership, discoverable memorization) and ``nonmembers`` (held-out examples: membership only),
    each a .txt/.jsonl/.csv/.parquet file or ``hf:NAME[:CONFIG]:SPLIT`` read with
    :func:`llm_mia.data.texts.read_texts` (column ``text_column``; chat rows with ``messages`` are
    rendered with the tokenizer's chat template, :mod:`llm_mia.data.chat`), and optionally
    ``secrets_path`` (planted canaries: exposure; without it exposure is reported as not measured).
    ``corpus_dir`` is the shorthand for its train.jsonl, heldout.jsonl and secrets.json.

    ``reference_path``: a model, "base" (a PEFT adapter's base; the default for an adapter) or
    "none"; report.json's provenance says which was used and where it came from.
    ``policy`` (:class:`llm_mia.audit.policy.Policy`) puts the release gate's verdict at the top of the
    report (``report["verdict"]``); without one the verdict slot holds :func:`headline`.
    ``canaries`` ((canaries.jsonl, inclusion.json) of ``llm-mia canaries plant``) adds the canary
    audit (:func:`llm_mia.privacy.canary_audit.run_canary_audit`) as ``report["canaries"]``.
    ``shadow_dir`` (``llm-mia shadow train --out``) adds LiRA, RMIA with K references and the Shokri
    attack to the membership table, and ``report["membership"]["shadow"]`` (models used, IN/OUT per text).
    ``serve`` ((name, f) with ``f(target) -> LanguageModel``): membership is scored through what a
    serving-time defence returns (``f``'s view, e.g. MemGuard's :class:`llm_mia.serving.output_limits.ApiView`);
    generation, extraction and exposure read the model itself; ``provenance.serving`` names it.

    Raises:
        LlmMiaError: missing or unreadable input files, a column that does not exist, chat rows with
            a tokenizer that has no chat template, corrupt secrets.json, a folder that is not a
            model, a report that lacks what a policy limit needs. Input errors come before any model runs.
    """

    cfg = cfg or AuditConfig()
    if cfg.score_spans not in SCORE_SPANS:
        raise LlmMiaError(f"--score-spans must be one of {', '.join(SCORE_SPANS)}, got {cfg.score_spans!r}")
    t0 = time.time()
    mem_spec, non_spec, secrets_path = _inputs(corpus_dir, members, nonmembers, secrets_path)
    mem_set = read_texts(mem_spec, text_field=text_column, label_field=None, allow_chat=True)
    non_set = read_texts(non_spec, text_field=text_column, label_field=None, allow_chat=True)
    secrets = load_secrets(secrets_path) if secrets_path is not None else []
    for spec, ts in ((mem_spec, mem_set), (non_spec if nonmembers is not None else None, non_set)):
        if spec is not None and not ts.texts:
            raise LlmMiaError(f"{spec} holds no documents")

    regions = resolve_regions(cfg.pii_regions, corpus_dir)  # (a bad region fails before any model work)

    can = prepare_canary_audit(*canaries, model_path=model_path, has_reference=bool(reference_path)) if canaries else None

    shadow = load_shadows(shadow_dir) if shadow_dir is not None else None
    target = load_model(str(model_path) if model_path is not None else None, model_args=model_args, engine=engine)
    if shadow is not None:
        check_tokenizer(shadow, target.tokenizer)  # before any model runs
    cfg, left_out = _endpoint_setup(target, cfg)
    ref_spec, ref_source = resolve_reference(target, reference_path)
    chat = mem_set.chats is not None or non_set.chats is not None
    if chat:
        check_template(target.tokenizer, target.source)  # before any model runs

    def docs(ts) -> list:
        return [render_chat(target.tokenizer, c, score_spans=cfg.score_spans) if c is not None else Doc(t)
                for t, c in zip(ts.texts, ts.chats or [None] * len(ts.texts))]

    mem_docs, non_docs = docs(mem_set), docs(non_set)
    train = [d.text for d in mem_docs]  # rendered: what extraction verification searches
    reference = load_model(ref_spec) if ref_spec else None

    ref_is_target = reference_warning(target, reference)
    ref_sha = reference.weights_sha256 if reference is not None else None
    if ref_is_target:  # its signals would be constant: left out of the rankings and the membership

        warnings.warn(ref_is_target, LlmMiaWarning, stacklevel=2)
        reference = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    dup = overlap(train, [d.text for d in non_docs])
    overlap_info = {"n_nonmembers": len(non_docs), "n_overlapping": len(dup),
                    "exact": sum(v == "exact" for v in dup.values()), "near": sum(v == "near" for v in dup.values()),
                    "rule": "llm_mia.data.dedup: normalised exact match or >= 50% word-trigram containment"}
    if dup:
        warnings.warn(f"{len(dup)} of {len(non_docs)} non-members ({overlap_info['exact']} exact, "
                      f"{overlap_info['near']} near) duplicate a member; left out of membership", LlmMiaWarning, stacklevel=2)
        non_docs = [d for i, d in enumerate(non_docs) if i not in dup]

    t = time.time()
    plain_prompts = non_set.chats is None and Path(non_spec).suffix.lower() in (".txt", ".jsonl") \
        and not non_spec.startswith("hf:") and text_column == "text"
    ecfg = ExtractConfig(num_samples=cfg.num_samples, strategies=tuple(cfg.strategies), seed=cfg.seed,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, score_batch_size=None,
                         top_n=cfg.top_n, memorized_min_tokens=cfg.memorized_min_tokens, progress=cfg.progress,
                         prompt_source=cfg.prompt_source or (non_spec if plain_prompts else None), resume=True,
                         show_secrets=cfg.show_secrets, pii_regions=regions)
    _stage(target, "extraction")
    ext = extract(target, out / "extract", reference=reference, train_texts=train, secrets=secrets, cfg=ecfg)
    timings["extract_s"] = round(time.time() - t, 1)

    t = time.time()

    rows, controls = [], {}
    _stage(target, "exposure")
    if secrets:
        with bar("exposure", exposure_work(secrets, cfg.n_candidates, cfg.exact_limit), enabled=cfg.progress) as adv:
            exp = secret_exposure(target, secrets, n_references=cfg.n_candidates, exact_limit=cfg.exact_limit,
                                  seed=cfg.seed, beams=cfg.beams, batch_size=cfg.batch_size, progress=adv,
                                  train_texts=train)
        rows, controls = exp.rows, exp.controls
        surfaced = set(ext["secrets_surfaced"])
        for r in rows:
            r["surfaced_in_samples"] = int(r["id"] in surfaced)
    timings["exposure_s"] = round(time.time() - t, 1)

    t = time.time()
    _stage(target, "membership")
    excluded = reference_saw_nonmembers(ref_spec, non_spec)
    membership = _membership(serve[1](target) if serve else target, None if excluded else reference, mem_docs,
                             non_docs, cfg, secrets, shadow=shadow)
    if excluded and "signals" in membership:
        membership["reference_excluded"] = REFERENCE_EXCLUDED
    membership["overlap"] = overlap_info
    timings["membership_s"] = round(time.time() - t, 1)

    t = time.time()
    _stage(target, "discoverable")
    discoverable = {"skipped": "disabled (--discoverable 0)"}
    if cfg.discoverable_samples > 0:
        try:
            discoverable = discoverable_memorization(target, train, n_examples=cfg.discoverable_samples,
                                                     prefix_len=cfg.discoverable_prefix,
                                                     suffix_len=cfg.discoverable_suffix, seed=cfg.seed)
        except LlmMiaError as e:  # e.g. a context shorter than prompt + suffix
            discoverable = {"skipped": str(e)}
    timings["discoverable_s"] = round(time.time() - t, 1)

    t = time.time()

    # the hits extract wrote into samples.jsonl (its clear copy): one PII pass, one detector set
    pii = pii_findings(read_clear(out / "extract", "samples.jsonl"), secrets, train, regions=regions,
                       normalizer=tokenizer_normalizer(target.tokenizer), presidio=ecfg.pii_presidio)
    timings["pii_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)

    recipe = (target.folder or Path(".")) / "recipe.json"
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provenance": {
            "model": target.source, "model_args": model_args, "model_weights_sha256": target.weights_sha256,
            "model_base": target.base, "engine": getattr(target, "engine_info", None),
            "reference": ref_spec, "reference_source": ref_source,
            "reference_weights_sha256": ref_sha,
            "reference_excluded": ref_is_target, "serving": serve[0] if serve else None,
            "corpus": str(corpus_dir) if corpus_dir is not None else None,
            "members": mem_spec, "nonmembers": non_spec, "text_column": text_column,
            "chat": {"rendered_with": "tokenizer chat template", "score_spans": cfg.score_spans} if chat else None,
            "train_sha256": _sha(mem_spec), "nonmembers_sha256": _sha(non_spec),
            "secrets_sha256": _sha(secrets_path),
            "recipe": io.read_json(recipe) if recipe.exists() else None,
            "seed": cfg.seed, "versions": _versions(), "timings": timings,
            "settings": {k: v for k, v in asdict(cfg).items() if k != "extract"},
        },
        "extraction": ext,
        "secrets": rows,
        "exposure": {"measured": True} if secrets else
                    {"measured": False, "reason": "no planted secrets given (--secrets): canary exposure not measured"},
        "exposure_by_count": exposure_by_count(rows) if rows else [],
        "exposure_controls": controls,
        "exposure_plot": "exposure.png" if rows else None,
        "membership": membership,
        "discoverable": discoverable,
        "pii": pii,
    }
    if can is not None:
        _stage(target, "canaries")
        report["canaries"] = run_canary_audit(target, can, reference=reference, seed=cfg.seed)
    if isinstance(target, EndpointModel):  # what its API allows and what the audit asked of it
        report["provenance"]["endpoint"] = _endpoint_record(target, rows, ext, left_out)
    report["observations"] = _observations(report)
    if rows:
        exposure_plot(out / "exposure.png", rows, n_references=cfg.n_candidates)
    try:
        apply_policy(report, policy)
    except LlmMiaError as e:  # the policy asks what this report cannot answer: keep the report, then fail
        e.report = write_reports(out, report, secrets, show_secrets=cfg.show_secrets)
        raise
    return write_reports(out, report, secrets, show_secrets=cfg.show_secrets)


