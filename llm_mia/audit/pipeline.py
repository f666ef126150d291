"""The release audit: extraction, secret exposure and membership scoring of one model, one report.

``run_audit`` works on the user's model (a folder, a PEFT adapter, a hub id) and their members and
non-members files (or a corpus folder); the demo (:mod:`llm_mia.audit.demo`) and the comparison of
models (:mod:`llm_mia.audit.compare`) call it once per model.

``run_audit`` is the list of the stages of :mod:`llm_mia.audit.stages` (each takes and returns a
documented record); :func:`assemble_report` builds report.json's dict from their records, and
:func:`write_reports` writes it with report.md, report.html and modelcard.md.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from llm_mia.audit.policy import UnanswerableLimit, evaluate
from llm_mia.audit.stages import (
    REFERENCE_EXCLUDED,
    AuditConfig,
    AuditRecords,
    check_training_record,
    drop_overlap,
    load_reference,
    load_target,
    membership_sample,
    overlap,
    read_inputs,
    reference_saw_nonmembers,
    render_documents,
    resolve_reference,
    run_canaries,
    run_discoverable,
    run_exposure,
    run_extraction,
    run_membership,
    run_pii,
    run_twin,
    stop_clock,
    strip_planted,
)
from llm_mia.audit.text_only import is_text_only, mark_not_measured, text_only_records
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import sha256_file
from llm_mia.core.version import __version__
from llm_mia.exposure.secrets import exposure_by_count
from llm_mia.extraction.chat import load_chat_prompts, max_prompt_tokens
from llm_mia.extraction.extract import read_clear
from llm_mia.membership import signals as S
from llm_mia.models.endpoint import EndpointModel
from llm_mia.privacy.canary_audit import summary_line
from llm_mia.report.html import redact_report, render_html
from llm_mia.report.markdown import render_markdown
from llm_mia.report.modelcard import render_modelcard
from llm_mia.report.plots import exposure_plot
from llm_mia.report.schema import SCHEMA_VERSION

# The stages' names that lived here before llm_mia.audit.stages: still imported from here (CLI, compare, tests).
__all__ = ["AuditConfig", "REFERENCE_EXCLUDED", "apply_policy", "assemble_report", "headline", "membership_sample",
           "overlap", "reference_saw_nonmembers", "resolve_reference", "run_audit", "strip_planted", "write_reports"]


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"llm_mia": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _gate_observations(report: dict) -> list[str]:
    """What the release gate's provenance rests on: the training record (the positive control has its
    line under the planted secrets, :func:`llm_mia.report.markdown.positive_control_line`)."""
    obs = []
    rec = (report.get("provenance") or {}).get("training_record") or {}
    if rec.get("status"):
        obs.append(f"training record: {rec['status']}" + (f" ({rec['reason']})." if rec.get("reason") else "."))
    return obs


def _observations(report: dict) -> list[str]:
    """Plain statements of what happened, including what went worse than expected."""
    obs = _gate_observations(report)
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
    if ext.get("skipped"):
        obs.append(f"extraction not measured: {ext['skipped']}.")
    for name, row in ext.get("rankings", {}).items():
        if row["memorized"] == 0:
            obs.append(f"ranking '{name}' found no memorized sample among its top {row['top_n']}.")
    best = max(ext.get("rankings", {}).items(), key=lambda kv: kv[1]["memorized"], default=None)
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
    ext = report["extraction"]
    parts.append("extraction not measured" if ext.get("skipped") else f"{ext.get('memorized_total', 0)} memorized samples")
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
        try:
            report["verdict"] = {"policy": policy.source, **evaluate(report, policy).to_dict()}
        except UnanswerableLimit as e:  # ERROR: the verdict goes into the report all the same
            report["verdict"] = {"policy": policy.source, **e.verdict.to_dict()}
            raise
    return report["verdict"]


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


def _provenance(rec: AuditRecords) -> dict:
    """report.json's ``provenance``: the model, reference and data (with digests), settings, versions, timings."""
    inp, tgt, cfg = rec.inputs, rec.target, rec.target.cfg
    target = tgt.model
    recipe = (target.folder or Path(".")) / "recipe.json"
    timings = {"extract_s": rec.extraction.seconds, "exposure_s": rec.exposure.seconds,
               "membership_s": rec.membership.seconds, "discoverable_s": rec.discoverable.seconds,
               "pii_s": rec.pii.seconds, "total_s": rec.clock.total_s}
    return {
        "model": target.source, "model_args": tgt.model_args, "model_weights_sha256": target.weights_sha256,
        "model_base": target.base, "engine": getattr(target, "engine_info", None),
        "reference": tgt.reference_spec, "reference_source": tgt.reference_source,
        "reference_weights_sha256": rec.reference.weights_sha256,
        "reference_excluded": rec.reference.excluded, "serving": tgt.serve[0] if tgt.serve else None,
        "corpus": str(inp.corpus_dir) if inp.corpus_dir is not None else None,
        "members": inp.members_spec, "nonmembers": inp.nonmembers_spec, "text_column": inp.text_column,
        "chat": {"rendered_with": "tokenizer chat template", "score_spans": cfg.score_spans} if tgt.chat else None,
        "train_sha256": _sha(inp.members_spec), "nonmembers_sha256": _sha(inp.nonmembers_spec),
        "secrets_sha256": _sha(inp.secrets_path),
        "recipe": io.read_json(recipe) if recipe.exists() else None,
        "seed": cfg.seed, "versions": _versions(), "timings": timings,
        "settings": {k: v for k, v in asdict(cfg).items() if k != "extract"},
    }


