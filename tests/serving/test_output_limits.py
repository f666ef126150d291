"""Output-limit API wrapper: each mode's view by hand, the signals on it against slow oracles."""

from __future__ import annotations

import math

import pytest
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.scoring import score
from llm_mia.models.hf import from_objects
from llm_mia.models.output_modes import (
    ApiMode,
    computable_signals,
    limit_logprobs,
    parse_mode,
)
from llm_mia.serving.output_limits import (
    greedy_match_scores,
    membership_under_limits,
    score_under_limit,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return a new list containing all items.",
         "my social security number is 123-45-6789.", "def f(x):\n    return x + 1\n"]


def test_parse_mode():
    assert parse_mode("full") == ApiMode("full") and parse_mode("label-only") == ApiMode("label-only")
    assert parse_mode("topk:5") == ApiMode("topk", k=5) and parse_mode("rounded:3") == ApiMode("rounded", digits=3)
    assert parse_mode("topk:5").name == "topk:5"
    for bad in ("topk", "topk:0", "rounded:x", "rounded:-1", "probs", ""):
        with pytest.raises(LlmMiaError, match="unknown API mode"):
            parse_mode(bad)


def test_topk_view_by_hand():
    p = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])
    got = limit_logprobs(p.log(), ApiMode("topk", k=2)).exp()
    torch.testing.assert_close(got, torch.tensor([0.5, 0.3, 0.2 / 3, 0.2 / 3, 0.2 / 3]))
    assert torch.equal(limit_logprobs(p.log(), ApiMode("topk", k=5)), p.log())


def test_rounded_view_by_hand():
    p = torch.tensor([0.62, 0.27, 0.08, 0.02, 0.01], dtype=torch.float64)
    got = limit_logprobs(p.log(), ApiMode("rounded", digits=1)).exp()
    want = torch.tensor([0.6, 0.3, 0.1, 0.05, 0.05], dtype=torch.float64) / 1.1  # zeros floored at 0.05
    torch.testing.assert_close(got, want)
    with pytest.raises(LlmMiaError, match="no log-probs"):
        limit_logprobs(p.log(), ApiMode("label-only"))


def test_computable_signals():
    names = ["loss", "zlib", "min_k", "min_k_plus_plus"]
    ok, why = computable_signals(ApiMode("topk", k=3), names)
    assert ok == ["loss", "zlib", "min_k"] and set(why) == {"min_k_plus_plus"}
    assert computable_signals(ApiMode("rounded", digits=2), names) == (names, {})
    ok, why = computable_signals(ApiMode("label-only"), names)
    assert ok == ["greedy_match"] and set(why) == set(names)


def _oracle_loss(model, tok, text, mode):
    """Slow loop: one text, one position at a time, the mode's rule written out directly."""
    ids = [0] + tok(text, add_special_tokens=False)["input_ids"]  # prepend_bos (id 0 = BOS/EOS here)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)  # (T, V)
    total = 0.0
    for t in range(1, len(ids)):
        row = lp[t - 1]
        if mode.kind == "topk":
            top = sorted(row.tolist(), reverse=True)[:mode.k]
            if row[ids[t]].item() >= top[-1]:
                v = row[ids[t]].item()
            else:
                v = math.log((1 - sum(math.exp(x) for x in top)) / (len(row) - mode.k))
        else:
            v = row[ids[t]].item()
        total += v
    return total / (len(ids) - 1)


@pytest.mark.parametrize("mode", ["full", "topk:3"])
def test_loss_under_mode_matches_slow_oracle(tiny_model, tiny_tokenizer, mode):
    lm = from_objects(tiny_model, tiny_tokenizer)
    m = parse_mode(mode)
    got = score_under_limit(lm, TEXTS, m)
    for text, v in zip(TEXTS, got["loss"]):
        assert v == pytest.approx(_oracle_loss(tiny_model, tiny_tokenizer, text, m), abs=2e-4)
    if mode == "full":
        plain = score(lm, TEXTS, prepend_bos=True, signals=list(got))
        for sig in got:
            assert got[sig] == pytest.approx([r["scores"][sig] for r in plain.rows], abs=1e-4, nan_ok=True)
    else:
        assert "min_k_plus_plus" not in got and "min_k" in got


