"""CI outputs carry the verdict's three outcomes and each figure's confidence interval, derived from
the one Verdict (SARIF result properties, JUnit case properties, the model card's limits table)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from llm_mia.audit.policy import evaluate, parse_policy
from llm_mia.report.ci import interval_text
from llm_mia.report.junit import junit_xml
from llm_mia.report.modelcard import render_modelcard
from llm_mia.report.sarif import sarif_log


def _report(R=2000):
    """One secret at rank 1 of R references (it outranks them all), nothing extracted, twin detected."""
    return {"schema_version": 1, "extraction": {"memorized_total": 0}, "pii": {"extracted_training_values": 0},
            "provenance": {"model": "m"},
            "secrets": [{"id": "s0", "count": 4, "exposure_rank": math.log2(R), "n_references": R,
                         "greedy_extracted": False, "surfaced_in_samples": 0}],
            "positive_control": {"status": "detected", "secrets_found": 8, "secrets_planted": 8}}


def test_interval_text_spells_bounds_and_infinity():
    assert interval_text({"interval": [9.3812, math.inf]}) == "[9.38, inf]"
    assert interval_text({"interval": [0.0, 0.25]}) == "[0, 0.25]"
    assert interval_text({"interval": None}) == "" and interval_text({}) == ""


def test_sarif_junit_and_model_card_show_the_interval_of_the_verdict():
    R = 2000
    rep = _report(R)
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 12.0, "max_extracted_secrets": 0}}))
    assert v.status == "INCONCLUSIVE"
    # rank 1 of R, one secret: Clopper-Pearson with 0 successes at alpha / 2 (the other half is the
    # rank-1 count test's), q_hi = 1 - (alpha / 2)^(1/R)
    lo = -math.log2(1 - 0.025 ** (1 / R))
    want = f"[{lo:.3g}, inf]"
    d = {**v.to_dict(), "policy": "p.toml"}
    exp = next(c for c in d["checks"] if c["name"] == "max_canary_exposure_bits")
    assert exp["status"] == "inconclusive" and interval_text(exp) == want

    res = sarif_log(rep, d)["runs"][0]["results"]
    got = [r for r in res if r["ruleId"] == "llm-mia/max_canary_exposure_bits"]
    assert len(got) == 1 and got[0]["properties"]["interval"] == want
    assert got[0]["properties"]["check_status"] == "inconclusive" and got[0]["level"] == "warning"

    root = ET.fromstring(junit_xml(rep, d).split("\n", 1)[1])
    case = next(c for c in root.iter("testcase") if c.get("name") == "max_canary_exposure_bits")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props == {"interval": want, "status": "inconclusive"} and case.find("skipped") is not None
    count = next(c for c in root.iter("testcase") if c.get("name") == "max_extracted_secrets")
    assert count.find("skipped") is None and count.find("failure") is None  # an observed count of 0 passes

    card = render_modelcard({**rep, "verdict": d})
    row = next(line for line in card.splitlines() if line.startswith("| max_canary_exposure_bits"))
    assert f"| {want} | inconclusive" in row
    assert "| confidence interval |" in card