def assemble_report(rec: AuditRecords) -> dict:
    """report.json's dict (before the verdict) from the stages' records.

    Args:
        rec: every stage's record (:class:`llm_mia.audit.stages.AuditRecords`).

    Returns:
        The report: ``schema_version``, ``created``, ``provenance`` (with ``endpoint`` for an endpoint
        target: its API, the signals it allows, the queries per stage), ``extraction``, ``secrets``,
        ``exposure``, ``exposure_by_count``, ``exposure_controls``, ``exposure_plot`` (file name or None),
        ``membership``, ``discoverable``, ``pii``, ``canaries`` (when run) and ``observations``.
    """
    rows = rec.exposure.rows
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": rec.clock.created,
        "provenance": _provenance(rec),
        "extraction": rec.extraction.report,
        "secrets": rows,
        "exposure": {"measured": True} if rec.exposure.measured else
                    {"measured": False, "reason": "no planted secrets given (--secrets): canary exposure not measured"},
        "exposure_by_count": exposure_by_count(rows) if rows else [],
        "exposure_controls": rec.exposure.controls,
        "exposure_plot": "exposure.png" if rows else None,
        "membership": rec.membership.report,
        "discoverable": rec.discoverable.report,
        "pii": rec.pii.report,
    }
    if rec.canaries is not None:
        report["canaries"] = rec.canaries
    if rec.positive_control is not None:
        report["positive_control"] = rec.positive_control
    report["provenance"]["training_record"] = rec.training_record
    if isinstance(rec.target.model, EndpointModel):  # what its API allows and what the audit asked of it
        report["provenance"]["endpoint"] = _endpoint_record(rec.target.model, rows, rec.extraction.report,
                                                            rec.target.left_out)
    report["observations"] = _observations(report)
    return report


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
    A text-only endpoint (``openai:URL`` with ``api=chat`` / ``api=text``: no log-probs) gets membership
    by the text-only signals only (:mod:`llm_mia.audit.text_only`); the other sections say why they were
    not measured.

    Returns:
        The report written to ``out_dir/report.json`` (redacted unless ``cfg.show_secrets``), verdict included.

    Raises:
        LlmMiaError: missing or unreadable input files, a column that does not exist, chat rows with
            a tokenizer that has no chat template, corrupt secrets.json, a folder that is not a
            model, a report that lacks what a policy limit needs. Input errors come before any model runs.
    """
    cfg = cfg or AuditConfig()
    if policy is not None and cfg.control_insertions != policy.positive_control_min_insertions:
        cfg = replace(cfg, control_insertions=policy.positive_control_min_insertions)  # the gate's controls
    started = time.time()
    inputs = read_inputs(corpus_dir, members, nonmembers, secrets_path, text_column=text_column, cfg=cfg,
                         canaries=canaries, model_path=model_path, has_reference=bool(reference_path))
    target = load_target(inputs, model_path, model_args=model_args, engine=engine, reference_path=reference_path,
                         shadow_dir=shadow_dir, serve=serve, cfg=cfg)
    training_record = check_training_record(inputs, target)  # a mismatch is an error before any long work
    if not is_text_only(target.model):  # a chat strategy on a model without a chat template: before the out folder
        max_prompt_tokens(target.model, cfg.strategies, load_chat_prompts())
    docs = render_documents(inputs, target)
    reference = load_reference(target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = drop_overlap(docs)
    if is_text_only(target.model):  # api=chat / api=text: membership by the text-only signals, nothing else
        report = mark_not_measured(assemble_report(text_only_records(inputs, target, docs, started=started,
                                                                     training_record=training_record)),
                                   target.model.api)
        return _gate_and_write(report, policy, out, inputs.secrets, show_secrets=cfg.show_secrets)
    extraction = run_extraction(inputs, target, reference, docs, out)
    exposure = run_exposure(inputs, target, docs, extraction)
    positive = run_twin(inputs, target, docs, exposure, out) if exposure.rows else None
    membership = run_membership(inputs, target, reference, docs)
    discoverable = run_discoverable(target, docs)
    pii = run_pii(inputs, target, docs, extraction, out)
    clock = stop_clock(started)  # the canary audit and the report are not counted in timings.total_s
    report = assemble_report(AuditRecords(inputs=inputs, target=target, docs=docs, reference=reference,
                                          extraction=extraction, exposure=exposure, membership=membership,
                                          discoverable=discoverable, pii=pii, clock=clock,
                                          canaries=run_canaries(inputs, target, reference),
                                          positive_control=positive, training_record=training_record))
    if exposure.rows:
        exposure_plot(out / "exposure.png", exposure.rows, n_references=target.cfg.n_candidates)
    return _gate_and_write(report, policy, out, inputs.secrets, show_secrets=cfg.show_secrets)


def _gate_and_write(report: dict, policy, out: Path, secrets, *, show_secrets: bool) -> dict:
    """Put the verdict into ``report`` (:func:`apply_policy`) and write the report files; a policy that
    asks what the report cannot answer still gets the report written, then its error raised."""
    try:
        apply_policy(report, policy)
    except LlmMiaError as e:  # the policy asks what this report cannot answer: keep the report, then fail
        e.report = write_reports(out, report, secrets, show_secrets=show_secrets)
        raise
    return write_reports(out, report, secrets, show_secrets=show_secrets)
