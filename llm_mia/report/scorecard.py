"""The report's first screen: one row per risk with its figure, a traffic light against the policy and a
small inline plot, then the memorized samples. Used by :mod:`llm_mia.report.html` and
:mod:`llm_mia.report.markdown`; reads only ``report.json`` fields (and top.jsonl rows for the samples).

The risks and their sources: verbatim extraction (Carlini et al. 2021, USENIX Security, sec. 5: samples
holding a verbatim training span), secrets extracted and exposure (Carlini et al. 2019, "The Secret
Sharer", sec. 4, exposure in bits), membership at low FPR (Carlini et al. 2022, "Membership Inference
Attacks From First Principles", sec. 3: TPR at 1% FPR, log-log ROC), PII emitted (training PII values in
the samples), discoverable memorization (Carlini et al. 2023, "Quantifying Memorization", sec. 3).
"""

from __future__ import annotations

import base64
import io as _io
import math
from collections.abc import Sequence

import numpy as np

from llm_mia.core.io import to_float

#: (key, title, the policy limits that judge it), in the order of the scorecard's rows.
RISKS = (
    ("verbatim", "Verbatim extraction", ("max_memorized_samples",)),
    ("secrets", "Secrets extracted and exposure",
     ("max_extracted_secrets", "max_canary_exposure_bits", "max_queries_per_secret")),
    ("membership", "Membership at low FPR",
     ("max_membership_tpr_at_1pct_fpr", "max_audited_epsilon", "max_canary_tpr_at_1pct_fpr")),
    ("pii", "PII emitted", ("max_extracted_training_pii",)),
    ("discoverable", "Discoverable memorization", ("max_discoverable_rate",)),
)

#: Traffic-light colours and their words: a limit failed (or could not be checked), every limit of the
#: row passed, some limit inconclusive or not measured, no limit of the policy judges the row / no policy.
LIGHTS = {"red": "FAIL", "green": "pass", "amber": "inconclusive", "grey": "no limit"}


def _f(v) -> float:
    """A report number as float (JSON "NaN" / "Infinity" strings included); NaN when absent or not a number."""
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return to_float(v)
    except (TypeError, ValueError):
        return math.nan


def light(verdict: dict | None, names: Sequence[str]) -> tuple[str, str]:
    """The traffic light of one row: ``(colour, words)`` from the verdict's checks named in ``names``.

    red: a check failed or errored; amber: none failed, one is inconclusive or not measured; green:
    every check passed; grey: no policy, or the policy sets none of ``names``.
    """
    if not verdict or not verdict.get("policy"):
        return "grey", "no policy"
    checks = [c for c in verdict.get("checks") or [] if c.get("name") in names]
    if not checks:
        return "grey", LIGHTS["grey"]
    status = [c.get("status") or ("passed" if c.get("passed") else "failed") for c in checks]
    if any(s in ("failed", "error") for s in status):
        return "red", LIGHTS["red"]
    if all(s == "passed" for s in status):
        return "green", LIGHTS["green"]
    return "amber", "not measured" if "not measured" in status and "inconclusive" not in status else LIGHTS["amber"]


def _extracted(s: dict) -> bool:
    return bool(s.get("greedy_extracted") or s.get("beam_extracted") or s.get("surfaced_in_samples"))


def _secrets_figure(report: dict) -> str:
    rows = report.get("secrets") or []
    ins = [s for s in rows if s.get("count", 0) >= 1]
    if not ins:
        return "not measured (no planted secrets)"
    hi = [s for s in ins if s.get("count", 0) >= 16]
    ctl = [s for s in rows if s.get("count", 0) == 0]
    text = f"{sum(map(_extracted, ins))} of {len(ins)} inserted secrets extracted"
    if hi:
        text += f" ({sum(map(_extracted, hi))} of {len(hi)} inserted 16+ times)"
    if ctl:
        text += f", {sum(map(_extracted, ctl))} of {len(ctl)} never-inserted controls"
    exp = [e for e in (_f(s.get("exposure_rank")) for s in ins) if math.isfinite(e)]
    if exp:
        n = (report.get("provenance") or {}).get("settings", {}).get("n_candidates")
        text += f"; highest rank exposure {max(exp):.2f} bits" + (f" (ceiling {math.log2(n):.2f})" if n else "")
    return text


def _best_signal(mem: dict) -> tuple[str, dict] | None:
    sigs = {k: v for k, v in (mem.get("signals") or {}).items() if "tpr_at_fpr" in v}
    if not sigs:
        return None
    k = max(sigs, key=lambda k: (_f(sigs[k]["tpr_at_fpr"].get("0.01", {}).get("tpr")), _f(sigs[k].get("auc"))))
    return k, sigs[k]


def _membership_figure(report: dict) -> str:
    mem = report.get("membership") or {}
    best = _best_signal(mem)
    if best is None:
        return "not measured"
    k, v = best
    text = (f"TPR {_f(v['tpr_at_fpr'].get('0.01', {}).get('tpr')):.3f} at 1% FPR ({k}, AUC {_f(v.get('auc')):.3f}), "
            f"{mem.get('n_members')} members vs {mem.get('n_nonmembers')} held-out")
    base = _f((mem.get("baseline") or {}).get("auc"))
    return text + (f"; model-free baseline AUC {base:.3f}" if math.isfinite(base) else "")


