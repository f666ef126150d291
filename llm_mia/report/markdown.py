"""Render an audit report as Markdown; secrets and PII are redacted unless asked otherwise."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence

from llm_mia.data.pii import find_pii
from llm_mia.report import scorecard

_REDACTED = re.compile(r"[^…]{0,2}…[0-9a-f]{8}")


def redact(value: str) -> str:
    """First two characters, an ellipsis and 8 hex digits of the value's SHA-256: ``48…1f2e3d4c``.

    Idempotent: a value that already has this shape is returned unchanged.
    """
    if _REDACTED.fullmatch(value):
        return value
    return value[:2] + "…" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]


def planted_strings(secrets: Sequence) -> list[str]:
    """Every planted secret and PII field value, longest first (a value may contain another)."""
    vals = {v for s in secrets for v in (s.secret, *(str(x) for x in s.fields.values())) if v}
    return sorted(vals, key=len, reverse=True)


#: Six or more digits, single spaces, dashes or dots allowed between them: a card, phone or ID
#: number the model mangled (a wrong digit breaks Luhn or a phone number's validity, so the PII
#: detectors pass it over) still shows most of a training value. Redacted by default.
_DIGIT_RUN = re.compile(r"\d(?:[ \-.]?\d){5,}")


def redaction_spans(text: str, secrets: Sequence) -> list[tuple[int, int]]:
    """Merged [start, end) character ranges of ``text`` hidden by default: every occurrence of a
    planted secret or planted PII field, every detected PII value, and every run of 6+ digits."""
    spans = []
    for v in planted_strings(secrets):
        i = text.find(v)
        while i >= 0:
            spans.append((i, i + len(v)))
            i = text.find(v, i + 1)
    spans += [(h.start, h.end) for h in find_pii(text)]
    spans += [m.span() for m in _DIGIT_RUN.finditer(text)]
    spans.sort()
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def redact_text(text: str, secrets: Sequence) -> str:
    """``text`` with every range of :func:`redaction_spans` replaced by :func:`redact` of it."""
    for a, b in reversed(redaction_spans(text, secrets)):
        text = text[:a] + redact(text[a:b]) + text[b:]
    return text


def positive_control_line(pc: dict | None) -> str | None:
    """One sentence on report.json ``positive_control`` (:mod:`llm_mia.audit.twin`) beside the target's
    result, e.g. "finds 2 of 2 ... in a model made to memorize them; 0 of 2 in yours"; None without a record.

    Counts are secrets inserted >= ``control_insertions`` times that greedy or beam decoding gave back.
    """
    if not pc:
        return None
    n, k = pc.get("secrets_planted", 0), pc.get("control_insertions")
    yours = f"{pc.get('target_found', 0)} of {n} in yours"
    if pc.get("status") in ("detected", "not_detected"):
        known = "known to have memorized them" if pc["status"] == "detected" else "made to memorize them"
        return (f"Positive control ({pc['status'].replace('_', ' ')}): the audit finds {pc.get('secrets_found', 0)} of "
                f"{n} secrets inserted >= {k} times in a model {known} ({pc.get('model')}, "
                f"{pc.get('seconds', 0.0):.1f} s); {yours}.")
    return f"Positive control {pc.get('status')}: {pc.get('reason')}; {yours}."


def _fmt(x, nd=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{nd}f}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c) if not isinstance(c, str) else c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


def _mem_cell(cell: dict, prefix: str = "") -> str | int:
    """A Carlini table cell: ``verbatim / near-verbatim`` counts, or the verbatim count alone (older reports)."""
    near = cell.get(f"{prefix}near_memorized")
    return cell[f"{prefix}memorized"] if near is None else f"{cell[f'{prefix}memorized']} / {near}"


def _snippet(text: str, n: int = 160) -> str:
    t = " ".join(text.split())
    return (t[:n] + "…") if len(t) > n else t


def code_span(text: str) -> str:
    """``text`` as one Markdown code span (CommonMark 6.1): delimited by a backtick run longer than
    any inside it, padded with a space when it starts or ends with a backtick (or a space)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _extracted(row: dict, how: str) -> str:
    """"yes (context)" / "no" for greedy or beam extraction (the context that gave the secret back)."""
    if not row.get(f"{how}_extracted"):
        return "no"
    ctx = row.get(f"{how}_context")
    return f"yes ({ctx})" if ctx else "yes"


