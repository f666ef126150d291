"""Adversarial regularisation (Nasr, Shokri, Houmansadr 2018): lambda = 0 is plain training, the sign
of the privacy term's gradient, the adversary's loss against a slow BCE loop, the features against a
slow loop, a tiny run's recipe and the bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_mia.core.errors import LlmMiaError
from llm_mia.training.adv_reg import adversary_gain, block_features, privacy_term
from llm_mia.training.train import train_model
from tests.conftest import run_cli
from tests.training.test_train import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=12, n_heldout=4)


def test_lambda_zero_is_plain_training(corpus, tmp_path):
    a = train_model(corpus, tmp_path / "plain", preset="tiny", max_steps=3, seed=1, progress=False)
    b = train_model(corpus, tmp_path / "adv", preset="tiny", max_steps=3, seed=1, defense="adv-reg", adv_lambda=0.0,
                    progress=False)
    wa, wb = load_file(a.out_dir / "model.safetensors"), load_file(b.out_dir / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_privacy_term_gradient_pushes_member_loss_up_by_hand():
    h = torch.nn.Linear(1, 1)  # "member" more likely at low loss: w < 0
    with torch.no_grad():
        h.weight.fill_(-2.0)
        h.bias.fill_(1.0)
    f = torch.tensor([[1.5]], requires_grad=True)  # a member block's mean loss
    privacy_term(h, f, 0.5).backward()
    sig = 1 / (1 + math.exp(-(-2.0 * 1.5 + 1.0)))
    expected = 0.5 * -2.0 * (1 - sig)  # d/df [lambda log sigmoid(w f + b)] = lambda w (1 - sigmoid)
    assert f.grad.item() == pytest.approx(expected, abs=1e-6) and expected < 0  # descent raises the loss


def test_privacy_term_raises_the_member_loss_through_the_features():
    h = torch.nn.Linear(3, 1)
    with torch.no_grad():
        h.weight.copy_(torch.tensor([[-1.0, 0.0, 0.0]]))
        h.bias.zero_()
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]], requires_grad=True)  # (1, 2, 3)
    targets = torch.tensor([[0, 1]])
    before = block_features(logits, targets)[0, 0].item()
    privacy_term(h, block_features(logits, targets), 1.0).backward()
    with torch.no_grad():
        after = block_features(logits - 0.5 * logits.grad, targets)[0, 0].item()
    assert after > before


def test_adversary_loss_is_the_bce_of_a_slow_loop():
    am, ar = [0.3, -1.2], [2.0, -0.5, 0.1]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    bce_members = sum(-math.log(sig(v)) for v in am) / len(am)  # label 1
    bce_refs = sum(-math.log(1 - sig(v)) for v in ar) / len(ar)  # label 0
    g = adversary_gain(torch.tensor(am), torch.tensor(ar)).item()
    assert -g == pytest.approx(bce_members + bce_refs, abs=1e-6)


def test_block_features_by_a_slow_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    targets = torch.randint(0, 5, (2, 6))
    f = block_features(logits, targets)
    for b in range(2):
        nll, ent = [], []
        for t in range(6):
            z = [math.exp(v) for v in logits[b, t].tolist()]
            p = [v / sum(z) for v in z]
            nll.append(-math.log(p[targets[b, t]]))
            ent.append(-sum(q * math.log(q) for q in p))
        top = sorted(nll, reverse=True)[:2]  # ceil(20% of 6) = 2 largest losses
        assert f[b].tolist() == pytest.approx([sum(nll) / 6, sum(top) / 2, sum(ent) / 6], abs=1e-5)


def test_adv_reg_tiny_run_records_the_adversary(corpus, tmp_path):
    s = train_model(corpus, tmp_path / "m", preset="tiny", defense="adv-reg", max_steps=4, adv_k=2, progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    a = r["adv_reg"]
    assert r["defense"] == "adv-reg" and a["lambda"] == 1.0 and a["adversary_steps_per_model_step"] == 2
    assert [e["step"] for e in a["adversary_trajectory"]] == [1, 2, 3, 4]
    assert all(0 <= e["adversary_balanced_accuracy"] <= 1 and e["gain"] <= 0 for e in a["adversary_trajectory"])
    ref = a["reference_set"]
    assert ref["n_documents"] == 2 and len(set(ref["indices"])) == 2 and all(0 <= i < 4 for i in ref["indices"])


def test_adv_reg_with_a_reference_file(corpus, tmp_path):
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"text": f"a reference text number {i} for the adversary."}) + "\n"
                           for i in range(3)))
    s = train_model(corpus, tmp_path / "m", preset="tiny", defense="adv-reg", max_steps=2, reference_set=str(ref),
                    progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())["adv_reg"]["reference_set"]
    assert r["n_documents"] == 3 and r["source"] == str(ref.resolve())


def test_adv_reg_bad_input_before_training(corpus, tmp_path):
    out = tmp_path / "m"
    for kw, msg in [({"adv_lambda": -1.0}, "--adv-lambda"), ({"adv_lambda": math.nan}, "--adv-lambda"),
                    ({"adv_k": 0}, "--adv-k"), ({"reference_set": str(tmp_path / "nope.jsonl")}, "not found")]:
        with pytest.raises(LlmMiaError, match=msg):
            train_model(corpus, out, preset="tiny", defense="adv-reg", progress=False, **kw)
    with pytest.raises(LlmMiaError, match="need --defense adv-reg"):
        train_model(corpus, out, preset="tiny", defense="selena", adv_lambda=2.0, progress=False)
    lonely = write_corpus(tmp_path / "lonely", n_train=6, n_heldout=1)
    with pytest.raises(LlmMiaError, match="--reference-set"):
        train_model(lonely, out, preset="tiny", defense="adv-reg", progress=False)
    assert not out.exists()


@pytest.mark.parametrize("extra, msg", [
    (["--defense", "adv-reg", "--adv-lambda", "-0.5"], "--adv-lambda"),
    (["--defense", "adv-reg", "--adv-k", "0"], "--adv-k"),
    (["--adv-lambda", "2"], "need --defense adv-reg"),
    (["--defense", "dp", "--epsilon", "1", "--reference-set", "x.jsonl"], "need --defense adv-reg"),
])
def test_cli_adv_reg_errors(extra, msg, corpus, tmp_path, capsys):
    code, _, err = run_cli(["train", "--corpus", corpus, "--out", tmp_path / "m", "--preset", "tiny", *extra], capsys)
    assert code == 2 and err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
