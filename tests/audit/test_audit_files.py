"""The audit on the user's own files: --members/--nonmembers (plain or chat), no --secrets, LoRA adapters,
overlapping sets, and bad input refused before any model runs."""

from __future__ import annotations

import json

import pytest

from llm_mia.core import io
from llm_mia.models.tokenizer import train_bpe_tokenizer
from tests.conftest import TOKENIZER_TEXT, make_tiny_gpt2, run_cli

EXAMPLE = "examples/policy.toml"
FAST = ["--num-samples", 4, "--length", 12, "--strategy", "top-k", "--discoverable", 4, "--discoverable-prefix", 8]
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma omega "
         "red green blue yellow violet orange brown black white grey pink cyan").split()


def _doc(i: int, n: int = 12) -> str:
    import random

    return " ".join(random.Random(i).choices(WORDS, k=n)) + f" number {i}."


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny GPT-2 whose tokenizer has role tokens and a chat template; and one without a template."""
    d = tmp_path_factory.mktemp("chat")
    tok = train_bpe_tokenizer(TOKENIZER_TEXT + [" ".join(WORDS)] * 3, vocab_size=320, min_frequency=1)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]})
    model = make_tiny_gpt2(len(tok), n_positions=128)
    model.save_pretrained(d / "plain")
    tok.save_pretrained(d / "plain")
    tok.chat_template = TEMPLATE
    model.save_pretrained(d / "chat")
    tok.save_pretrained(d / "chat")
    return d, tok


def _chat_rows(lo, hi):
    return [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": _doc(i, 5)},
                          {"role": "assistant", "content": _doc(i + 100)}, {"role": "user", "content": "and?"},
                          {"role": "assistant", "content": _doc(i + 200, 4)}]} for i in range(lo, hi)]


def test_assistant_only_scoring_counts_the_assistant_tokens(chat_model, tmp_path, capsys):
    d, tok = chat_model
    mem, non = _chat_rows(0, 6), _chat_rows(50, 56)
    io.write_jsonl(tmp_path / "m.jsonl", mem)
    io.write_jsonl(tmp_path / "n.jsonl", non)
    code, out, err = run_cli(["audit", "--model", d / "chat", "--members", tmp_path / "m.jsonl", "--nonmembers",
                              tmp_path / "n.jsonl", "--out", tmp_path / "o", "--membership-docs", 6, *FAST], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    # counted independently: the assistant contents tokenized alone (the template puts special tokens and a
    # newline, its own pre-token, around every content)
    count = lambda r: sum(len(tok(m["content"], add_special_tokens=False)["input_ids"])  # noqa: E731
                          for m in r["messages"] if m["role"] == "assistant")
    n_scored = rep["membership"]["per_doc"]["n_scored_tokens"]
    assert sorted(n_scored[:6]) == sorted(map(count, mem)) and sorted(n_scored[6:]) == sorted(map(count, non))
    assert rep["provenance"]["chat"]["score_spans"] == "assistant"
    assert rep["exposure"]["measured"] is False and rep["secrets"] == []
    assert "discoverable" in rep and rep["provenance"]["reference_source"] is None

    code, out, err = run_cli(["audit", "--model", d / "chat", "--members", tmp_path / "m.jsonl", "--nonmembers",
                              tmp_path / "n.jsonl", "--out", tmp_path / "all", "--membership-docs", 6,
                              "--score-spans", "all", *FAST], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "all" / "report.json").read_text())
    assert min(rep["membership"]["per_doc"]["n_scored_tokens"]) > max(map(count, mem + non))


def test_plain_files_without_secrets_gate_on_what_was_measured(leak_models, tmp_path, capsys):
    d, _ = leak_models
    code, out, err = run_cli(["audit", "--model", d / "leaky", "--members", d / "corpus" / "train.jsonl",
                              "--nonmembers", d / "corpus" / "heldout.jsonl", "--out", tmp_path / "o",
                              "--policy", EXAMPLE, *FAST], capsys)
    assert code in (0, 1, 3), err  # a verdict (PASS, FAIL or INCONCLUSIVE), not an error (2)
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    checks = {c["name"]: c for c in rep["verdict"]["checks"]}
    assert checks["max_canary_exposure_bits"]["value"] is None and "not measured" in checks["max_canary_exposure_bits"]["text"]
    assert checks["max_extracted_secrets"]["value"] is None and checks["max_extracted_secrets"]["status"] == "not measured"
    assert checks["max_membership_tpr_at_1pct_fpr"]["value"] is not None
    assert any("not measured" in o for o in rep["observations"])
    assert rep["exposure_plot"] is None and not (tmp_path / "o" / "exposure.png").exists()


def test_overlapping_nonmembers_are_left_out_of_membership(leak_models, tmp_path, capsys):
    d, _ = leak_models
    train = io.read_jsonl(d / "corpus" / "train.jsonl")
    held = io.read_jsonl(d / "corpus" / "heldout.jsonl")
    rows = held + [train[0], {"text": "  " + train[1]["text"].replace(" ", "  ") + "!"}]  # exact copy, normalised copy
    io.write_jsonl(tmp_path / "n.jsonl", rows)
    with pytest.warns(UserWarning, match="2 of .* non-members"):
        from llm_mia.audit.pipeline import AuditConfig, run_audit

        rep = run_audit(None, d / "leaky", tmp_path / "o", members=d / "corpus" / "train.jsonl",
                        nonmembers=tmp_path / "n.jsonl",
                        cfg=AuditConfig(num_samples=2, strategies=("top-k",), max_new_tokens=8, discoverable_samples=0,
                                        membership_docs=100, progress=False))
    ov = rep["membership"]["overlap"]
    assert ov["n_overlapping"] == 2 and ov["exact"] >= 1 and ov["exact"] + ov["near"] == 2 and ov["n_nonmembers"] == len(rows)
    assert rep["membership"]["n_nonmembers"] == min(len(held), len(train))
    assert any(o.startswith("WARNING: 2 of") for o in rep["observations"])


def test_audit_passes_its_near_verbatim_settings_to_extraction_and_discoverable(leak_models, tmp_path, capsys):
    """--near-similarity / --near-window reach the extraction's verification and --near-samples the discoverable
    stage's near-verbatim risk (before: the audit always ran the defaults and never the sampled risk)."""
    d, _ = leak_models
    code, out, err = run_cli(["audit", "--corpus", d / "corpus", "--model", d / "leaky", "--out", tmp_path / "o",
                              "--num-samples", 4, "--length", 12, "--strategy", "top-k", "--candidates", 8,
                              "--discoverable", 3, "--discoverable-prefix", 4, "--no-positive-control",
                              "--near-similarity", 0.5, "--near-window", 10, "--near-samples", 3], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    ext, disc = rep["extraction"], rep["discoverable"]
    assert (ext["near_similarity"], ext["near_window"]) == (0.5, 10)
    assert ext["near_memorized_total"] >= ext["memorized_total"]
    assert "skipped" not in disc and (disc["near_similarity"], disc["near_samples"]) == (0.5, 3)
    assert disc["near_risk"] is not None and all(0 <= ex["p_near"] <= ex["p_near_upper"] <= 1 for ex in disc["examples"])
    # the greedy near rate at 0.5, recounted from the per-example similarities
    sims = [ex["greedy_similarity"] for ex in disc["examples"]]
    assert disc["greedy_near_rate"] == pytest.approx(sum(x >= 0.5 for x in sims) / len(sims))


@pytest.mark.parametrize("case", ["missing_column", "no_template", "reference_base_not_adapter", "bad_spans",
                                  "missing_members", "members_and_corpus", "empty_nonmembers", "same_file",
                                  "bad_near_similarity", "chat_strategy_plain_model"])
def test_bad_input_exits_2_before_model_work(case, chat_model, tmp_path, capsys):
    d, _ = chat_model
    io.write_jsonl(tmp_path / "m.jsonl", _chat_rows(0, 3))
    io.write_jsonl(tmp_path / "n.jsonl", _chat_rows(3, 6))
    io.write_jsonl(tmp_path / "p.jsonl", [{"body": _doc(i)} for i in range(3)])
    args = ["audit", "--model", d / "chat", "--members", tmp_path / "m.jsonl", "--nonmembers", tmp_path / "n.jsonl",
            "--out", tmp_path / "o", *FAST]
    want = {"missing_column": "(fields: body)", "no_template": "no chat template",
            "reference_base_not_adapter": "not a PEFT adapter", "bad_spans": "--score-spans",
            "missing_members": "file not found", "members_and_corpus": "not both",
            "empty_nonmembers": "holds no documents", "same_file": "same file",
            "bad_near_similarity": "similarity threshold must be in (0, 1]",
            "chat_strategy_plain_model": "the chat strategy needs a chat model"}[case]
    if case == "missing_column":
        args[args.index(tmp_path / "m.jsonl")] = tmp_path / "p.jsonl"
    elif case == "no_template":
        args[2] = d / "plain"
    elif case == "reference_base_not_adapter":
        args += ["--reference", "base"]
    elif case == "bad_spans":
        args += ["--score-spans", "user"]
    elif case == "missing_members":
        args[args.index(tmp_path / "m.jsonl")] = tmp_path / "nope.jsonl"
    elif case == "empty_nonmembers":
        (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
        args[args.index(tmp_path / "n.jsonl")] = tmp_path / "e.jsonl"
    elif case == "same_file":
        args[args.index(tmp_path / "n.jsonl")] = tmp_path / "m.jsonl"
    elif case == "bad_near_similarity":
        args += ["--near-similarity", 1.5]
    elif case == "chat_strategy_plain_model":  # plain documents, a plain model, a chat strategy
        io.write_jsonl(tmp_path / "m.jsonl", [{"text": _doc(i)} for i in range(3)])
        io.write_jsonl(tmp_path / "n.jsonl", [{"text": _doc(i)} for i in range(3, 6)])
        args[2] = d / "plain"
        args += ["--strategy", "top-k,chat"]
    else:
        args += ["--corpus", tmp_path]
    code, out, err = run_cli(args, capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], err
    assert not (tmp_path / "o").exists()  # nothing written: no model ran


def test_lora_fine_tune_writes_an_adapter_on_its_base(leak_models, tmp_path):
    from llm_mia.training.train import LoraSpec, train_model

    d, _ = leak_models
    s = train_model(d / "corpus", tmp_path / "adapter", base=str(d / "clean"), preset="tiny", max_steps=3,
                    progress=False, lora=LoraSpec(r=4, alpha=8))
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "recipe.json"} <= files
    assert "model.safetensors" not in files
    cfg = io.read_json(tmp_path / "adapter" / "adapter_config.json")
    assert cfg["base_model_name_or_path"] == str((d / "clean").resolve()) and cfg["r"] == 4
    recipe = io.read_json(tmp_path / "adapter" / "recipe.json")
    assert recipe["lora"]["target_modules"] == ["c_attn", "c_fc", "c_proj"]
    assert 0 < recipe["lora"]["trainable_params"] < recipe["n_params"] and s.steps == 3
    from llm_mia.core.errors import LlmMiaError

    with pytest.raises(LlmMiaError, match="--base"):
        train_model(d / "corpus", tmp_path / "x", preset="tiny", lora=LoraSpec())
    with pytest.raises(LlmMiaError, match="lora"):
        train_model(d / "corpus", tmp_path / "x", base=str(d / "clean"), preset="tiny", max_steps=1, progress=False,
                    lora=LoraSpec(target_modules=("no_such_module",)))


def test_audit_of_a_gpt2_lora_adapter_uses_its_base_as_reference(leak_models, tmp_path, capsys):
    """members/non-members audit of an adapter folder: the base is the reference, and the membership
    LOSS equals an independent scoring of the adapter merged into its base (peft merge_and_unload)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_mia.training.train import LoraSpec, train_model

    d, _ = leak_models
    train_model(d / "corpus", tmp_path / "adapter", base=str(d / "clean"), preset="tiny", max_steps=20,
                progress=False, lora=LoraSpec(r=4, alpha=8))
    members, nonmembers = d / "corpus" / "train.jsonl", d / "corpus" / "heldout.jsonl"
    code, out, err = run_cli(["audit", "--model", tmp_path / "adapter", "--members", members, "--nonmembers",
                              nonmembers, "--secrets", d / "corpus" / "secrets.json", "--out", tmp_path / "o",
                              "--candidates", 16, "--membership-docs", 50, *FAST], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    prov = rep["provenance"]
    assert prov["reference_source"] == "adapter's base" and prov["reference"] == str((d / "clean").resolve())
    assert "reference" in rep["membership"]["signals"] and rep["exposure"]["measured"] is True
    assert rep["secrets"] and all("exposure_rank" in s for s in rep["secrets"])

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(d / "clean"), tmp_path / "adapter")
    merged = merged.merge_and_unload().eval()
    tok = AutoTokenizer.from_pretrained(d / "clean")
    from llm_mia.audit.pipeline import strip_planted
    from llm_mia.data.secrets import load_secrets

    secrets = load_secrets(d / "corpus" / "secrets.json")

    def loss(text):  # mean log p of every token after a prepended EOS (the audit's prepend_bos)
        ids = torch.tensor([[tok.eos_token_id] + tok(text)["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(merged(input_ids=ids).logits[0, :-1].double(), -1)
        return float(lp.gather(-1, ids[0, 1:, None]).mean())

    want_mem = [loss(strip_planted(r["text"], secrets)) for r in io.read_jsonl(members)]
    want_non = sorted(loss(r["text"]) for r in io.read_jsonl(nonmembers))
    per = rep["membership"]["per_doc"]
    n = rep["membership"]["n_members"]
    got_mem, got_non = per["scores"]["loss"][:n], sorted(per["scores"]["loss"][n:])
    assert got_non == pytest.approx(want_non[:len(got_non)] if len(got_non) == len(want_non) else got_non, abs=1e-4)
    for g in got_mem:
        assert min(abs(g - w) for w in want_mem) < 1e-4
    assert len(got_non) == len(want_non)
    # per-record risk: every member once, its FPR against the best signal's non-member scores, by hand
    recs, summ = rep["membership"]["records"], rep["membership"]["records_summary"]
    sig = summ["signal"]
    non = [float(x) for x in per["scores"][sig][n:]]
    assert sorted(r["member"] for r in recs) == list(range(n)) and summ["n_records"] == n
    for r in recs:
        s = float(per["scores"][sig][r["member"]])
        assert r["fpr"] == pytest.approx((1 + sum(x >= s for x in non)) / (1 + len(non)))
        assert r["flagged"]["0.01"] == (r["fpr"] <= 0.01)
    assert [r["fpr"] for r in recs] == sorted(r["fpr"] for r in recs)
    assert summ["n_flagged"]["0.01"] == sum(r["flagged"]["0.01"] for r in recs)


def test_policy_reports_limits_on_unmeasured_things_as_not_measured():
    from llm_mia.audit.policy import evaluate, parse_policy
    from llm_mia.core.errors import LlmMiaError

    rep = {"secrets": [], "exposure": {"measured": False, "reason": "no planted secrets given"},
           "extraction": {"memorized_total": 0}, "discoverable": {"greedy_rate": 0.25, "n_greedy": 5, "n_examples": 20}}
    pol = parse_policy({"limits": {"max_canary_exposure_bits": 9.0, "max_extracted_secrets": 0,
                                   "max_discoverable_rate": 0.1}})
    v = evaluate(rep, pol)
    checks = {c.name: c for c in v.checks}
    assert checks["max_canary_exposure_bits"].value is None and checks["max_extracted_secrets"].value is None
    assert "not measured" in checks["max_extracted_secrets"].text
    assert checks["max_discoverable_rate"].value == 0.25 and not checks["max_discoverable_rate"].passed
    assert v.passed is False and "discoverable memorization 0.250 [0.104, 0.456] > 0.1" in v.line
    rep["discoverable"] = {"skipped": "disabled (--discoverable 0)", "greedy_rate": None}
    nothing = evaluate(rep, pol)  # every limit unmeasured: no evidence, so never a PASS
    assert nothing.status == "INCONCLUSIVE" and nothing.passed is False and nothing.exit_code == 3
    assert "none of the policy's limits was measured" in nothing.line
    allowed = parse_policy({"limits": {"max_extracted_secrets": 0}, "settings": {"allow_inconclusive": True}})
    assert evaluate(rep, allowed).exit_code == 0
    del rep["exposure"]  # a report that does not say exposure was skipped still cannot answer the limit
    with pytest.raises(LlmMiaError):
        evaluate(rep, pol)
    with pytest.raises(LlmMiaError, match="rate in"):
        parse_policy({"limits": {"max_discoverable_rate": 2}})


def test_score_mask_scores_only_the_flagged_tokens(tiny_model, tiny_tokenizer):
    """LOSS and Min-K% over a score_mask equal the same statistics computed by hand over the flagged tokens."""
    import torch

    from llm_mia.membership.scoring import score
    from llm_mia.models.hf import from_objects

    m = from_objects(tiny_model, tiny_tokenizer)
    texts = ["The quick brown fox jumps over the lazy dog.", "Return a new list containing all items."]
    ids = [[0] + tiny_tokenizer(t)["input_ids"] for t in texts]
    keep = [[j % 3 != 0 for j in range(len(x))] for x in ids]
    res = score(m, texts, ids=ids, context_lens=1, score_mask=keep, signals=["loss", "min_k"])
    for i, x in enumerate(ids):
        with torch.no_grad():
            lp = torch.log_softmax(tiny_model(input_ids=torch.tensor([x])).logits[0, :-1].double(), -1)
        tok = lp.gather(-1, torch.tensor(x[1:])[:, None])[:, 0]
        sel = tok[[j - 1 for j in range(1, len(x)) if keep[i][j]]]
        assert res.rows[i]["n_scored_tokens"] == len(sel)
        assert res.rows[i]["scores"]["loss"] == pytest.approx(float(sel.mean()), abs=1e-5)
        k = max(1, int(0.2 * len(sel)))
        assert res.rows[i]["scores"]["min_k"] == pytest.approx(float(sel.sort().values[:k].mean()), abs=1e-5)


def test_score_mask_keeps_the_top1_flags_for_ez_mia(tiny_model, tiny_tokenizer):
    """Chat rows with an adapter's base as reference: EZ-MIA over a score_mask equals P / (P + N) of the
    log-probability differences over the flagged tokens where the target's top-1 is wrong, by hand."""
    import math

    import torch
    from conftest import make_tiny_gpt2

    from llm_mia.membership.scoring import score
    from llm_mia.models.hf import from_objects

    ref_model = make_tiny_gpt2(len(tiny_tokenizer), seed=1)
    texts = ["The quick brown fox jumps over the lazy dog.", "Return a new list containing all items."]
    ids = [[0] + tiny_tokenizer(t)["input_ids"] for t in texts]
    keep = [[j % 3 != 0 for j in range(len(x))] for x in ids]
    res = score(from_objects(tiny_model, tiny_tokenizer), texts, ids=ids, context_lens=1, score_mask=keep,
                reference=from_objects(ref_model, tiny_tokenizer), signals=["ez_mia"])
    for i, x in enumerate(ids):
        pos = neg = 0.0
        with torch.no_grad():
            lt = torch.log_softmax(tiny_model(input_ids=torch.tensor([x])).logits[0, :-1].double(), -1)
            lr = torch.log_softmax(ref_model(input_ids=torch.tensor([x])).logits[0, :-1].double(), -1)
        for j in range(1, len(x)):
            if keep[i][j] and lt[j - 1, x[j]] < lt[j - 1].max():
                d = float(lt[j - 1, x[j]] - lr[j - 1, x[j]])
                pos, neg = pos + max(d, 0.0), neg + max(-d, 0.0)
        want = pos / (pos + neg) if pos + neg > 0 else math.nan
        assert res.rows[i]["scores"]["ez_mia"] == pytest.approx(want, abs=1e-4)