def render_markdown(report: dict, top: list[dict], secrets: Sequence, *, show_secrets: bool = False) -> str:
    """The report as Markdown: verdict and scorecard first, then findings, extraction, secrets, membership, PII, provenance.

    Args:
        report: the audit report (``report.json``): ``provenance``, ``extraction``, ``observations``,
            ``exposure_by_count``, ``secrets`` and, when present, ``verdict``, ``membership``, ``pii``.
        top: the top-ranked samples (``ranking``, ``rank``, ``score``, ``text``, ``memorized``,
            ``longest_match_tokens``), three of each ranking shown.
        secrets: the planted secrets (``id``, ``secret``, ``fields``), for the secrets table and redaction.
        show_secrets: print secrets and PII as they are; default: redacted (:func:`redact_text`).

    Returns:
        The Markdown text, one ``##`` section each for findings, extraction, planted secrets, membership
        (when scored), PII (when detected) and provenance.

    Raises:
        KeyError: a section's required key is missing from ``report``.
    """
    hide = (lambda t: t) if show_secrets else (lambda t: redact_text(t, secrets))
    prov = report["provenance"]
    ext = report["extraction"]
    out = _header_section(report)
    out += _extraction_section(ext, prov, top, hide)
    out += _secrets_section(report, secrets, show_secrets=show_secrets)
    out += _membership_section(report.get("membership", {}))
    out += _pii_section(report.get("pii"), show_secrets=show_secrets)
    out += _provenance_section(report, show_secrets=show_secrets)
    return "\n".join(out)


def _header_section(report: dict) -> list[str]:
    """Title, what was audited (model, reference, data), the release-gate verdict, the scorecard
    (:func:`llm_mia.report.scorecard.markdown`) and the findings."""
    prov = report["provenance"]
    out = ["# llm_mia audit report", ""]
    data = (f"corpus {code_span(str(prov['corpus']))}" if prov.get("corpus") else
            f"members {code_span(str(prov.get('members')))}, non-members {code_span(str(prov.get('nonmembers')))}")
    out += [f"Model {code_span(str(prov['model']))}"
            + (f", reference {code_span(str(prov['reference']))}" if prov.get("reference") else "")
            + (f" ({prov['reference_source']})" if prov.get("reference_source") else "") + f", {data}.", ""]
    v = report.get("verdict")
    if v:
        out += [f"**Verdict: {v['line']}**", ""]
        if v.get("policy"):
            out += [f"Release gate policy {code_span(str(v['policy']))}.", ""]
    out += scorecard.markdown(report)
    out += ["## Findings", ""] + [f"- {o}" for o in report["observations"]] + [""]
    return out


def _extraction_section(ext: dict, prov: dict, top: list[dict], hide: Callable[[str], str]) -> list[str]:
    """Extraction (Carlini et al. 2021): sampling settings, the paper's table 3, rankings, top samples."""
    if ext.get("skipped"):  # e.g. a text-only endpoint (llm_mia.audit.text_only)
        return ["## Extraction (Carlini et al. 2021)", "", f"Not measured: {ext['skipped']}.", ""]
    strategies = ext.get("strategies", ["top-k"])
    out = ["## Extraction (Carlini et al. 2021)", "",
           f"{ext['num_samples']} samples of {ext['max_new_tokens']} new tokens "
           f"({ext.get('samples_per_strategy', ext['num_samples'])} "
           f"per strategy: {', '.join(strategies)}; top-k 40, seed {ext['seed']}), "
           f"{ext['unique_samples']} after dedup; {ext['memorized_total']} unique samples hold a verbatim training "
           f"span of at least {prov['settings']['memorized_min_tokens']} tokens"
           + (f", {ext['near_memorized_total']} a near-verbatim one (token edit similarity >= {ext['near_similarity']} "
              f"over {ext['near_window']} tokens)." if "near_memorized_total" in ext else "."), ""]
    table = ext.get("carlini_table")
    if table:
        names = [n for n in ext["rankings"]]
        out += [f"Memorized samples among the top {ext['top_n']} of each (strategy, ranking), the paper's table 3:", ""]
        rows = [[st] + [_mem_cell(table[st][n]) for n in names] + [_mem_cell(table[st], "unique_")] for st in strategies]
        out.append(_table(["strategy"] + names + ["unique"], rows))
        if "near_memorized_total" in ext:
            out += ["", f"Cells read verbatim / near-verbatim (token edit similarity >= {ext['near_similarity']} over "
                        f"{ext['near_window']} tokens, Ippolito et al. 2023). Near-verbatim samples in all: "
                        f"{ext['near_memorized_total']} (verbatim: {ext['memorized_total']})."]
        out += ["", f"Unique memorized samples in any top list, all strategies: "
                    f"{ext.get('memorized_unique_in_any_top', ext['memorized_in_any_top'])}.", ""]
    shown = min(ext["top_n"], ext["unique_samples"])
    out.append(_table(["ranking (all strategies)", f"memorized in top {shown}", "secrets surfaced", "PII hits in top"],
                      [[k, v["memorized"], len(v["secrets"]), v["pii_hits"]] for k, v in ext["rankings"].items()]))
    out.append("")
    for name in ext["rankings"]:
        rows = sorted((r for r in top if r["ranking"] == name), key=lambda r: -r["score"])[:3]
        if not rows:
            continue
        out += [f"Top samples by **{name}**:", ""]
        for r in rows:
            tag = "memorized" if r["memorized"] else "near-verbatim" if r.get("near_memorized") else "not memorized"
            out.append(f"{r['rank']}. ({tag}, longest match {r['longest_match_tokens']} tokens) {code_span(_snippet(hide(r['text'])))}")
        out.append("")
    return out


