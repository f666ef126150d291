"""Designed canaries: make / plant / audit end to end on a tiny GPT-2 fitted in-process, and bad input."""

from __future__ import annotations

import json
import math

import pytest

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.canaries import load_canaries
from llm_mia.privacy import bounds as P
from tests.conftest import TOKENIZER_TEXT, _fit, run_cli

DOCS = [f"Section {i}: the function number {i} returns a sorted copy of the list it is given." for i in range(30)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """train.jsonl, a tokenizer with tokens the training data never uses, new-token canaries planted 4x,
    and a model fitted on the planted file (plus a DP recipe claiming epsilon 0.01)."""
    from llm_mia.models.tokenizer import train_bpe_tokenizer

    d = tmp_path_factory.mktemp("canaries")
    io.write_jsonl(d / "train.jsonl", [{"text": t} for t in DOCS])
    tok = train_bpe_tokenizer(DOCS + TOKENIZER_TEXT * 2, vocab_size=420, min_frequency=1)
    tok.save_pretrained(d / "tok")
    return d, tok


def _cli_ok(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return out


def test_new_token_and_rare_bigram_canaries(setup, capsys):
    d, tok = setup
    used = {i for t in DOCS for i in tok(t)["input_ids"]}
    _cli_ok(["canaries", "make", "--kind", "new-token", "--n", "40", "--length", "4", "--tokenizer", d / "tok",
             "--train", d / "train.jsonl", "--out", d / "new.jsonl"], capsys)
    rows = load_canaries(d / "new.jsonl")
    assert len(rows) == 40 and len({r["text"] for r in rows}) == 40 and {r["kind"] for r in rows} == {"new-token"}
    for r in rows:
        ids = tok(r["text"])["input_ids"]
        assert len(ids) == 4 and not set(ids) & used and not set(ids) & set(tok.all_special_ids)
        assert all(i < len(tok) for i in ids) and tok.decode(ids) == r["text"]
    _cli_ok(["canaries", "make", "--kind", "rare-bigram", "--n", "10", "--length", "5", "--tokenizer", d / "tok",
             "--train", d / "train.jsonl", "--out", d / "bi.jsonl"], capsys)
    bigrams = {b for t in DOCS for ids in [tok(t)["input_ids"]] for b in zip(ids, ids[1:])}
    for r in load_canaries(d / "bi.jsonl"):
        ids = tok(r["text"])["input_ids"]
        assert set(ids) <= used and not set(zip(ids, ids[1:])) & bigrams


def test_random_and_synthetic_canaries(setup, tmp_path, capsys, tiny_model):
    d, tok = setup
    _cli_ok(["canaries", "make", "--kind", "random", "--n", "30", "--out", tmp_path / "r.jsonl"], capsys)
    assert len(load_canaries(tmp_path / "r.jsonl")) == 30
    model, _ = _fit(DOCS, tok, steps=1, seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    _cli_ok(["canaries", "make", "--kind", "synthetic", "--n", "6", "--model", tmp_path / "m", "--train",
             d / "train.jsonl", "--max-new-tokens", "8", "--out", tmp_path / "s.jsonl"], capsys)
    rows = load_canaries(tmp_path / "s.jsonl")
    assert len(rows) == 6 and all(r["text"] not in "\n".join(DOCS) for r in rows)
    code, _, err = run_cli(["canaries", "make", "--kind", "synthetic", "--n", "6", "--model", tmp_path / "m",
                            "--train", d / "train.jsonl", "--temperature", "0.5", "--out", tmp_path / "s2.jsonl"], capsys)
    assert code == 2 and "0.8" in err and len(err.strip().splitlines()) == 1


def test_plant_txt_and_chat(tmp_path, capsys):
    io.write_jsonl(tmp_path / "c.jsonl", [{"id": f"c{i}", "text": f"canary number {i} zq", "kind": "random"}
                                          for i in range(20)])
    (tmp_path / "t.txt").write_text("".join(d + "\n" for d in DOCS), encoding="utf-8")
    _cli_ok(["canaries", "plant", "--train", tmp_path / "t.txt", "--canaries", tmp_path / "c.jsonl", "--out",
             tmp_path / "p", "--repeats", "3", "--seed", "5"], capsys)
    rec = io.read_json(tmp_path / "p" / "inclusion.json")
    lines = (tmp_path / "p" / "train.txt").read_text(encoding="utf-8").splitlines()
    inc = {c["id"] for c in rec["canaries"] if c["included"]}
    assert 0 < len(inc) < 20 and rec["n_included"] == len(inc)
    for i in range(20):
        assert lines.count(f"canary number {i} zq") == (3 if f"c{i}" in inc else 0)
    assert [x for x in lines if not x.startswith("canary")] == DOCS  # the user's rows, in order
    assert rec["planted_sha256"] == io.sha256_file(tmp_path / "p" / "train.txt")
    assert rec["train_sha256"] == io.sha256_file(tmp_path / "t.txt")
    assert rec["canaries_sha256"] == io.sha256_file(tmp_path / "c.jsonl")
    io.write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": d}], "n": i}
                                             for i, d in enumerate(DOCS)])
    _cli_ok(["canaries", "plant", "--train", tmp_path / "chat.jsonl", "--canaries", tmp_path / "c.jsonl", "--out",
             tmp_path / "q"], capsys)
    rows = io.read_jsonl(tmp_path / "q" / "train.jsonl")
    added = [r for r in rows if "n" not in r]
    assert len(added) == io.read_json(tmp_path / "q" / "inclusion.json")["n_included"]
    assert all(r["messages"][-1]["role"] == "assistant" for r in added)
    code, _, err = run_cli(["canaries", "plant", "--train", tmp_path / "chat.jsonl", "--canaries", tmp_path / "c.jsonl",
                            "--out", tmp_path / "q"], capsys)
    assert code == 2 and "exists" in err
    (tmp_path / "f").write_text("", encoding="utf-8")
    code, _, err = run_cli(["canaries", "plant", "--train", tmp_path / "chat.jsonl", "--canaries", tmp_path / "c.jsonl",
                            "--out", tmp_path / "f"], capsys)
    assert code == 2 and err.strip() == f"error: output folder {tmp_path / 'f'} exists and is a file", err
    for empty in ("e.txt", "e.jsonl"):  # an empty training file: nothing to plant between, nothing written
        (tmp_path / empty).write_text("\n", encoding="utf-8")
        code, _, err = run_cli(["canaries", "plant", "--train", tmp_path / empty, "--canaries", tmp_path / "c.jsonl",
                                "--out", tmp_path / "pe"], capsys)
        assert code == 2 and "holds no documents" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "pe").exists()


