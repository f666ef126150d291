"""Comparison of defended models: Clopper-Pearson bounds, the --quick demo with its canary audit."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import binom

from llm_mia.audit import compare as C
from llm_mia.audit import defenses as D
from llm_mia.core.errors import LlmMiaError
from llm_mia.privacy import bounds as P
from llm_mia.training.defenses import dp_epsilon
from tests.conftest import run_cli


@pytest.mark.parametrize("n", [1, 7, 50])
def test_clopper_pearson_edges_closed_form(n):
    a = 0.05
    assert P.clopper_pearson_upper(0, n, a) == pytest.approx(1 - a ** (1 / n), rel=1e-9)  # (1-u)^n = a
    assert P.clopper_pearson_lower(n, n, a) == pytest.approx(a ** (1 / n), rel=1e-9)  # l^n = a
    assert P.clopper_pearson_upper(n, n, a) == 1.0 and P.clopper_pearson_lower(0, n, a) == 0.0


@pytest.mark.parametrize("k,n", [(3, 20), (10, 40), (1, 5)])
def test_clopper_pearson_is_the_binomial_tail_inversion(k, n):
    a = 0.05
    u, lo = P.clopper_pearson_upper(k, n, a), P.clopper_pearson_lower(k, n, a)
    assert binom.cdf(k, n, u) == pytest.approx(a, abs=1e-9)  # P(X <= k | p = u) = a
    assert binom.sf(k - 1, n, lo) == pytest.approx(a, abs=1e-9)  # P(X >= k | p = l) = a
    assert lo < k / n < u
    with pytest.raises(LlmMiaError):
        P.clopper_pearson_upper(k, 0, a)
    with pytest.raises(LlmMiaError):
        P.clopper_pearson_upper(n + 1, n, a)


def test_epsilon_lower_bound_by_hand():
    # perfect test on 50 + 50: both error-rate upper bounds are u = 1 - 0.025**(1/50)
    u = 1 - 0.025 ** (1 / 50)
    got = P.epsilon_lower_bound(tp=50, fn=0, fp=0, tn=50, delta=0.0, alpha=0.05)
    assert got == pytest.approx(math.log((1 - u) / u), rel=1e-9)
    assert 2.56 < got < 2.58  # u = 0.0711: at most ~2.57 nats from 100 documents at 95%
    # delta enters the numerator
    d = 1e-3
    assert P.epsilon_lower_bound(tp=50, fn=0, fp=0, tn=50, delta=d) == pytest.approx(math.log((1 - d - u) / u))
    # a coin flip proves nothing
    assert P.epsilon_lower_bound(tp=25, fn=25, fp=25, tn=25, delta=1e-5) == 0.0
    with pytest.raises(LlmMiaError, match="delta"):
        P.epsilon_lower_bound(tp=1, fn=1, fp=1, tn=1, delta=1.5)


def test_compare_bad_inputs(tmp_path, capsys):
    code, _, err = run_cli(["compare", f"a={tmp_path}", "--corpus", tmp_path, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "not a model folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["audit", "--compare-defenses", "--quick"], capsys)
    assert code == 2 and "`llm-mia defenses`" in err
    code, _, err = run_cli(["compare", "x", "--corpus", tmp_path, "--out", tmp_path, "--api-modes", "top5"], capsys)
    assert code == 2 and "unknown API mode" in err
    with pytest.raises(LlmMiaError, match="distinct"):
        C.compare_models(tmp_path, [("a", tmp_path), ("a", tmp_path)], tmp_path / "o")
    from llm_mia.cli.audit import _parse_compare

    assert _parse_compare(["base=m/a,m/dp/", "c=x"]) == [("base", "m/a", None), ("dp", "m/dp/", None), ("c", "x", None)]
    assert _parse_compare(["g=m/a@memguard:0.3", "m/x@y"]) == [("g", "m/a", "memguard:0.3"), ("x@y", "m/x@y", None)]
    code, _, err = run_cli(["compare", f"a={tmp_path}@memguard:5", "--corpus", tmp_path, "--out", tmp_path / "o"],
                           capsys)
    assert code == 2 and "MemGuard budget" in err


def test_served_perplexity_of_a_plain_model_is_the_heldout_perplexity(tiny_model, tiny_tokenizer):
    from llm_mia.models.hf import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    texts = ["The quick brown fox jumps over the lazy dog. " * 6, "def f(x):\n    return x + 1\n" * 8]
    assert C.served_perplexity(lm, texts) == pytest.approx(C.heldout_perplexity(lm, texts), rel=1e-4)
    assert C.served_perplexity(lm, []) is None


def test_compare_takes_a_shadow_folder(leak_models, tmp_path, capsys):
    d, _ = leak_models
    code, _, err = run_cli(["compare", f"leaky={d / 'leaky'}", "--corpus", d / "corpus", "--out",
                            tmp_path / "o", "--shadow", tmp_path / "none"], capsys)
    assert code == 2 and "shadow folder not found" in err and len(err.strip().splitlines()) == 1


def test_compare_serves_memguard(leak_models, tmp_path):
    """A model served through MemGuard: membership reads the noised log-probs, extraction the model; the
    defender's classifier trains on documents outside the membership sample; query limits per row."""
    from llm_mia.audit.pipeline import AuditConfig

    d, _ = leak_models
    cfg = AuditConfig(num_samples=4, strategies=("top-k",), n_candidates=16, exact_limit=0, beams=1,
                      membership_docs=2, top_n=4, max_new_tokens=12, discoverable_samples=0, progress=False)
    res = C.compare_models(d / "corpus", [("leaky", d / "leaky"), ("guarded", d / "leaky", "memguard:1")],
                           tmp_path / "cmp", cfg=cfg, api_modes=("full", "label-only"), n_boot=50)
    plain, guarded = res["rows"]
    assert guarded["defense"] == "memguard:1 (serving)" and guarded["output_limits"] is None
    assert guarded["memguard"]["trained_on"].startswith("the target: ") and guarded["memguard"]["n_train"] > 0
    assert guarded["secrets_extracted"] == plain["secrets_extracted"] > 0  # generation is the model's own
    rep = json.loads((tmp_path / "cmp" / "guarded" / "report.json").read_text())
    assert rep["provenance"]["serving"] == "memguard:1"
    base = json.loads((tmp_path / "cmp" / "leaky" / "report.json").read_text())
    a, b = base["membership"]["per_doc"]["scores"]["loss"], rep["membership"]["per_doc"]["scores"]["loss"]
    assert a != pytest.approx(b, abs=1e-3)  # the served log-probs differ from the model's
    assert set(plain["query_limits"]) == {"full", "label-only"} and set(guarded["query_limits"]) == {"memguard:1"}
    q = plain["query_limits"]["full"]
    assert q["fewest"] >= 1 and q["extractable"] >= plain["secrets_extracted"]
    assert guarded["query_limits"]["memguard:1"]["fewest"] == q["fewest"]  # MemGuard leaves extraction alone
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## Query limits" in md and "| guarded | memguard:1 (serving) |" in md
    lo = base["membership"]["signals"]["loss"]
    assert plain["attacks"]["loss"] == {"auc": lo["auc"], "tpr_at_0.1pct_fpr": lo["tpr_at_fpr"]["0.001"]["tpr"],
                                        "tpr_at_1pct_fpr": lo["tpr_at_fpr"]["0.01"]["tpr"]}
    assert "## Membership attacks by defence" in md and "below resolution" in md