def _secrets_section(report: dict, secrets: Sequence, *, show_secrets: bool) -> list[str]:
    """Planted secrets (Carlini et al. 2019): exposure by insertion count, then every secret (folded)."""
    prov = report["provenance"]
    n_ref = prov["settings"]["n_candidates"]
    out = ["## Planted secrets (Carlini et al. 2019)", "",
           f"Exposure in bits (higher = more exposed): *rank* against {n_ref} random candidates from each secret's "
           f"space (at most log2 N = {math.log2(n_ref):.2f} bits), *exact* over the whole space where it has at most "
           f"{prov['settings'].get('exact_limit', 0)} members, *extrapolated* from a skew-normal fitted to the "
           "candidates (inf: beyond the fit's numerical range). Extraction by greedy decoding and beam search of "
           "the prefix, and the probability that one top-40 sample continuing the prefix is the secret. *Recovered*: "
           "characters of the random part the best greedy, beam or sampled completion reproduces in place; *bits "
           "left*: log2 of the members of the secret's space that agree with them (an attacker's guessing left; "
           "lower = more exposed).", ""]
    if report.get("exposure_plot"):
        out += [f"![exposure against insertion count]({report['exposure_plot']})", ""]
    out.append(_table(["insertions", "kind", "secrets", "rank (bits)", "exact (bits)", "extrapolated (bits)",
                       "greedy extracted", "beam extracted", "seen in samples", "fewest bits left"],
                      [[g["count"], g["kind"], g["n"], g["mean_exposure_rank"], g.get("mean_exposure_exact"),
                        g.get("mean_exposure_extrapolated"), f"{g['greedy_extracted']}/{g['n']}",
                        f"{g.get('beam_extracted', 0)}/{g['n']}", f"{g['surfaced_in_samples']}/{g['n']}",
                        g.get("min_remaining_guess_bits")]
                       for g in report["exposure_by_count"]]))
    out.append("")
    line = positive_control_line(report.get("positive_control"))
    if line:
        out += [line, ""]
    by_id = {s.id: s for s in secrets}
    rows = []
    for r in report["secrets"]:
        s = by_id.get(r["id"])
        val = (s.secret if show_secrets else redact(s.secret)) if s else "?"
        p = r.get("sample_probability")
        rows.append([r["id"], r["kind"], r["count"], val, r["exposure_rank"], r.get("exposure_exact"),
                     r.get("exposure_extrapolated"), _extracted(r, "greedy"), _extracted(r, "beam"),
                     f"{p:.3g}" if isinstance(p, float) else "-",
                     r.get("samples_for_half"), r.get("recovered_chars"), r.get("remaining_guess_bits")])
    out += ["<details><summary>Every secret</summary>", "",
            _table(["id", "kind", "insertions", "secret", "rank (bits)", "exact (bits)", "extrapolated (bits)",
                    "greedy", "beam", "P(top-40 sample = secret)", "samples for 50 %", "recovered chars",
                    "bits left"], rows),
            "", "</details>", ""]
    return out


