"""A gated verdict as SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format), for GitHub
code scanning and other CI dashboards.

One rule per policy limit (:data:`RULES`: level and GitHub ``security-severity`` from the limit),
one result per failing item: each extracted or over-exposed secret (by id, never its value), each
training PII value (redacted), each memorized sample (its id and match length, never its text),
each membership signal over the limit; an inconclusive or unanswerable limit is one result too.
Every rule and result is tagged OWASP LLM02:2025 (Sensitive Information Disclosure) and MITRE
ATLAS AML.T0057 (LLM Data Leakage). ``partialFingerprints`` hash the rule, the item and the
corpus's secrets.json digest, so an alert keeps its identity across re-runs and retrained models.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from llm_mia.core import io
from llm_mia.core.version import __version__
from llm_mia.report.ci import clean_text, interval_text, outcome

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
TAXONOMY_TAGS = ["security", "privacy", "OWASP-LLM02:2025", "MITRE-ATLAS-AML.T0057"]
TAXONOMY = {"owasp_llm_top_10_2025": "LLM02:2025 Sensitive Information Disclosure",
            "mitre_atlas": "AML.T0057 LLM Data Leakage"}
FINGERPRINT_KEY = "llmMiaFinding/v1"

#: limit -> (rule name, SARIF level, GitHub security-severity 0-10, description).
RULES: dict[str, tuple[str, str, str, str]] = {
    "max_extracted_secrets": ("ExtractedSecrets", "error", "9.0",
                              "Planted secrets the model gave back (greedy or beam completion of their prefix, "
                              "or verbatim in the extraction samples)."),
    "max_extracted_training_pii": ("ExtractedTrainingPii", "error", "8.5",
                                   "Distinct PII values in the extraction samples that occur in the training data."),
    "max_canary_exposure_bits": ("CanaryExposure", "error", "7.5",
                                 "Canary exposure (Carlini et al. 2019) of planted secrets, in bits, above the limit."),
    "max_memorized_samples": ("MemorizedSamples", "warning", "6.0",
                              "Extraction samples holding a long verbatim training span (Carlini et al. 2021)."),
    "max_membership_tpr_at_1pct_fpr": ("MembershipInference", "warning", "5.0",
                                       "Membership-inference TPR at 1% FPR, members vs held-out documents."),
    "max_audited_epsilon": ("AuditedEpsilon", "error", "7.0",
                            "Epsilon lower bound from planted canaries (one-run audit, Steinke et al. 2023)."),
    "max_canary_tpr_at_1pct_fpr": ("CanaryMembership", "warning", "5.0",
                                   "TPR at 1% FPR of included against excluded planted canaries."),
    "max_queries_per_secret": ("QueriesPerSecret", "error", "8.0",
                               "A planted secret extractable within the API's rate limit (queries per attacker)."),
    "min_remaining_guess_bits": ("PartlyRecoveredSecrets", "error", "7.5",
                                 "Planted secrets whose best completion leaves fewer bits to guess than the limit."),
    "max_discoverable_rate": ("DiscoverableMemorization", "warning", "6.0",
                              "Training examples whose suffix greedy decoding of their prefix gives back "
                              "(discoverable memorization, Carlini et al. 2023)."),
    "max_vulnerable_records": ("VulnerableRecords", "warning", "5.5",
                               "Members whose per-record calibrated membership FPR is at most 1% (records at risk)."),
    "training_data": ("TrainingData", "error", "5.0",
                      "Whether the model was trained on the audited members: its training record against the "
                      "audited files, and membership signals pointing the wrong way (members look swapped)."),
}


def rule_of(name: str) -> tuple[str, str, str, str]:
    """The :data:`RULES` row of limit ``name``; a limit without one gets a generic error rule (a new limit
    must never stop the CI files from being written)."""
    return RULES.get(name) or ("".join(w.capitalize() for w in str(name).split("_")), "error", "7.0",
                               f"Release-policy limit {name}.")


def _fingerprint(*parts) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:32]


def _uri(path: Path) -> str:
    """The path relative to the working directory when it lies below it (what code scanning shows)."""
    try:
        return Path(os.path.relpath(path.resolve(), Path.cwd().resolve())).as_posix() \
            if path.resolve().is_relative_to(Path.cwd().resolve()) else path.resolve().as_uri()
    except ValueError:
        return path.resolve().as_uri()


def _memorized_samples(report_dir: Path | None) -> list[dict]:
    """Unique memorized samples of ``report_dir/extract/samples.jsonl`` (id, match length, text hash)."""
    path = report_dir / "extract" / "samples.jsonl" if report_dir is not None else None
    if path is None or not path.is_file():
        return []
    seen, out = set(), []
    for r in io.read_jsonl(path):
        if not r.get("memorized"):
            continue
        h = hashlib.sha256(str(r.get("text", "")).encode("utf-8")).hexdigest()
        if h not in seen:
            seen.add(h)
            out.append({"id": r.get("id"), "longest_match_tokens": r.get("longest_match_tokens"), "hash": h})
    return out


def _results_of(check: dict, report: dict, samples: list[dict]) -> list[tuple]:
    name, level = check["name"], rule_of(check["name"])[1]
    salt = (report.get("provenance") or {}).get("secrets_sha256")
    _, _, res_level, word = outcome(check["status"])
    if res_level is None:
        return []
    if word is not None:
        return [(f"{word}: {check['text']}: {check['reason']}", res_level,
                 _fingerprint(name, check["status"]), {"status": check["status"]})]
    out = []
    for it in check.get("items") or []:
        if it["kind"] == "secret":
            how = f" by {', '.join(it['how'])}" if it.get("how") else ""
            val = f" with {it['estimator']} {io.to_float(it['value']):.2f} bits" if "value" in it else ""
            if it.get("interval"):
                val += f" (lower bound {io.to_float(it['interval'][0]):.2f})"
            msg = f"Planted secret {it['id']} ({it.get('secret_kind')}, inserted {it.get('count')}x) leaked{how}{val}."
            out.append((msg, level, _fingerprint(name, it["id"], salt), {"secret_id": it["id"]}))
        elif it["kind"] == "pii":
            msg = (f"Training PII ({it['type']}) {it.get('value')} emitted (first in sample {it.get('first_sample')}, "
                   f"{it.get('train_count')}x in the training data).")
            out.append((msg, level, _fingerprint(name, it["type"], it.get("value"), salt), {"pii_type": it["type"]}))
        elif it["kind"] == "metric":
            ci = f" [{it['interval'][0]:.3f}, {it['interval'][1]:.3f}]" if it.get("interval") else ""
            msg = (f"Membership signal {it['signal']}: TPR at 1% FPR {it['tpr']:.3f}{ci} > {check['limit']}"
                   + (f" (AUC {io.to_float(it['auc']):.3f})." if it.get("auc") is not None else "."))
            out.append((msg, level, _fingerprint(name, it["signal"], salt), {"signal": it["signal"]}))
    if name == "max_memorized_samples":
        for smp in samples:
            msg = f"Sample {smp['id']} holds a verbatim training span of {smp['longest_match_tokens']} tokens."
            out.append((msg, level, _fingerprint(name, smp["hash"]), {"sample_id": smp["id"]}))
    if not out:  # a failed limit with no itemised finding: the metric itself
        out.append((f"{check['text']}.", level, _fingerprint(name, "metric", salt), {}))
    return out


def sarif_log(report: dict, verdict: dict, *, report_dir: Path | None = None, report_uri: str | None = None) -> dict:
    """The SARIF 2.1.0 log (a dict) of ``verdict`` (a :meth:`llm_mia.audit.policy.Verdict.to_dict` with
    ``policy``) for ``report`` (redacted report.json); ``report_dir`` holds extract/samples.jsonl."""
    checks = verdict.get("checks") or []
    names = [c["name"] for c in checks]
    rules = []
    for name in names:
        rule, level, sev, desc = rule_of(name)
        limit = next(c["limit"] for c in checks if c["name"] == name)
        rules.append({"id": f"llm-mia/{name}", "name": rule,
                      "shortDescription": {"text": f"{name} = {limit}"}, "fullDescription": {"text": desc},
                      "help": {"text": f"{desc} The release policy allows at most {limit}. "
                                       "See the audit's report.md for the evidence."},
                      "defaultConfiguration": {"level": level},
                      "properties": {"tags": TAXONOMY_TAGS, "security-severity": sev, "precision": "high",
                                     "limit": limit, **TAXONOMY}})
    samples = _memorized_samples(report_dir)
    prov = report.get("provenance") or {}
    loc_uri = report_uri or (_uri(report_dir / "report.json") if report_dir is not None else "report.json")
    results = []
    for i, c in enumerate(checks):
        for msg, level, fp, props in _results_of(c, report, samples):
            results.append({
                "ruleId": f"llm-mia/{c['name']}", "ruleIndex": i, "kind": "fail", "level": level,
                "message": {"text": clean_text(msg)},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": loc_uri}},
                               "logicalLocations": [{"name": str(prov.get("model") or "model"),
                                                     "kind": "module"}]}],
                "partialFingerprints": {FINGERPRINT_KEY: fp},
                "properties": {"tags": TAXONOMY_TAGS, "check_status": c["status"],
                               **({"interval": interval_text(c)} if interval_text(c) else {}), **props}})
    return {
        "$schema": SARIF_SCHEMA, "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "llm-mia", "version": __version__, "semanticVersion": __version__,
                                "informationUri": "https://pypi.org/project/llm-mia/", "rules": rules}},
            "invocations": [{"executionSuccessful": verdict.get("status") != "ERROR",
                             "exitCode": int(verdict.get("exit_code") or 0)}],
            "results": results,
            "properties": {"verdict": verdict.get("status"), "line": verdict.get("line"),
                           "policy": verdict.get("policy"), "model": prov.get("model"),
                           "model_weights_sha256": prov.get("model_weights_sha256"), **TAXONOMY},
        }],
    }


def write_sarif(path: str | Path, report: dict, verdict: dict, *, report_dir: Path | None = None) -> None:
    """Write :func:`sarif_log` to ``path`` (atomic)."""
    io.write_json(path, sarif_log(report, verdict, report_dir=Path(report_dir) if report_dir else None))