def _greedy_oracle(model, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


def test_greedy_match_against_a_token_by_token_loop(tiny_model, tiny_tokenizer):
    lm = from_objects(tiny_model, tiny_tokenizer)
    texts = TEXTS + ["x"]
    got = greedy_match_scores(lm, texts, prefix=4, n_new=5, batch_size=2)
    for text, g in zip(texts, got):
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            assert math.isnan(g)
            continue
        p = min(4, len(ids) // 2)
        want = ids[p:p + min(5, len(ids) - p)]
        gen = _greedy_oracle(tiny_model, ids[:p], len(want))
        assert g == sum(a == b for a, b in zip(gen, want)) / len(want)
    # a text the model continues exactly is scored 1: build one from the model's own greedy output
    seed_ids = tiny_tokenizer("The quick brown", add_special_tokens=False)["input_ids"]
    own = seed_ids + _greedy_oracle(tiny_model, seed_ids, 6)
    own_text = tiny_tokenizer.decode(own)
    assert tiny_tokenizer(own_text, add_special_tokens=False)["input_ids"] == own  # the round trip holds here
    assert greedy_match_scores(lm, [own_text], prefix=len(seed_ids), n_new=6) == [1.0]


def test_membership_under_limits_report(tiny_model, tiny_tokenizer):
    lm = from_objects(tiny_model, tiny_tokenizer)
    res = membership_under_limits(lm, TEXTS[:2] * 2, TEXTS[2:] * 2, modes=("full", "topk:2", "label-only"), n=3)
    assert res["n_members"] == 3 and set(res["modes"]) == {"full", "topk:2", "label-only"}
    assert "min_k_plus_plus" in res["modes"]["full"]["signals"]
    assert "min_k_plus_plus" in res["modes"]["topk:2"]["not_computable"]
    assert list(res["modes"]["label-only"]["signals"]) == ["greedy_match"]
    for m in res["modes"].values():
        for v in m["signals"].values():
            assert "error" in v or 0 <= v["auc"] <= 1
    with pytest.raises(LlmMiaError, match="unknown API mode"):
        membership_under_limits(lm, TEXTS, TEXTS, modes=("top5",))


# ----------------------------------------------------------------------------- query limits

def _secret(sid, count, *, greedy=None, contexts=("start", "none", "training"), p=None):
    return {"id": sid, "count": count, "greedy_extracted": greedy is not None, "greedy_context": greedy,
            "extraction_contexts": list(contexts), "sample_probability": p, "exposure_rank": 1.0,
            "surfaced_in_samples": 0}


def test_queries_to_extract_by_hand():
    from llm_mia.exposure.estimators import queries_to_extract

    # greedy from the third context tried: 3 generations; sampling p = 0.1 needs 7 (0.9**7 = 0.478 <= 0.5)
    assert queries_to_extract(_secret("a", 8, greedy="training", p=0.1)) == 3
    assert queries_to_extract(_secret("a", 8, greedy="training", p=0.5)) == 1  # one sample: 1/2 already
    assert queries_to_extract(_secret("b", 8, p=0.1)) == 7
    assert queries_to_extract(_secret("b", 8, p=0.1), sampling=False) == math.inf  # label-only: greedy only
    assert queries_to_extract(_secret("c", 8, greedy="none", p=0.0), sampling=False) == 2
    assert queries_to_extract(_secret("d", 8, p=0.0)) == math.inf
    assert math.isnan(queries_to_extract(_secret("e", 8, p=float("nan"))))


def test_query_limits_by_hand():
    from llm_mia.serving.output_limits import query_limits

    secrets = [_secret("ctl", 0, greedy="start", p=0.9), _secret("s4", 4, p=0.01),  # 1 - 0.99**69 = 0.500
               _secret("s16", 16, greedy="none", p=1e-6)]
    limits = {"modes": {"full": {"signals": {"loss": {"tpr_at_1pct_fpr": 0.25, "auc": 0.8},
                                             "zlib": {"tpr_at_1pct_fpr": 0.1, "auc": 0.9}}},
                        "label-only": {"signals": {"greedy_match": {"tpr_at_1pct_fpr": 0.0, "auc": 0.5}}}}}
    q = query_limits(secrets, limits, ["full", "label-only"])
    # the control (count 0) is not counted; s16 greedy from the 2nd context: 2 queries in both modes
    assert q["full"]["fewest"] == 2 and q["full"]["secret"] == "s16" and q["full"]["extractable"] == 2
    assert q["full"]["stopping_rate_limit"] == 1 and q["full"]["gated"] == 2
    assert q["full"]["best_signal"] == "loss" and q["full"]["queries_per_member_found"] == 8.0  # 1 / (0.5 * 0.25)
    assert q["label-only"]["extractable"] == 1 and q["label-only"]["queries_per_member_found"] == math.inf
    only4 = query_limits(secrets[:2], None, ["full", "label-only"])
    assert only4["full"]["fewest"] == 69 and only4["full"]["tpr_at_1pct_fpr"] is None
    assert only4["label-only"]["fewest"] == math.inf and only4["label-only"]["stopping_rate_limit"] == math.inf


def test_max_queries_per_secret_gate_by_hand():
    from llm_mia.audit.policy import evaluate, parse_policy

    report = {"schema_version": 1, "extraction": {"memorized_total": 0},
              "secrets": [_secret("s4", 4, p=0.01), _secret("s16", 16, greedy="training", p=1e-9),
                          _secret("ctl", 0, greedy="start", p=1.0)],
              "positive_control": {"status": "detected", "secrets_found": 1, "secrets_planted": 1}}
    gate = lambda limit, **st: evaluate(report, parse_policy(  # noqa: E731
        {"limits": {"max_queries_per_secret": limit}, "settings": st}))
    v = gate(3)  # s16: greedy from the 3rd context = 3 queries <= 3
    c = v.checks[0]
    assert v.status == "FAIL" and c.value == 3 and [i["id"] for i in c.items] == ["s16"]
    assert "secret s16 extractable in 3 queries <= rate limit 3" in v.line
    v = gate(2)  # 3 > 2 and s4 needs 69: passes; the positive control (the twin) found its secret
    assert v.status == "PASS" and v.checks[0].value == 3
    v = gate(100)
    assert v.status == "FAIL" and [i["id"] for i in v.checks[0].items] == ["s16", "s4"]
    assert gate(100, min_insertions=5).checks[0].items[0]["queries"] == 3
    v = gate(1000, min_insertions=1, api_mode="label-only")  # only s16 by greedy
    assert v.status == "FAIL" and [i["id"] for i in v.checks[0].items] == ["s16"]
    for bad, msg in (({"max_queries_per_secret": 0}, ">= 1"), ({"max_queries_per_secret": 2.5}, "whole number")):
        with pytest.raises(LlmMiaError, match=msg):
            parse_policy({"limits": bad})
    with pytest.raises(LlmMiaError, match="api_mode"):
        parse_policy({"limits": {"max_queries_per_secret": 5}, "settings": {"api_mode": "topk"}})
