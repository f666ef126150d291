"""`llm-mia audit` of a text-only endpoint (api=text / api=chat): membership by SaMIA and n-gram coverage,
the query plan checked before the first query, every log-prob stage reported as not measured."""

from __future__ import annotations

import json

import pytest

from llm_mia.core import io
from tests.conftest import run_cli
from tests.membership.test_text_overlap import _slow_coverage, _slow_rouge1

GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
COLOURS = "red green blue yellow violet orange brown black white grey"


def _reply(api: str, text: str) -> tuple[int, str, bytes]:
    if api == "chat":
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": "step", "choices": [
            {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": text}}]}
    else:
        body = {"id": "c", "object": "text_completion", "created": 0, "model": "step",
                "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}]}
    return 200, "application/json", json.dumps(body).encode()


@pytest.mark.parametrize("api", ["text", "chat"])
def test_audit_of_a_text_only_endpoint_runs_text_only_membership(api, tiny_tokenizer, tmp_path, capsys):
    from tests.models.test_endpoint import StepServer

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    # members: numbered GREEK sentences; non-members: numbered COLOURS ones. The endpoint "remembers" the
    # members: its reply to every member holds all of GREEK; to every non-member, an unrelated word.
    io.write_jsonl(tmp_path / "m.jsonl", [{"text": f"{i} {GREEK}"} for i in range(3)])
    io.write_jsonl(tmp_path / "n.jsonl", [{"text": f"{i} {COLOURS}"} for i in range(3)])
    policy = open("examples/policy.toml", encoding="utf-8").read().replace(
        "[limits]\n", "[limits]\nmax_memorized_samples = 0\nmin_remaining_guess_bits = 10\nmax_discoverable_rate = 0.1\n")
    (tmp_path / "policy.toml").write_text(policy, encoding="utf-8")
    server = StepServer()
    args = ["audit", "--model", f"openai:{server.url}", "--model-args", f"tokenizer={tmp_path / 'tok'},api={api}",
            "--members", tmp_path / "m.jsonl", "--nonmembers", tmp_path / "n.jsonl", "--membership-docs", 3,
            "--no-positive-control", "--policy", tmp_path / "policy.toml"]
    try:
        # plan: 3 members + 3 non-members, 5 samples each = 30 queries; 29 is refused before the first
        code, _, err = run_cli([*args, "--out", tmp_path / "o1", "--max-queries", 29], capsys)
        assert code == 2 and "30 queries" in err and len(err.strip().splitlines()) == 1, err
        assert not [p for p, _ in server.seen if p.endswith("completions")]
        # members are scored first (members, then as many non-members), 5 samples each
        server.raw = [_reply(api, GREEK)] * 15 + [_reply(api, "zzz")] * 15
        code, _, err = run_cli([*args, "--out", tmp_path / "o2", "--max-queries", 30], capsys)
        assert code in (1, 3), err  # a verdict (FAIL or INCONCLUSIVE at 3 + 3 documents), not an error
    finally:
        server.close()
    rep = json.loads((tmp_path / "o2" / "report.json").read_text())
    mem = rep["membership"]
    assert mem["text_only"] and mem["queries"] == 30 and (mem["n_members"], mem["n_nonmembers"]) == (3, 3)
    assert len([p for p, _ in server.seen if p.endswith("completions")]) == 30
    # the slow loops of tests/membership on each text's suffix (after its first floor(T / 2) tokens): every
    # member's reply is GREEK, every non-member's "zzz" (0), so AUC 1 and TPR at 1% FPR 1
    assert mem["per_doc"]["labels"] == [1, 1, 1, 0, 0, 0]
    want = {"samia": [], "ngram_coverage": []}
    for i in range(3):
        t = f"{i} {GREEK}"
        ids = tiny_tokenizer(t, add_special_tokens=False)["input_ids"]
        suffix = t[len(tiny_tokenizer.decode(ids[:len(ids) // 2])):]
        want["samia"].append(_slow_rouge1(GREEK, suffix))
        want["ngram_coverage"].append(_slow_coverage(GREEK, suffix, 3))
    for sig in ("samia", "ngram_coverage"):
        got = mem["per_doc"]["scores"][sig]
        assert sorted(got[:3]) == pytest.approx(sorted(want[sig])) and got[3:] == [0.0, 0.0, 0.0]
        assert min(got[:3]) > 0
        assert mem["signals"][sig]["auc"] == 1.0 and mem["signals"][sig]["tpr_at_fpr"]["0.01"]["tpr"] == 1.0
    assert "skipped" in rep["extraction"] and "skipped" in rep["discoverable"] and rep["exposure"]["measured"] is False
    checks = {c["name"]: c for c in rep["verdict"]["checks"]}
    assert checks["max_membership_tpr_at_1pct_fpr"]["value"] == 1.0
    assert checks["max_membership_tpr_at_1pct_fpr"]["status"] in ("failed", "inconclusive")
    assert all(checks[k]["status"] == "not measured" for k in (
        "max_extracted_training_pii", "max_extracted_secrets", "max_memorized_samples", "min_remaining_guess_bits",
        "max_discoverable_rate", "max_canary_exposure_bits"))
    assert "Not measured" in (tmp_path / "o2" / "report.md").read_text()