def test_make_plant_audit_end_to_end(setup, capsys):
    d, tok = setup
    if not (d / "new.jsonl").exists():
        _cli_ok(["canaries", "make", "--kind", "new-token", "--n", "40", "--length", "4", "--tokenizer", d / "tok",
                 "--train", d / "train.jsonl", "--out", d / "new.jsonl"], capsys)
    _cli_ok(["canaries", "plant", "--train", d / "train.jsonl", "--canaries", d / "new.jsonl", "--out", d / "plant",
             "--repeats", "4"], capsys)
    planted = [r["text"] for r in io.read_jsonl(d / "plant" / "train.jsonl")]
    model, _ = _fit(planted, tok, steps=30, seed=0)
    model.save_pretrained(d / "m")
    tok.save_pretrained(d / "m")
    (d / "m" / "recipe.json").write_text(json.dumps({"dp": {"epsilon": 0.01, "delta": 1e-5}}), encoding="utf-8")
    out = _cli_ok(["canaries", "audit", "--model", d / "m", "--canaries", d / "new.jsonl", "--inclusion",
                   d / "plant" / "inclusion.json", "--out", d / "audit"], capsys)
    assert "40 new-token canaries" in out and "FAILED DP IMPLEMENTATION" in out
    res = io.read_json(d / "audit" / "canary-audit.json")
    assert res["signal"] == "loss" and res["n_canaries"] == 40 and res["delta"] == 1e-5
    assert res["auc"] > 0.9  # planted 4x in a 30-step full-batch fit: included canaries have lower loss
    rows = res["canaries"]
    assert [r["id"] for r in rows] == [c["id"] for c in load_canaries(d / "new.jsonl")]
    # anyone can recompute the bounds from the file
    s, y = [r["score"] for r in rows], [r["included"] for r in rows]
    b = res["bounds"]
    again = P.one_run_bound(s, y, delta=b["one_run"]["delta"], beta=b["one_run"]["beta"])
    assert again["epsilon"] == pytest.approx(b["one_run"]["epsilon"]) and b["one_run"]["epsilon"] > 0.04
    cp = b["clopper_pearson"]
    assert P.threshold_bound(s, y, kind="clopper_pearson", delta=cp["delta"], alpha=cp["alpha"],
                             seed=0)["epsilon"] == pytest.approx(cp["epsilon"])
    assert res["dp"]["failed_dp_implementation"] and res["audited_epsilon"] == b["one_run"]["epsilon"]
    assert res["dp"]["claimed_epsilon_per_canary"] == pytest.approx(0.04)  # 4 copies: group privacy
    tight = res["tightness"]
    assert tight["max_epsilon"] == pytest.approx(P.one_run_max_epsilon(40, delta=1e-5, beta=res["beta"])["epsilon"])
    assert tight["max_epsilon"] >= res["audited_epsilon"]
    t = res["tpr_at_fpr"]["0.01"]
    assert t["tp"] == round(t["tpr"] * res["n_included"])
    _cli_ok(["canaries", "audit", "--model", d / "m", "--canaries", d / "new.jsonl", "--inclusion",
             d / "plant" / "inclusion.json", "--out", d / "audit-b", "--threshold-strategy", "bonferroni"], capsys)
    g = io.read_json(d / "audit-b" / "canary-audit.json")["bounds"]["gaussian_dp"]
    assert g["strategy"] == "bonferroni" and g["epsilon"] == pytest.approx(
        P.threshold_bound(s, y, kind="gaussian_dp", delta=1e-5, strategy="bonferroni")["epsilon"])


