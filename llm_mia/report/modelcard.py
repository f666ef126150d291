"""The "Privacy audit" section of a model card (modelcard.md beside report.json): the verdict,
each policy limit, the headline measurements and what they cannot show. Built from the redacted
report, so it holds no secret or PII value."""

from __future__ import annotations

import math

from llm_mia.report.ci import interval_text


def _num(v, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else ("NaN" if math.isnan(v) else f"{v:.{nd}g}")
    return str(v)


def render_modelcard(report: dict) -> str:
    """Markdown: ``## Privacy audit`` with the verdict, a limits table and the measurements."""
    prov = report.get("provenance") or {}
    v = report.get("verdict") or {}
    out = ["## Privacy audit", "",
           f"Audited with llm-mia {(prov.get('versions') or {}).get('llm_mia', '?')} on {report.get('created', '?')}: "
           f"model `{prov.get('model')}` (weights sha256 `{prov.get('model_weights_sha256')}`), "
           f"training data sha256 `{prov.get('train_sha256')}`.", ""]
    if v.get("policy"):
        out += [f"**Release gate: {v.get('status')}** against policy `{v['policy']}`.", "", f"> {v.get('line')}", ""]
        rows = [f"| {c['name']} | {_num(c['limit'])} | {_num(c['value'])} | {interval_text(c) or '-'} | {c['status']}"
                f"{' (' + c['reason'] + ')' if c.get('reason') else ''} |" for c in v.get("checks") or []]
        out += ["| limit | allowed | measured | confidence interval | result |", "|---|---|---|---|---|", *rows, ""]
    else:
        out += ["No release policy was checked.", "", f"> {v.get('line', '')}", ""]
    secrets = [s for s in report.get("secrets") or [] if (s.get("count") or 0) > 0]
    ext = report.get("extraction") or {}
    facts = []
    if secrets:
        got = sum(bool(s.get("greedy_extracted") or s.get("beam_extracted") or s.get("surfaced_in_samples"))
                  for s in secrets)
        facts.append(f"Planted secrets extracted: {got} of {len(secrets)} (inserted 1 to "
                     f"{max(s['count'] for s in secrets)} times).")
    if ext:
        facts.append(f"Memorized extraction samples: {ext.get('memorized_total')} of {ext.get('unique_samples')} unique "
                     f"({ext.get('num_samples')} generated).")
    pii = report.get("pii") or {}
    if pii:
        facts.append(f"PII values emitted that occur in the training data: {pii.get('extracted_training_values')}.")
    mem = report.get("membership") or {}
    aucs = {k: s["auc"] for k, s in (mem.get("signals") or {}).items() if s.get("auc") is not None}
    if aucs:
        k = max(aucs, key=aucs.get)
        t = ((mem["signals"][k].get("tpr_at_fpr") or {}).get("0.01") or {}).get("tpr")
        facts.append(f"Membership inference: best signal {k}, AUC {_num(aucs[k])}, TPR at 1% FPR {_num(t)} "
                     f"({mem.get('n_members')} members vs {mem.get('n_nonmembers')} held-out documents).")
    out += [f"- {f}" for f in facts]
    out += ["", "An audit measures what these attacks recover from this model and data; it does not prove that "
                "nothing else leaks. Secrets and PII are redacted; the full evidence is in report.md and report.json.", ""]
    return "\n".join(out)