def test_quick_compare_defenses_demo(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(["defenses", "--quick", "--out", out], capsys)
    assert code == 0, err
    res = json.loads((out / "compare.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    assert list(rows) == [n for n, _ in D.QUICK_DEFENSES] + ["dp-matched"] + [n for n, _, _ in C.SERVED_DEFENSES]
    # DP-SGD at the utility of the best non-DP defence (Aerni et al. 2024): finite epsilon, perplexity close
    match = res["settings"]["dp_matched"]
    heur = {n: rows[n]["heldout_perplexity"] for n in rows if n not in ("baseline", "dp-eps1", "dp-matched", "memguard")}
    assert match["target_name"] in heur and 1 <= len(match["tries"]) <= D.QUICK_PLAN.dp_match_runs
    assert math.isfinite(rows["dp-matched"]["trained_epsilon"]) and rows["dp-matched"]["trained_epsilon"] > 0
    ratio = rows["dp-matched"]["heldout_perplexity"] / heur[match["target_name"]]
    assert 1 / 1.25 <= ratio <= 1.25 or match["note"]
    assert json.loads((out / "models" / "goldfish" / "recipe.json").read_text())["goldfish"]["k"] == 4
    # adaptive attacks: shadows trained with each objective-changing defence; MemGuard's label-only view
    for name in ("selena", "adv-reg", "goldfish"):
        ad = rows[name]["adaptive_attacks"]
        assert ad["trained_with"] == name and {"rmia_online", "shokri"} <= set(ad["attacks"])  # LiRA needs K >= 4
        sh = json.loads((out / "adaptive" / name / "shadow" / "model-00" / "recipe.json").read_text())
        assert sh["defense"] == name
    assert rows["baseline"]["adaptive_attacks"] is None
    assert rows["baseline"]["vulnerable"]["canary_auc"] == rows["baseline"]["canary_audit"]["auc"]
    mg = rows.pop("memguard")
    # MemGuard cannot move the argmax: its label-only view is its model's (the baseline's) label-only run
    assert mg["adaptive_attacks"]["label_only"] == rows["baseline"]["output_limits"]["modes"]["label-only"]
    assert mg["defense"] == "memguard:0.5 (serving)" and mg["memguard"]["trained_on"] == "given (shadow models)"
    assert mg["secrets_extracted"] == rows["baseline"]["secrets_extracted"] and "memguard:0.5" in mg["query_limits"]
    assert mg["model_heldout_perplexity"] == rows["baseline"]["heldout_perplexity"] != mg["heldout_perplexity"]
    # the shadow models: trained once, used by every audit (LiRA, RMIA, Shokri beside the other signals)
    assert res["settings"]["plan"]["n_shadows"] == D.QUICK_PLAN.n_shadows and "train_shadows_s" in res["settings"]["timings"]
    for r in (*rows.values(), mg):
        assert {"lira_online", "lira_offline", "rmia_online", "shokri", "loss"} <= set(r["attacks"])
    rep = json.loads((out / "baseline" / "report.json").read_text())
    assert rep["membership"]["shadow"]["n_models"] == D.QUICK_PLAN.n_shadows
    # the defenders' reference set is never an audit non-member; adv-reg trains against it
    ref = [r["text"] for r in map(json.loads, (out / "defender" / "reference.jsonl").read_text().splitlines())]
    held = [r["text"] for r in map(json.loads, (out / "corpus" / "heldout.jsonl").read_text().splitlines())]
    assert len(ref) == D.QUICK_PLAN.defender_docs and not set(ref) & set(held)
    assert json.loads((out / "models" / "adv-reg" / "recipe.json").read_text())["defense"] == "adv-reg"
    for name, r in rows.items():
        recipe = json.loads((out / "models" / name / "recipe.json").read_text())
        assert r["heldout_perplexity"] > 1 and (out / name / "report.json").is_file()
        assert r["secrets_inserted"] > 0 and 0 <= r["secrets_extracted"] <= r["secrets_inserted"]
        can = r["canary_audit"]
        assert can["n_canaries"] == D.QUICK_CANARIES[0] and can["audited_epsilon"] >= 0 and can["kind"] == "random"
        assert set(r["output_limits"]["modes"]) == {"full", "topk:5", "rounded:2", "label-only"}
        assert r["output_limits"]["modes"]["label-only"]["computable"] == ["greedy_match"]
        if recipe["defense"] == "dp":
            dp = recipe["dp"]
            assert r["trained_epsilon"] == dp["epsilon"] and (name == "dp-matched" or dp["epsilon"] <= 1.0)
            assert dp["epsilon"] == pytest.approx(dp_epsilon(noise_multiplier=dp["noise_multiplier"],
                                                             sample_rate=dp["sample_rate"], steps=dp["steps"],
                                                             delta=dp["delta"]))
        else:
            assert r["trained_epsilon"] is None
    assert rows["dedup"]["dedup"]["chars_removed"] > 0
    # every model shares the baseline's tokenizer
    vocab = (out / "models" / "baseline" / "tokenizer.json").read_text()
    assert all((out / "models" / n / "tokenizer.json").read_text() == vocab for n in rows)
    md = (out / "compare.md").read_text()
    assert "| baseline | none |" in md and "| dp-eps1 | dp |" in md and "| selena | selena |" in md and "label-only" in md
    assert "Audited epsilon: one-run lower bound (Steinke, Nasr, Jagielski 2023) from 40 random canaries" in md
    assert "## Membership attacks by defence" in md and "| rmia_online |" in md
    assert f"compared {len(D.QUICK_DEFENSES) + 1 + len(C.SERVED_DEFENSES)} models" in stdout  # + dp-matched


def test_b4_15_api_mode_memguard_is_checked_before_any_audit(leak_models, tmp_path, capsys):
    """Without --shadow, the target-fitted classifier needs documents outside the evaluated ones: refused
    in one line before any audit (no output folder); an unknown API mode likewise."""
    d, _ = leak_models
    for modes, want in (("full,memguard:0.5", "pass --shadow"), ("full,bogus", "unknown API mode 'bogus'")):
        out = tmp_path / modes.replace(",", "_").replace(":", "")
        code, _, err = run_cli(["compare", f"leaky={d / 'leaky'}", "--corpus", d / "corpus", "--out", out,
                                "--membership-docs", 2, "--api-modes", modes], capsys)
        assert code == 2 and want in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_b4_15_api_mode_memguard_uses_the_shadow_models(leak_models, tmp_path, monkeypatch):
    """With a shadow folder, the output-limit runs' memguard mode and the served row share one classifier,
    fitted once on the shadow models (before the first audit), whatever --membership-docs leaves over."""
    from llm_mia.audit.pipeline import AuditConfig
    from llm_mia.core import io
    from llm_mia.membership.shadow import train_shadows

    d, _ = leak_models
    io.write_jsonl(tmp_path / "pop.jsonl", io.read_jsonl(d / "corpus" / "train.jsonl")
                   + io.read_jsonl(d / "corpus" / "heldout.jsonl"))
    train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", n_models=2, tokenizer_from=str(d / "leaky"), max_steps=2,
                  progress=False)
    fitted = []
    real = C.classifier_from_shadows
    monkeypatch.setattr(C, "classifier_from_shadows", lambda *a, **k: fitted.append(1) or real(*a, **k))
    cfg = AuditConfig(num_samples=2, strategies=("top-k",), n_candidates=8, exact_limit=0, beams=1,
                      membership_docs=2, top_n=2, max_new_tokens=8, discoverable_samples=0, progress=False)
    res = C.compare_models(d / "corpus", [("base", d / "leaky"), ("g", d / "leaky", "memguard:0.5")], tmp_path / "c",
                           cfg=cfg, api_modes=("full", "memguard:0.5"), n_boot=20, shadow_dir=tmp_path / "sh")
    base, guarded = res["rows"]
    assert fitted == [1]
    assert set(base["output_limits"]["modes"]) == {"full", "memguard:0.5"}
    assert base["output_limits"]["memguard"]["trained_on"] == "given"
    assert guarded["memguard"]["trained_on"] == "given (shadow models)"
    assert base["output_limits"]["memguard"]["weight"] == guarded["memguard"]["weight"]