def _membership_section(mem: dict) -> list[str]:
    """Membership inference: AUC and TPR at low FPR per signal and for the model-free baseline (or nothing)."""
    if not mem.get("signals"):
        return []
    out = ["## Membership inference (members vs held-out documents)", "",
           f"{mem['n_members']} training documents against {mem['n_nonmembers']} held-out documents.", ""]
    rows = []
    for k, v in mem["signals"].items():
        if "auc" in v:
            t1 = v["tpr_at_fpr"].get("0.01", {})
            rows.append([k, v["auc"], v["tpr_at_fpr"].get("0.001", {}).get("tpr"), t1.get("tpr"),
                         t1.get("realized_fpr")])
    base = mem.get("baseline") or {}
    if base.get("auc") is not None:
        t1 = base["tpr_at_fpr"].get("0.01", {})
        rows.append(["model-free baseline (text features)", base["auc"], base["tpr_at_fpr"].get("0.001", {}).get("tpr"),
                     t1.get("tpr"), t1.get("realized_fpr")])
    out.append(_table(["signal", "AUC", "TPR at 0.1% FPR", "TPR at 1% FPR", "realized FPR"], rows))
    out.append("")
    sh = mem.get("shadow")
    if sh:
        out += [f"lira_*, rmia_online/offline and shokri use {sh['n_models']} shadow models ({sh['in_per_text'][0]}-"
                f"{sh['in_per_text'][1]} IN and {sh['out_per_text'][0]}-{sh['out_per_text'][1]} OUT per document; "
                f"population {sh['n_population']} texts; LiRA variance {sh['lira_variance']}).", ""]
    if base.get("warning"):
        out += [f"**Warning:** {base['warning']}.", ""]
    return out + _records_lines(mem)


def _records_lines(mem: dict, n: int = 10) -> list[str]:
    """The members most at risk (report.json membership.records, previews already redacted) and how many are flagged."""
    summ = mem.get("records_summary")
    if not summ:
        return []
    rows = [[r["member"], code_span(r.get("preview", "")), r["score"], _fmt(r["fpr"], 4), r["fpr_from"]]
            for r in mem.get("records", [])[:n]]
    return [f"Records at risk ({summ['signal']}, per-record calibrated FPR): {summ['n_flagged']['0.001']} of "
            f"{summ['n_records']} members flagged at 0.1% FPR, {summ['n_flagged']['0.01']} at 1%.", "",
            _table(["member", "text (redacted)", "score", "calibrated FPR", "from"], rows), ""]


def _pii_section(pii: dict | None, *, show_secrets: bool) -> list[str]:
    """PII in the samples: detectors, hit counts, planted-PII precision / recall, the first 50 values (or nothing)."""
    if not pii:
        return []
    pl = pii["planted"]
    det = pii["detectors"]
    out = ["## PII in the samples", "",
           f"Detectors: {', '.join(det['patterns'])}"
           + (f"; Presidio: {', '.join(det['presidio'])}" if det["presidio"]
              else f" (patterns only: {det['presidio_note']})")
           + (f"; phone regions {', '.join(det['phone_regions'])}" if det.get("phone_regions") else "")
           + ".", "",
           f"{pii['n_hits']} hits, {pii['n_values']} distinct values, {pii['extracted_training_values']} of them "
           f"training data. Planted PII (Lukas et al. 2023): precision {_fmt(pl['precision'], 3)} "
           f"({pl['n_emitted_in_training']}/{pl['n_emitted']}), recall {_fmt(pl['recall'], 3)} "
           f"({pl['n_planted_extracted']}/{pl['n_planted']}).", ""]
    rows = [[v["type"], v["value"] if show_secrets else redact(v["value"]),
             f"{v['first_sample']} ({v['span'][0]}-{v['span'][1]})",
             v["n_samples"], "-" if v["train_count"] is None else str(v["train_count"]),
             f"{v['secret']} ({v['field']})" if v["secret"] else "-"] for v in pii["values"][:50]]
    if rows:
        out.append(_table(["type", "value", "sample (span)", "samples", "in training (x)", "planted secret"], rows))
        out.append("")
    return out


def _provenance_section(report: dict, *, show_secrets: bool) -> list[str]:
    """Provenance: weights and data digests, seed, versions, wall time, creation, the redaction note."""
    prov = report["provenance"]
    t = prov["timings"]
    return ["## Provenance", "",
            f"- weights sha256 `{prov['model_weights_sha256']}`; train.jsonl sha256 `{prov['train_sha256']}`",
            f"- seed {prov['seed']}; versions " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
            "- wall time: " + ", ".join(f"{k} {v}" for k, v in t.items()),
            f"- created {report['created']}; report schema {report['schema_version']}",
            "" if show_secrets else "- secrets and PII are redacted (first two characters + SHA-256 prefix); `--show-secrets` reveals them.",
            ""]