def test_audit_bad_input_exits_2_before_model_work(setup, tmp_path, capsys):
    d, tok = setup
    io.write_jsonl(tmp_path / "c.jsonl", [{"id": f"c{i}", "text": f"canary number {i} zq", "kind": "random"}
                                          for i in range(40)])
    _cli_ok(["canaries", "plant", "--train", d / "train.jsonl", "--canaries", tmp_path / "c.jsonl", "--out",
             tmp_path / "p"], capsys)
    base = ["canaries", "audit", "--model", tmp_path / "no-model", "--out", tmp_path / "o"]
    inc = ["--inclusion", tmp_path / "p" / "inclusion.json"]

    def err_of(args):
        code, _, err = run_cli(base + args, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "delta" in err_of(["--canaries", tmp_path / "c.jsonl", *inc, "--delta", "1.5"])
    assert "sha256" in err_of(["--canaries", tmp_path / "c.jsonl", *inc, "--train", d / "train.jsonl"])
    changed = (tmp_path / "c.jsonl").read_text(encoding="utf-8").replace("number 3 zq", "number 3 zz")
    (tmp_path / "c2.jsonl").write_text(changed, encoding="utf-8")
    assert "another canaries file" in err_of(["--canaries", tmp_path / "c2.jsonl", *inc])
    dup = changed.replace("number 5 zq", "number 4 zq")
    (tmp_path / "c3.jsonl").write_text(dup, encoding="utf-8")
    assert "duplicate canary text" in err_of(["--canaries", tmp_path / "c3.jsonl", *inc])
    io.write_jsonl(tmp_path / "few.jsonl", [{"id": f"f{i}", "text": f"few canary {i} zq", "kind": "random"}
                                            for i in range(6)])
    _cli_ok(["canaries", "plant", "--train", d / "train.jsonl", "--canaries", tmp_path / "few.jsonl", "--out",
             tmp_path / "pf"], capsys)
    assert "need >= 4 included" in err_of(["--canaries", tmp_path / "few.jsonl", "--inclusion",
                                           tmp_path / "pf" / "inclusion.json"])
    assert "reference" in err_of(["--canaries", tmp_path / "c.jsonl", *inc, "--signal", "reference_diff"])
    assert "strategy" in err_of(["--canaries", tmp_path / "c.jsonl", *inc, "--threshold-strategy", "same"])
    assert not (tmp_path / "o").exists()


def _canary_report(eps=1.5, tpr=0.2, m=1000):
    return {"canaries": {"n_canaries": m, "n_included": m // 2, "kind": "new-token", "delta": 1e-5, "signal": "loss",
                         "audited_epsilon": eps, "tpr_at_fpr": {"0.01": {"tpr": tpr}},
                         "bounds": {"one_run": {"m": m, "delta": 1e-5, "beta_per_test": 0.05 / 12}}}}


def test_policy_canary_limits():
    from llm_mia.audit.policy import evaluate, parse_policy
    from llm_mia.core.errors import LlmMiaError

    pol = parse_policy({"limits": {"max_audited_epsilon": 1.0, "max_canary_tpr_at_1pct_fpr": 0.25}})
    v = evaluate(_canary_report(), pol)
    assert not v.passed and v.line == ("FAIL: audited epsilon 1.50 > 1.0 (one-run bound at delta 1e-05, "
                                       "1000 new-token canaries)")
    assert evaluate(_canary_report(eps=0.5, tpr=0.1), pol).line.startswith("PASS: audited epsilon 0.50 <= 1.0")
    # 10 canaries cannot show epsilon 8 even with every guess right (q^10 ~ beta / 12: eps ~0.31), nor
    # resolve 1% FPR with 5 excluded canaries: the passes are inconclusive
    v = evaluate(_canary_report(eps=0.0, tpr=0.0, m=10),
                 parse_policy({"limits": {"max_audited_epsilon": 8.0, "max_canary_tpr_at_1pct_fpr": 0.25}}))
    assert v.status == "INCONCLUSIVE" and "10 canaries reach at most epsilon 0.31" in v.line
    assert "5 excluded canaries cannot resolve 1% FPR" in v.line
    with pytest.raises(LlmMiaError, match="no canary audit"):
        evaluate({}, pol)
    with pytest.raises(LlmMiaError, match="rate"):
        parse_policy({"limits": {"max_canary_tpr_at_1pct_fpr": 2}})


def test_audit_report_gets_the_canary_section(leak_models, tmp_path, capsys):
    d, _ = leak_models
    io.write_jsonl(tmp_path / "c.jsonl", [{"id": f"c{i}", "text": f"canary number {i} zq", "kind": "random"}
                                          for i in range(16)])
    _cli_ok(["canaries", "plant", "--train", d / "corpus" / "train.jsonl", "--canaries", tmp_path / "c.jsonl",
             "--out", tmp_path / "p", "--seed", "1"], capsys)
    (tmp_path / "pol.toml").write_text("[limits]\nmax_audited_epsilon = 100.0\n", encoding="utf-8")
    code, out, err = run_cli(["audit", "--corpus", d / "corpus", "--model", d / "leaky", "--out", tmp_path / "a",
                              "--num-samples", 2, "--length", 8, "--candidates", 4, "--exact-limit", 0,
                              "--membership-docs", 4, "--canaries", tmp_path / "c.jsonl", "--inclusion",
                              tmp_path / "p" / "inclusion.json", "--policy", tmp_path / "pol.toml",
                              "--sarif", tmp_path / "g.sarif"], capsys)
    # 16 canaries cannot show epsilon 100: the pass is inconclusive (exit 3), the line names the kind and count
    assert code == 3, err
    assert "INCONCLUSIVE: audited epsilon" in out and "16 random canaries" in out
    sarif = json.loads((tmp_path / "g.sarif").read_text())
    assert sarif["runs"][0]["tool"]["driver"]["rules"][0]["id"] == "llm-mia/max_audited_epsilon"
    rep = io.read_json(tmp_path / "a" / "report.json")
    assert rep["canaries"]["n_canaries"] == 16 and set(rep["canaries"]["bounds"]) == {"one_run", "gaussian_dp",
                                                                                     "clopper_pearson"}
    code, _, err = run_cli(["audit", "--corpus", d / "corpus", "--model", d / "leaky", "--out", tmp_path / "b",
                            "--canaries", tmp_path / "c.jsonl"], capsys)
    assert code == 2 and "go together" in err


def test_b4_09_inclusion_flags_are_checked_against_the_planted_file(setup, tmp_path):
    import shutil

    from llm_mia.privacy.canary_audit import prepare_canary_audit

    d, _ = setup
    io.write_jsonl(tmp_path / "c.jsonl", [{"id": f"c{i}", "text": f"canary number {i} zq", "kind": "random"}
                                          for i in range(40)])
    from llm_mia.data.canaries import plant_canaries

    plant_canaries(d / "train.jsonl", tmp_path / "c.jsonl", tmp_path / "p", repeats=2, seed=1)
    rec = io.read_json(tmp_path / "p" / "inclusion.json")
    # the untouched record is accepted, its flags those of the file by a slow look-up
    planted = [r["text"] for r in io.read_jsonl(tmp_path / "p" / "train.jsonl")]
    want = [any(f"canary number {i} zq" == t for t in planted) for i in range(40)]
    inp = prepare_canary_audit(tmp_path / "c.jsonl", tmp_path / "p" / "inclusion.json")
    assert inp.included == want and inp.train_checked == str(tmp_path / "p" / "train.jsonl")
    # every flag flipped in a copy of the folder, the planted file beside it unchanged
    shutil.copytree(tmp_path / "p", tmp_path / "flip")
    rec_f = {**rec, "canaries": [{**c, "included": not c["included"]} for c in rec["canaries"]]}
    io.write_json(tmp_path / "flip" / "inclusion.json", rec_f)
    with pytest.raises(LlmMiaError, match=f"the included flags of 40 canaries do not match {tmp_path / 'flip'}"):
        prepare_canary_audit(tmp_path / "c.jsonl", tmp_path / "flip" / "inclusion.json")
    # a record of another planting of the same canaries, copied beside this planted file
    plant_canaries(d / "train.jsonl", tmp_path / "c.jsonl", tmp_path / "q", repeats=2, seed=2)
    other = io.read_json(tmp_path / "q" / "inclusion.json")
    io.write_json(tmp_path / "flip" / "inclusion.json", {**other, "planted_sha256": rec["planted_sha256"]})
    with pytest.raises(LlmMiaError, match="do not match"):
        prepare_canary_audit(tmp_path / "c.jsonl", tmp_path / "flip" / "inclusion.json")
    # a planted_file outside the record's folder
    io.write_json(tmp_path / "flip" / "inclusion.json", {**rec, "planted_file": "../p/train.jsonl"})
    with pytest.raises(LlmMiaError, match="must be a file name in"):
        prepare_canary_audit(tmp_path / "c.jsonl", tmp_path / "flip" / "inclusion.json")


def test_b4_08_canaries_with_line_breaks_are_refused_for_txt_and_never_synthetic(tmp_path, capsys):
    from llm_mia.data.canaries import one_line

    rows = [{"id": f"c{i}", "text": f"canary number {i} zq", "kind": "random"} for i in range(10)]
    rows[0]["text"] = 'de "__riico{\n\nErrorn) zq'
    io.write_jsonl(tmp_path / "c.jsonl", rows)
    (tmp_path / "t.txt").write_text("".join(d + "\n" for d in DOCS), encoding="utf-8")
    code, _, err = run_cli(["canaries", "plant", "--train", tmp_path / "t.txt", "--canaries", tmp_path / "c.jsonl",
                            "--out", tmp_path / "p", "--repeats", "2"], capsys)
    assert code == 2 and "canary 'c0' (1 in all) holds a line break" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p" / "train.txt").exists()
    io.write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in DOCS])  # a .jsonl file keeps the canary whole
    _cli_ok(["canaries", "plant", "--train", tmp_path / "t.jsonl", "--canaries", tmp_path / "c.jsonl",
             "--out", tmp_path / "q", "--repeats", "2"], capsys)
    assert one_line('a\n\nb\r\nc\u2028d') == "a  b c d" and one_line("plain text") == "plain text"


