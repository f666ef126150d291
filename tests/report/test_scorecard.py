"""The first-screen scorecard: traffic lights from the verdict's checks, each risk's figure from a
hand-made report, the memorized samples first, the small SVG plots, the Markdown table."""

from __future__ import annotations

import base64
import re

from llm_mia.report import scorecard


def _secret(i, count, rank, **kw):
    return {"id": f"s{i}", "kind": "canary", "count": count, "exposure_rank": rank, **kw}


REPORT = {
    "provenance": {"settings": {"n_candidates": 1024, "memorized_min_tokens": 50}},
    "extraction": {"memorized_total": 3, "unique_samples": 90, "memorized_unique_in_any_top": 2, "top_n": 100},
    "secrets": [_secret(0, 0, 1.2), _secret(1, 0, 2.0, beam_extracted=True), _secret(2, 4, 6.0),
                _secret(3, 16, 10.0, greedy_extracted=True), _secret(4, 32, "Infinity"),
                _secret(5, 32, "NaN", surfaced_in_samples=1)],
    "membership": {"n_members": 4, "n_nonmembers": 4, "baseline": {"auc": 0.5},
                   "signals": {"loss": {"auc": 0.75, "tpr_at_fpr": {"0.01": {"tpr": 0.25}}},
                               "min_k": {"auc": 0.875, "tpr_at_fpr": {"0.01": {"tpr": 0.5}}}},
                   "per_doc": {"labels": [1, 1, 1, 1, 0, 0, 0, 0],
                               "scores": {"min_k": [9, 8, 2, 1, 3, 0, -1, "NaN"], "loss": [1] * 8}}},
    "pii": {"extracted_training_values": 2, "n_values": 7},
    "discoverable": {"greedy_rate": 0.04, "n_greedy": 4, "n_examples": 100, "suffix_len": 50},
}


def _check(name, status):
    return {"name": name, "status": status, "passed": status == "passed"}


def test_lights_follow_the_verdicts_checks():
    names = ("max_extracted_secrets", "max_canary_exposure_bits")
    assert scorecard.light(None, names) == ("grey", "no policy")
    assert scorecard.light({"policy": None, "checks": []}, names) == ("grey", "no policy")
    v = {"policy": "p.toml", "checks": [_check("max_extracted_secrets", "passed")]}
    assert scorecard.light(v, names) == ("green", "pass")
    assert scorecard.light(v, ("max_discoverable_rate",)) == ("grey", "no limit")
    v["checks"].append(_check("max_canary_exposure_bits", "inconclusive"))
    assert scorecard.light(v, names) == ("amber", "inconclusive")
    v["checks"][1]["status"] = "not measured"
    assert scorecard.light(v, names) == ("amber", "not measured")
    v["checks"][0]["status"] = "failed"  # one failed check makes the row red
    assert scorecard.light(v, names) == ("red", "FAIL")
    v["checks"] = [_check("max_canary_exposure_bits", "error")]
    assert scorecard.light(v, names) == ("red", "FAIL")


def test_figures_from_a_hand_made_report():
    text = scorecard.figures_text(REPORT)
    assert text["verbatim"] == "3 of 90 unique samples hold a verbatim training span of 50 tokens (2 in a top-100 list)"
    # inserted: s2..s5 (4); extracted among them s3 (greedy) and s5 (in samples); 16+: s3, s4, s5; control s1 (beam)
    assert text["secrets"] == ("2 of 4 inserted secrets extracted (2 of 3 inserted 16+ times), 1 of 2 never-inserted "
                               "controls; highest rank exposure 10.00 bits (ceiling 10.00)")
    assert text["membership"] == ("TPR 0.500 at 1% FPR (min_k, AUC 0.875), 4 members vs 4 held-out; "
                                  "model-free baseline AUC 0.500")
    assert text["pii"] == "2 training PII values emitted (of 7 distinct PII values in the samples)"
    assert text["discoverable"] == "4.0% (4 of 100 training examples give back their next 50 tokens greedily)"
    empty = scorecard.figures_text({"extraction": {}})
    assert empty["secrets"].startswith("not measured") and empty["membership"] == "not measured"
    assert empty["pii"] == empty["discoverable"] == "not measured"


def test_rows_in_order_with_small_svg_plots():
    v = {"policy": "p.toml", "checks": [_check("max_membership_tpr_at_1pct_fpr", "failed"),
                                        _check("max_extracted_training_pii", "passed")]}
    rows = scorecard.rows({**REPORT, "verdict": v})
    assert [r["key"] for r in rows] == ["verbatim", "secrets", "membership", "pii", "discoverable"]
    assert [r["light"] for r in rows] == ["grey", "grey", "red", "green", "grey"]
    plots = {r["key"]: r["plot"] for r in rows}
    assert plots["verbatim"] is None and plots["pii"] is None
    for key in ("secrets", "membership"):
        assert plots[key].startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(plots[key].split(",", 1)[1])
        assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
        assert all(h.startswith(b"#") for h in re.findall(rb'href="([^"]*)"', svg))  # nothing fetched
        assert len(svg) < 60_000
    assert scorecard.roc_svg({"membership": {}}) is None and scorecard.exposure_svg({"secrets": []}) is None


def test_memorized_samples_first_longest_match_first():
    top = [{"ranking": "perplexity", "strategy": "top-k", "id": 1, "text": "a", "memorized": False,
            "longest_match_tokens": 99},
           {"ranking": "perplexity", "strategy": "top-k", "id": 2, "text": "b", "memorized": True,
            "longest_match_tokens": 60},
           {"ranking": "zlib", "strategy": "top-k", "id": 2, "text": "b", "memorized": True,
            "longest_match_tokens": 60},  # the same sample in another ranking: shown once
           {"ranking": "zlib", "strategy": "internet", "id": 2, "text": "c", "memorized": True,
            "longest_match_tokens": 80}]
    got = scorecard.memorized_samples(top)
    assert [(r["strategy"], r["id"]) for r in got] == [("internet", 2), ("top-k", 2)]
    assert scorecard.memorized_samples(top[:1]) == []


def test_markdown_table():
    lines = scorecard.markdown({**REPORT, "verdict": {"policy": "p.toml",
                                                      "checks": [_check("max_discoverable_rate", "failed")]}})
    assert lines[0] == "| risk | figure | against the policy |" and lines[-1] == ""
    assert len(lines) == 2 + 5 + 1
    assert lines[-2].startswith("| Discoverable memorization | 4.0% ") and lines[-2].endswith("| 🔴 FAIL |")
    assert lines[2].endswith("| ⚪ no limit |")
