"""Render an audit report as one self-contained HTML page (inline CSS, inline PNG figures, no
script, nothing fetched from the network).

Every text the model produced is untrusted: the Jinja2 environment autoescapes everything, and
samples reach the template as plain-text segments, never as markup. Secrets and PII are redacted
unless ``show_secrets``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_mia.report import figures, scorecard
from llm_mia.report.markdown import _fmt as _md_fmt
from llm_mia.report.markdown import (
    planted_strings,
    positive_control_line,
    redact,
    redact_text,
    redaction_spans,
)

_TEMPLATES = Path(__file__).parent / "templates"


def segments(text: str, span: Sequence[int] | None, secrets: Sequence, *, hide: bool) -> list[dict]:
    """``text`` cut into plain-text pieces ``{"text", "mem", "red"}`` for the template.

    ``mem``: inside the memorized span ``span`` ([start, end) characters, or None). ``red``: a
    redacted value, whose ``text`` is already :func:`redact`-ed; a redacted value that overlaps the
    memorized span is shown whole and marked memorized.
    """
    red = redaction_spans(text, secrets) if hide else []
    m0, m1 = (span[0], span[1]) if span else (-1, -1)
    cuts = sorted({0, len(text), *(x for r in red for x in r), *([m0, m1] if span else [])})
    cuts = [c for c in cuts if 0 <= c <= len(text)]
    out: list[dict] = []
    i = 0
    while i < len(cuts) - 1:
        a, b = cuts[i], cuts[i + 1]
        r = next((r for r in red if r[0] <= a < r[1]), None)
        if r is not None:
            piece = {"text": redact(text[r[0]:r[1]]), "mem": r[0] < m1 and m0 < r[1], "red": True}
            while i < len(cuts) - 1 and cuts[i + 1] <= r[1]:
                i += 1
        else:
            piece = {"text": text[a:b], "mem": m0 <= a and b <= m1 and span is not None, "red": False}
            i += 1
        if out and not piece["red"] and not out[-1]["red"] and out[-1]["mem"] == piece["mem"]:
            out[-1]["text"] += piece["text"]
        elif piece["text"]:
            out.append(piece)
    return out


def redact_report(report: Any, secrets: Sequence) -> Any:
    """A copy of the report tree with every planted value replaced by :func:`redact` in every string,
    the model's own outputs in secret records (completions) PII-redacted too, and the PII table's
    values hashed. Hashes, paths and numbers are left alone."""

    vals = planted_strings(secrets)

    def walk(obj):
        if isinstance(obj, str):
            for v in vals:
                if v in obj:
                    obj = obj.replace(v, redact(v))
            return obj
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    out = walk(report)
    for row in out.get("secrets", []):
        for k, v in list(row.items()):
            if isinstance(v, str) and k not in ("id", "kind", "format"):
                row[k] = redact_text(v, secrets)
    for v in (out.get("pii") or {}).get("values", []):
        for k in ("value", "normalized"):
            if isinstance(v.get(k), str):
                v[k] = redact(v[k])
    return out


def _fmt(x, nd: int = 2) -> str:
    """Markdown's number format, plus yes/no for booleans and the JSON tokens "NaN" / "Infinity"."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, str) and x in ("NaN", "Infinity", "-Infinity"):
        return {"NaN": "NaN", "Infinity": "inf", "-Infinity": "-inf"}[x]
    return _md_fmt(x, nd)


def render_html(report: dict, top: Sequence[dict], samples: Sequence[dict], secrets: Sequence, *,
                show_secrets: bool = False, per_ranking: int = 5) -> str:
    """The report as one HTML page: verdict, the scorecard (:mod:`llm_mia.report.scorecard`: one row per
    risk with its light against the policy and a small SVG plot) and the memorized samples, extraction (Carlini table, top samples with the
    memorized span marked), planted secrets (exposure against insertions), membership (log-log
    ROC, model-free baseline), the zlib / perplexity scatter, PII, provenance.

    Args:
        report: the report.json dict (already redacted by :func:`redact_report` when hidden).
        top: rows of top.jsonl (``ranking``, ``rank``, ``text``, ``match_span``, ...).
        samples: rows of samples.jsonl (for the scatter), may be empty.
        secrets: the planted secrets, to redact sample texts.
        show_secrets: show secrets and PII as they are.
        per_ranking: samples shown per ranking.
    """
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    hide = not show_secrets
    if hide:
        report = redact_report(report, secrets)  # idempotent: a report.json already redacted is unchanged
    env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    figs = {}
    png = figures.exposure_png(report.get("secrets", []), report["provenance"].get("settings", {}).get("n_candidates"))
    if png:
        figs["exposure"] = figures.data_uri(png)
    mem = report.get("membership", {})
    per_doc = mem.get("per_doc") or {}
    if per_doc.get("labels"):
        png = figures.roc_png(per_doc["labels"], per_doc.get("scores", {}))
        if png:
            figs["roc"] = figures.data_uri(png)
    png = figures.zlib_scatter_png(samples)
    if png:
        figs["zlib"] = figures.data_uri(png)

    tops = {}
    for name in report["extraction"].get("rankings", {}):  # none when extraction was not measured
        rows = sorted((r for r in top if r["ranking"] == name), key=lambda r: -r["score"])[:per_ranking]
        tops[name] = [dict(r, segments=segments(r["text"], r.get("match_span"), secrets, hide=hide)) for r in rows]
    by_id = {s.id: s for s in secrets}
    secret_rows = []
    for r in report.get("secrets", []):
        s = by_id.get(r["id"])
        val = (s.secret if show_secrets else redact(s.secret)) if s else "?"
        est = {k: r.get(k) for k in figures.EXPOSURE_KEYS if r.get(k) is not None}
        secret_rows.append(dict(r, value=val, estimates=est))
    est_names = [k for k in figures.EXPOSURE_KEYS if any(k in r for r in report.get("secrets", []))]
    signals = []
    for k, v in mem.get("signals", {}).items():
        if "auc" in v:
            t = v.get("tpr_at_fpr", {}).get("0.01", {})
            signals.append({"name": k, "auc": v["auc"], "tpr": t.get("tpr"), "fpr": t.get("realized_fpr"),
                            "below": t.get("below_resolution"),
                            "tpr01": v.get("tpr_at_fpr", {}).get("0.001", {}).get("tpr")})
    leaked = [dict(r, segments=segments(r["text"], r.get("match_span"), secrets, hide=hide))
              for r in scorecard.memorized_samples(top)]
    tmpl = env.get_template("report.html.j2")
    return tmpl.render(card=scorecard.rows(report), leaked=leaked, r=report, prov=report["provenance"], ext=report["extraction"], tops=tops, figs=figs,
                       secret_rows=secret_rows, est_names=est_names, signals=signals, mem=mem,
                       pii=report.get("pii"), verdict=report.get("verdict") or {}, hidden=hide,
                       log2=math.log2, pc_line=positive_control_line(report.get("positive_control")))