def test_one_run_max_epsilon_is_the_bound_with_every_guess_correct():
    from llm_mia.privacy.canary_audit import LOOSE_NOTE, audit_tightness

    # by hand: delta = 0, 10 guesses all correct -> p = q^10 <= beta, q = beta^(1/10), eps = log(q / (1 - q))
    q = 0.05 ** 0.1
    mx = P.one_run_max_epsilon(40, delta=0.0, beta=0.05, k_grid=[(10, 0)])
    assert mx["epsilon"] == pytest.approx(math.log(q / (1 - q)), rel=1e-6) and mx["guesses"] == 10
    # independent path: one_run_bound on perfectly separated scores (20 included above 20 excluded), where
    # every guess of every (k+, k-) of the default grid is correct
    y = [True] * 20 + [False] * 20
    s = [100.0 - i for i in range(40)]
    got = P.one_run_bound(s, y, delta=1e-5, beta=0.05)
    assert got["correct"] == got["guesses"]
    assert P.one_run_max_epsilon(40, delta=1e-5, beta=0.05)["epsilon"] == pytest.approx(got["epsilon"], rel=1e-9)
    t = audit_tightness(40, 40, got["epsilon"], delta=1e-5, beta=0.05, claim=100.0)
    assert t["at_max"] and t["notes"][0] == LOOSE_NOTE and any("cannot detect" in n for n in t["notes"])
    assert not audit_tightness(40, 40, 0.0, delta=1e-5, beta=0.05)["at_max"]
    with pytest.raises(LlmMiaError, match=">= 2 canaries"):
        P.one_run_max_epsilon(1, delta=1e-5)
