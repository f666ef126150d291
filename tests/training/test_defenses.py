"""Training defences: DP-SGD mechanics (P01, P02, P03 with --defense dp), dedup, weight decay,
dropout and early stopping. Expected values come from plain autograd, hand counts or the accountant
fed the numbers by hand."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import llm_mia.training.defenses as D
import llm_mia.training.train as train_mod
from llm_mia.core.errors import LlmMiaError
from llm_mia.training.train import train_model
from tests.conftest import run_cli, train_capturing
from tests.training.test_train import write_corpus

X = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]])


def s2_no_dropout(s2_model) -> GPT2LMHeadModel:
    """S2 with dropout 0 (P01), same weights as the fixture."""
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    m = GPT2LMHeadModel(cfg)
    m.load_state_dict(s2_model.state_dict())
    return m.train()


def autograd_per_sample(model, x) -> list[dict[str, torch.Tensor]]:
    """Slow oracle: gradient of sample i's own loss, one sample at a time, on an unwrapped copy."""
    out = []
    for i in range(x.shape[0]):
        model.zero_grad()
        model(input_ids=x[i:i + 1], labels=x[i:i + 1]).loss.backward()
        out.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    return out


# ------------------------------------------------------------------------------------------- P01


def test_p01_per_sample_grads_equal_autograd(s2_model):
    model = s2_no_dropout(s2_model)
    oracle = autograd_per_sample(copy.deepcopy(model), X)
    gsm = D.wrap_for_dp(model)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie holds after wrapping
    D.per_sample_losses(gsm, X).sum().backward()
    names = dict(model.named_parameters())  # a tied tensor once, under transformer.wte.weight
    assert "lm_head.weight" not in names
    for n, p in names.items():
        assert p.grad_sample.shape == (3, *p.shape), n
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], oracle[i][n], rtol=0, atol=1e-5, msg=n)
    # (the oracle's gradient of the tied tensor is autograd's sum over both uses, so the match
    # above is the "summed over wte and lm_head" requirement)
    # position embedding: a real batch dimension with per-sample rows that differ
    wpe = model.transformer.wpe.weight.grad_sample
    assert wpe.shape[0] == 3 and not torch.allclose(wpe[0], wpe[1])
    gsm.to_standard_module()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_per_sample_loss_is_each_rows_own_loss(s2_model):
    model = s2_no_dropout(s2_model).eval()
    got = D.per_sample_losses(model, X)
    want = torch.stack([model(input_ids=X[i:i + 1], labels=X[i:i + 1]).loss for i in range(3)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("clip", [1e9, 0.05])
def test_dpsgd_step_sums_clipped_grads(s2_model, clip):
    """noise 0: p.grad = sum_i g_i * min(1, C / ||g_i||) / expected batch size (hand formula)."""
    model = s2_no_dropout(s2_model)
    oracle = autograd_per_sample(copy.deepcopy(model), X)
    names = [n for n, _ in model.named_parameters()]
    norms = [math.sqrt(sum(float(o[n].pow(2).sum()) for n in names)) for o in oracle]
    assert clip > 1e6 or all(nm > clip for nm in norms)  # the small C really clips every sample
    step = D.DPSGD(D.wrap_for_dp(model), max_grad_norm=clip, noise_multiplier=0.0, expected_batch_size=3.0,
                   generator=torch.Generator().manual_seed(0))
    step.accumulate(X[:2])  # two micro-batches make one step
    step.accumulate(X[2:])
    step.finish()
    for n, p in model.named_parameters():
        want = sum(o[n] * min(1.0, clip / nm) for o, nm in zip(oracle, norms)) / 3.0
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6, msg=n)
    assert step.n_samples == 3 and step.n_clipped == (0 if clip > 1e6 else 3)


def test_dpsgd_empty_step_adds_noise_of_the_right_scale(s2_model):
    model = s2_no_dropout(s2_model)
    step = D.DPSGD(D.wrap_for_dp(model), max_grad_norm=0.5, noise_multiplier=2.0, expected_batch_size=4.0,
                   generator=torch.Generator().manual_seed(0))
    step.finish()  # nothing sampled
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert abs(float(g.std()) - 2.0 * 0.5 / 4.0) < 0.02  # sigma * C / (q N) = 0.25, ~30 k draws
    assert abs(float(g.mean())) < 0.01


# ------------------------------------------------------------------------------------------- P02


def _blocks(n: int, T: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 64, (n, T), generator=g)


def test_p02_accounting_matches_the_training_that_happened(s2_model, monkeypatch):
    model = s2_no_dropout(s2_model)
    finishes, micro = [], []
    orig_finish, orig_acc = D.DPSGD.finish, D.DPSGD.accumulate
    monkeypatch.setattr(D.DPSGD, "finish", lambda self: (finishes.append(1), orig_finish(self))[1])
    monkeypatch.setattr(D.DPSGD, "accumulate", lambda self, x: (micro.append(len(x)), orig_acc(self, x))[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = D.dp_train_loop(model, _blocks(1000), steps=40, batch_size=50, micro_batch=10, noise_multiplier=1.0,
                          max_grad_norm=1.0, delta=1e-5, optimizer=opt, generator=torch.Generator().manual_seed(0))
    acc = run.accounting
    assert acc["sample_rate"] == 0.05 and acc["steps"] == 40 and acc["n_records"] == 1000
    assert len(finishes) == 40  # one noise addition per optimizer step
    assert max(micro) <= 10 and len(micro) > 40  # micro-batches are not steps
    assert acc["epsilon"] == pytest.approx(2.97, abs=0.005)
    # the accountant fed by hand with the same (sigma, q, steps)
    from opacus.accountants import RDPAccountant

    ra = RDPAccountant()
    ra.history = [(1.0, 0.05, 40)]
    assert acc["epsilon"] == pytest.approx(ra.get_epsilon(1e-5), rel=1e-12)
    assert ra.get_epsilon(1e-5) == ra.get_epsilon(1e-5)  # asking twice gives the same value
    # the wrong accountings the case names
    assert D.dp_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=200, delta=1e-5) == pytest.approx(1.34, abs=0.01)
    assert D.dp_epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=200, delta=1e-5) == pytest.approx(5.37, abs=0.01)
    assert len(run.losses) == 40 and all(math.isfinite(x) for x in run.losses)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_p02_poisson_empty_batches_no_crash_and_still_noisy(s2_model):
    model = s2_no_dropout(s2_model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snaps = {}

    def on_step(step, loss):
        snaps[step] = (loss, model.transformer.wpe.weight.detach().clone())
        return False

    start = model.transformer.wpe.weight.detach().clone()
    run = D.dp_train_loop(model, _blocks(40), steps=40, batch_size=2, micro_batch=10, noise_multiplier=1.0,
                          max_grad_norm=1.0, delta=1e-5, optimizer=opt, generator=torch.Generator().manual_seed(0),
                          on_step=on_step)
    assert run.accounting["sample_rate"] == 0.05 and run.accounting["steps"] == 40
    empty = [s for s, (loss, _) in snaps.items() if math.isnan(loss)]
    assert run.accounting["empty_steps"] == len(empty) >= 1
    s = empty[0]
    before = snaps[s - 1][1] if s > 1 else start
    assert not torch.equal(before, snaps[s][1])  # plain SGD: a zero gradient would not move it


def test_noise_for_epsilon_reaches_the_target():
    sigma = D.noise_for_epsilon(epsilon=3.0, delta=1e-5, sample_rate=0.05, steps=40)
    eps = D.dp_epsilon(noise_multiplier=sigma, sample_rate=0.05, steps=40, delta=1e-5)
    assert 3.0 - 0.01 <= eps <= 3.0
    assert D.dp_epsilon(noise_multiplier=sigma * 1.2, sample_rate=0.05, steps=40, delta=1e-5) < eps
    with pytest.raises(LlmMiaError, match="epsilon"):
        D.noise_for_epsilon(epsilon=-1, delta=1e-5, sample_rate=0.05, steps=40)


def test_poisson_batches_rate():
    g = torch.Generator().manual_seed(0)
    sizes = [len(i) for i in D.poisson_batches(1000, sample_rate=0.05, steps=200, generator=g)]
    assert abs(sum(sizes) / 200 - 50) < 2.0  # mean 50, std of the mean 0.49


# ------------------------------------------------------------------------------------- P03 + recipe


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def dp_trained(corpus, tmp_path_factory):
    s, model, _ = train_capturing(corpus, tmp_path_factory.mktemp("dp") / "m", preset="tiny", defense="dp",
                                  epsilon=8.0, delta=1e-5, max_steps=6, micro_batch=3, progress=False)
    return s, model


def test_p03_dp_checkpoint_round_trip(dp_trained):
    s, model = dp_trained
    reloaded, info = AutoModelForCausalLM.from_pretrained(s.out_dir, output_loading_info=True,
                                                          attn_implementation=model.config._attn_implementation)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any(k.startswith(("_module.", "module.")) or "._module." in k for k in reloaded.state_dict())
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(getattr(p, "grad_sample", None) is not None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # opacus hooks gone
    ids = torch.tensor([[5, 9, 22, 40, 7, 3, 11]])
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = reloaded.eval()(input_ids=ids).logits
        torch.manual_seed(0)
        fresh = type(model)(model.config).eval()(input_ids=ids).logits
    assert torch.equal(got, want)
    assert not torch.allclose(fresh, want, atol=1e-3)


def test_dp_recipe(dp_trained, corpus):
    s, _ = dp_trained
    r = json.loads((s.out_dir / "recipe.json").read_text())
    dp = r["dp"]
    assert r["defense"] == "dp" and dp["steps"] == 6 == r["steps"] and dp["micro_batch"] == 3
    # q = logical batch / number of fixed blocks, recorded; epsilon from exactly those numbers
    assert dp["sample_rate"] == pytest.approx(min(1.0, train_mod.PRESETS["tiny"].batch_size / dp["n_records"]))
    eps = D.dp_epsilon(noise_multiplier=dp["noise_multiplier"], sample_rate=dp["sample_rate"], steps=dp["steps"],
                       delta=dp["delta"])
    assert dp["epsilon"] == pytest.approx(eps, rel=1e-12)
    assert dp["epsilon"] <= 8.0 and dp["target_epsilon"] == 8.0 and dp["delta"] == 1e-5
    assert r["grad_clip"] is None and r["autocast"] is None


# ------------------------------------------------------------------------------------------- dedup

SECRET = "The PIN of Jane Roe is 482913 and nobody knows."  # 47 characters


def test_dedup_rules_by_hand():
    a = "Alpha bravo charlie delta echo foxtrot golf hotel india juliet."
    docs = [a,
            "ALPHA bravo, charlie delta echo foxtrot golf hotel india juliet",  # exact after normalisation
            "kilo lima mike|" + SECRET + "|november oscar",
            "papa quebec romeo#" + SECRET + "#sierra tango",  # repeated span: cut once
            "uniform victor whiskey xray yankee zulu one two three four five six seven."]
    res = D.dedup_training_texts(docs, min_span_chars=30)
    assert res.exact_documents_removed == 1 and res.near_documents_removed == 0
    assert res.texts == [docs[0], docs[2], "papa quebec romeo##sierra tango", docs[4]]
    assert res.spans_removed == 1 and res.chars_removed == len(SECRET)
    c = res.counts()
    assert c["documents_in"] == 5 and c["documents_out"] == 4 and c["min_span_chars"] == 30


def test_dedup_short_repeats_kept_and_repeats_inside_one_document_cut():
    short = "abcdefghij"  # 10 chars < 30
    docs = ["xx " + short + " yy", "zz " + short + " ww", "1234567890qwertyuiopASDFGHJKLzxcvbnm!" * 2]
    res = D.dedup_training_texts(docs, min_span_chars=30)
    assert res.texts[:2] == docs[:2]
    assert res.texts[2] == "1234567890qwertyuiopASDFGHJKLzxcvbnm!"
    assert res.chars_removed == 37 and res.spans_removed == 1
    with pytest.raises(LlmMiaError, match="min_span_chars"):
        D.dedup_training_texts(docs, min_span_chars=3)


def test_dedup_near_duplicate_document():
    a = "the quick brown fox jumps over the lazy dog near the river bank today"
    b = "the quick brown fox jumps over the lazy dog near the river"  # all trigrams in a
    res = D.dedup_training_texts([a, b], min_span_chars=200)
    assert res.near_documents_removed == 1 and res.texts == [a]


def test_train_with_dedup_defense(corpus, tmp_path):
    s = train_model(corpus, tmp_path / "m", preset="tiny", defense="dedup", max_steps=2, progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    texts = [json.loads(line)["text"] for line in (corpus / "train.jsonl").read_text().splitlines()]
    want = D.dedup_training_texts(texts, min_span_chars=30)
    assert r["defense"] == "dedup" and r["dedup"] == json.loads(json.dumps(want.counts()))
    # the corpus plants "the PIN of Jane Roe is 482913." (31 chars) in 10 documents: 9 copies cut
    assert r["dedup"]["chars_removed"] >= 9 * 30
    assert sum(t.count("482913") for t in want.texts) == 1
    assert r["n_train_documents"] == want.counts()["documents_out"]


# --------------------------------------------------------------- weight decay, dropout, early stop


def test_weight_decay_reaches_the_optimizer(corpus, tmp_path, monkeypatch):
    groups = []

    class Spy(torch.optim.AdamW):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            groups.extend(self.param_groups)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    s = train_model(corpus, tmp_path / "m", preset="tiny", weight_decay=0.25, dropout=0.3, max_steps=1,
                    progress=False)
    decay = [g for g in groups if g["weight_decay"] == 0.25]
    assert len(decay) == 1 and all(p.dim() >= 2 for p in decay[0]["params"])
    assert all(p.dim() < 2 for g in groups if g["weight_decay"] == 0.0 for p in g["params"])
    r = json.loads((s.out_dir / "recipe.json").read_text())
    assert r["weight_decay"] == 0.25 and r["dropout"] == 0.3
    cfg = json.loads((s.out_dir / "config.json").read_text())
    assert cfg["resid_pdrop"] == cfg["embd_pdrop"] == cfg["attn_pdrop"] == 0.3


def test_early_stopper_restores_the_best_weights():
    m = torch.nn.Linear(2, 2)
    seq = iter([3.0, 2.0, 2.5, 2.6, 1.0])
    stopper = train_mod._EarlyStopper(m, lambda: next(seq), patience=2, every=5)
    stops = []
    for step in range(1, 26):
        with torch.no_grad():
            m.weight.fill_(float(step))
        stops.append(stopper(step, 0.0))
        if stops[-1]:
            break
    assert step == 20  # evaluations at 5, 10, 15, 20: best at 10, then two without a new best
    assert stopper.best_step == 10 and stopper.best == 2.0
    stopper.restore()
    assert torch.equal(m.weight, torch.full((2, 2), 10.0))


def test_train_with_early_stopping(corpus, tmp_path):
    s = train_model(corpus, tmp_path / "m", preset="tiny", early_stopping=1, eval_every=2, max_steps=12,
                    progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    es = r["early_stopping"]
    evals = {e["step"]: e["heldout_loss"] for e in es["evals"]}
    assert es["best_step"] in evals and min(evals.values()) == pytest.approx(es["best_heldout_loss"], abs=1e-5)
    assert r["steps"] == es["stopped_at"] <= 12 and sorted(evals) == list(range(2, r["steps"] + 1, 2))
    # the saved model is the best one: its held-out loss (same tokens: the file is < 16 k tokens)
    assert r["heldout_loss"] == pytest.approx(es["best_heldout_loss"], abs=1e-4)


def test_defense_bad_inputs(corpus, tmp_path):
    out = tmp_path / "m"
    with pytest.raises(LlmMiaError, match="did you mean 'dp'"):
        train_model(corpus, out, preset="tiny", defense="dpp", progress=False)
    with pytest.raises(LlmMiaError, match="exactly one of --epsilon"):
        train_model(corpus, out, preset="tiny", defense="dp", progress=False)
    with pytest.raises(LlmMiaError, match="need --defense dp"):
        train_model(corpus, out, preset="tiny", epsilon=1.0, progress=False)
    with pytest.raises(LlmMiaError, match="--delta"):
        train_model(corpus, out, preset="tiny", defense="dp", epsilon=1.0, delta=2.0, progress=False)
    with pytest.raises(LlmMiaError, match="--dropout"):
        train_model(corpus, out, preset="tiny", dropout=1.5, progress=False)
    with pytest.raises(LlmMiaError, match="--weight-decay"):
        train_model(corpus, out, preset="tiny", weight_decay=-1.0, progress=False)
    with pytest.raises(LlmMiaError, match="patience"):
        train_model(corpus, out, preset="tiny", early_stopping=0, progress=False)
    assert not out.exists()


def test_cli_train_defense_errors(corpus, tmp_path, capsys):
    code, _, err = run_cli(["train", "--corpus", corpus, "--out", tmp_path / "m", "--preset", "tiny",
                            "--defense", "dp"], capsys)
    assert code == 2 and err.startswith("error: ") and "epsilon" in err and len(err.strip().splitlines()) == 1
