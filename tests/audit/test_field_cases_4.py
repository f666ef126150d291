"""Field cases batch 4: the release gate's CI outputs (exit code, SARIF, JUnit) derived from the
verdict, each check with its own control."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from llm_mia.audit.policy import LIMITS, evaluate, parse_policy
from llm_mia.report.junit import junit_xml
from llm_mia.report.sarif import RULES, sarif_log
from tests.audit.test_gate import _sarif_schema
from tests.conftest import run_cli


def _disc_report(n_examples=4, n_greedy=0, n_non=5):
    return {"schema_version": 1, "membership": {"n_nonmembers": n_non, "signals": {}},
            "discoverable": {"greedy_rate": n_greedy / n_examples if n_examples else None,
                             "n_greedy": n_greedy, "n_examples": n_examples}}


def _gate(tmp_path, capsys, report, policy_text):
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "p.toml").write_text(policy_text)
    sarif, junit = tmp_path / "g.sarif", tmp_path / "g.xml"
    code, out, err = run_cli(["gate", tmp_path / "report.json", "--policy", tmp_path / "p.toml",
                              "--sarif", sarif, "--junit", junit], capsys)
    return code, out, err, sarif, junit


def test_b4_01_every_limit_has_a_sarif_rule_and_the_ci_files_are_written(tmp_path, capsys):
    import jsonschema

    assert set(LIMITS) <= set(RULES)  # a rule for every documented limit
    # limit 1.0 on a rate: a passed check that cannot have failed -> inconclusive, allowed -> exit 0
    code, out, err, sarif, junit = _gate(tmp_path, capsys, _disc_report(),
                                         "[limits]\nmax_discoverable_rate = 1.0\n[settings]\nallow_inconclusive = true\n")
    assert code == 0 and "Error" not in err, (out, err)
    log = json.loads(sarif.read_text())
    jsonschema.validate(log, _sarif_schema())
    run = log["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["llm-mia/max_discoverable_rate"]
    assert run["invocations"][0]["exitCode"] == 0 and run["properties"]["verdict"] == "INCONCLUSIVE"
    assert [r["level"] for r in run["results"]] == ["warning"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("1", "0", "0", "1")
    # a failed discoverable limit: 30 of 40 = 0.75, exact 95% lower bound 0.614 > 0.5: exit 1, its rule's level
    code, out, err, sarif, junit = _gate(tmp_path, capsys, _disc_report(40, 30), "[limits]\nmax_discoverable_rate = 0.5\n")
    assert code == 1, (out, err)
    res = json.loads(sarif.read_text())["runs"][0]["results"]
    assert [(r["ruleId"], r["level"]) for r in res] == [("llm-mia/max_discoverable_rate", RULES["max_discoverable_rate"][1])]


def test_b4_02_discoverable_limit_has_its_own_control():
    pol = parse_policy({"limits": {"max_discoverable_rate": 0.5}})
    # 0 of 10 examples (exact 95% upper bound 1 - 0.05^(1/10) = 0.259), 5 non-members: the non-member count
    # has nothing to do with this check
    v = evaluate(_disc_report(10, 0, n_non=5), pol)
    assert v.status == "PASS" and v.checks[0].status == "passed" and "non-members" not in v.line
    assert v.checks[0].interval[1] == pytest.approx(1 - 0.05 ** (1 / 10))
    # 0 of 4: the upper bound 1 - 0.05^(1/4) = 0.527 holds the limit: too few examples to tell
    v = evaluate(_disc_report(4, 0, n_non=5), pol)
    assert v.status == "INCONCLUSIVE" and "more examples" in v.checks[0].reason
    # 0 examples tested: nothing could have failed; the reason is about examples
    rep = _disc_report(4, 0)
    rep["discoverable"].update(n_examples=0, greedy_rate=0.0)
    v = evaluate(rep, pol)
    assert v.status == "INCONCLUSIVE" and "training example" in v.checks[0].reason
    assert "non-members" not in v.line
    # a limit of 1 can never be exceeded by a rate
    v = evaluate(_disc_report(4, 0, n_non=500), parse_policy({"limits": {"max_discoverable_rate": 1.0}}))
    assert v.status == "INCONCLUSIVE" and "cannot be exceeded" in v.checks[0].reason


def test_b4_03_not_measured_is_skipped_in_junit_and_a_sarif_result(tmp_path, capsys):
    import jsonschema

    rep = {"schema_version": 1, "exposure": {"measured": False, "reason": "no planted secrets"}}
    code, out, err, sarif, junit = _gate(tmp_path, capsys, rep, "[limits]\nmax_canary_exposure_bits = 9.0\n")
    assert code == 3, (out, err)
    log = json.loads(sarif.read_text())
    jsonschema.validate(log, _sarif_schema())
    res = log["runs"][0]["results"]
    assert len(res) == 1 and res[0]["properties"]["check_status"] == "not measured"
    assert res[0]["message"]["text"].startswith("NOT MEASURED: ")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("1", "0", "0", "1")
    case = suite.find("testcase")
    assert case.find("skipped") is not None  # never a passing test case


def test_b4_03_inconclusive_and_control_characters_stay_valid_xml():
    """An inconclusive check is a skipped test; text with control characters still parses as XML."""
    v = {"status": "INCONCLUSIVE", "checks": [
        {"name": "max_extracted_secrets", "limit": 0, "value": 0, "status": "inconclusive",
         "text": "extracted secrets 0 <= 0", "reason": "bad \x00\x1b text", "items": []},
        {"name": "max_memorized_samples", "limit": 0, "value": 1, "status": "failed",
         "text": "memorized \x07 1 > 0", "items": [{"kind": "x", "v": "\x0c"}]}]}
    doc = junit_xml({"provenance": {"model": "m\x01"}}, v)
    root = ET.fromstring(doc.split("\n", 1)[1])  # parses: no raw control characters
    cases = root.find("testsuite").findall("testcase")
    assert cases[0].find("skipped") is not None and cases[1].find("failure") is not None
    log = sarif_log({}, v)
    assert all("\x00" not in r["message"]["text"] and "\x07" not in r["message"]["text"]
               for r in log["runs"][0]["results"])