def figures_text(report: dict) -> dict[str, str]:
    """One sentence per risk key of :data:`RISKS`, with its figure (counts, bits, TPR, rate) from the report."""
    ext = report.get("extraction") or {}
    pii, disc = report.get("pii"), report.get("discoverable") or {}
    n_min = ((report.get("provenance") or {}).get("settings") or {}).get("memorized_min_tokens", 50)
    verbatim = (f"{ext.get('memorized_total', 0)} of {ext.get('unique_samples', ext.get('num_samples'))} unique samples "
                f"hold a verbatim training span of {n_min} tokens ({ext.get('memorized_unique_in_any_top', 0)} in a top-"
                f"{ext.get('top_n', 100)} list)")
    pii_text = (f"{pii.get('extracted_training_values', 0)} training PII values emitted (of {pii.get('n_values', 0)} "
                "distinct PII values in the samples)") if pii else "not measured"
    rate = _f(disc.get("greedy_rate"))
    disc_text = (f"{rate:.1%} ({disc.get('n_greedy')} of {disc.get('n_examples')} training examples give back their "
                 f"next {disc.get('suffix_len', 50)} tokens greedily)") if math.isfinite(rate) else "not measured"
    return {"verbatim": verbatim, "secrets": _secrets_figure(report), "membership": _membership_figure(report),
            "pii": pii_text, "discoverable": disc_text}


def rows(report: dict, *, plots: bool = True) -> list[dict]:
    """The scorecard: one dict per risk of :data:`RISKS` with ``key``, ``title``, ``figure`` (a
    sentence), ``light`` and ``light_text`` (:func:`light` against ``report["verdict"]``) and ``plot``
    (an ``data:image/svg+xml`` URI of a small plot, or None; only when ``plots``)."""
    text, verdict = figures_text(report), report.get("verdict")
    svg = {"secrets": exposure_svg, "membership": roc_svg} if plots else {}
    out = []
    for key, title, names in RISKS:
        colour, words = light(verdict, names)
        plot = svg[key](report) if key in svg else None
        out.append({"key": key, "title": title, "figure": text[key], "light": colour, "light_text": words,
                    "plot": _uri(plot) if plot else None})
    return out


def markdown(report: dict) -> list[str]:
    """The scorecard as Markdown lines: a table (risk, figure, against the policy) and a blank line."""
    out = ["| risk | figure | against the policy |", "|---|---|---|"]
    for r in rows(report, plots=False):
        mark = {"red": "🔴", "green": "🟢", "amber": "🟠", "grey": "⚪"}[r["light"]]
        out.append(f"| {r['title']} | {r['figure'].replace('|', '/')} | {mark} {r['light_text']} |")
    return [*out, ""]


def memorized_samples(top: Sequence[dict], k: int = 5) -> list[dict]:
    """The samples shown first: memorized rows of top.jsonl (one per sample, any ranking), longest
    verbatim match first, at most ``k``. Empty when no top sample is memorized."""
    seen, out = set(), []
    for r in sorted((r for r in top if r.get("memorized")), key=lambda r: -_f(r.get("longest_match_tokens"))):
        key = (r.get("strategy"), r.get("id"), r.get("text"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out[:k]


def _uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _svg(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout(pad=0.3)
    buf = _io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: a few kB
        fig.savefig(buf, format="svg")
    plt.close(fig)
    return buf.getvalue()


def _small_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6, 1.55))
    ax.tick_params(labelsize=6)
    return fig, ax


def exposure_svg(report: dict) -> bytes | None:
    """Rank exposure (bits) of each planted secret against its insertion count (symlog x), extracted
    secrets in red, the chance level 1/ln 2 dashed; SVG bytes, None without exposures."""
    pts = [(s.get("count", 0), _f(s.get("exposure_rank")), _extracted(s)) for s in report.get("secrets") or []]
    pts = [p for p in pts if math.isfinite(p[1])]
    if not pts:
        return None
    fig, ax = _small_axes()
    for flag, colour in ((False, "#5f6368"), (True, "#d93025")):
        sel = [p for p in pts if p[2] is flag]
        if sel:
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=8, c=colour,
                       label="extracted" if flag else "not extracted")
    ax.axhline(1 / math.log(2), ls="--", c="grey", lw=0.6)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(-0.4, max(2, max(p[0] for p in pts)) * 1.4)
    ax.set_xlabel("insertions", fontsize=6)
    ax.set_ylabel("exposure (bits)", fontsize=6)
    ax.legend(fontsize=5, loc="upper left", frameon=False)
    return _svg(fig)


def roc_svg(report: dict) -> bytes | None:
    """Log-log ROC of the best membership signal (:func:`_best_signal`) on the report's per-document
    scores, chance dashed; SVG bytes, None without per-document scores."""
    from sklearn.metrics import roc_curve

    mem = report.get("membership") or {}
    per_doc, best = mem.get("per_doc") or {}, _best_signal(mem)
    if best is None or best[0] not in (per_doc.get("scores") or {}) or len(set(per_doc.get("labels") or [])) < 2:
        return None
    y = np.asarray(per_doc["labels"])
    s = np.asarray([_f(x) for x in per_doc["scores"][best[0]]], dtype=np.float64)
    keep = ~np.isnan(s)
    if len(set(y[keep])) < 2:
        return None
    s = np.clip(s[keep], -np.finfo(np.float64).max, np.finfo(np.float64).max)
    fpr, tpr, _ = roc_curve(y[keep], s)
    fig, ax = _small_axes()
    ax.plot(np.maximum(fpr, 1e-3), np.maximum(tpr, 1e-3), c="#d93025", lw=1, label=best[0])
    ax.plot([1e-3, 1], [1e-3, 1], ls="--", c="grey", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPR", fontsize=6)
    ax.set_ylabel("TPR", fontsize=6)
    ax.legend(fontsize=5, loc="lower right", frameon=False)
    return _svg(fig)
