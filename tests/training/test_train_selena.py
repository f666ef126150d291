"""SELENA (Tang et al. 2022): Split-AI routing, the averaged teacher, the distillation loss, a tiny
run and its bad input. Expected values are hand-built tables, hand-computed numbers, or the paper's
assignment rule written out as a slow loop."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.training.selena import (
    SplitAIPlan,
    distillation_loss,
    split_ai_assignment,
    split_ai_probs,
)
from llm_mia.training.train import _batches, train_model
from tests.conftest import run_cli
from tests.training.test_train import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=12, n_heldout=4)


def test_split_ai_routing_table_by_hand():
    # K = 3, L = 1; excluded (answering) sub-models per document, and who trains on what, by hand.
    plan = SplitAIPlan(k=3, l=1, excluded=((0,), (2,), (0,), (1,), (2,)))
    assert [plan.training_documents(s) for s in range(3)] == [[1, 3, 4], [0, 1, 2, 4], [0, 2, 3]]
    # K = 4, L = 2
    plan = SplitAIPlan(k=4, l=2, excluded=((0, 1), (1, 3), (2, 3)))
    assert [plan.training_documents(s) for s in range(4)] == [[1, 2], [2], [0, 1], [0]]
    w = plan.weights(torch.tensor([[1, 0], [2, 2]]))  # (2, 2, K): tokens owned by docs 1, 0 / 2, 2
    assert w.tolist() == [[[0, .5, 0, .5], [.5, .5, 0, 0]], [[0, 0, .5, .5], [0, 0, .5, .5]]]
    assert plan.to_recipe()["sub_model_documents"] == [2, 1, 2, 1]


def test_split_ai_assignment_is_the_papers_rule_and_excludes_each_member_exactly_l_times():
    n, k, l, seed = 7, 4, 2, 7
    g = torch.Generator().manual_seed(seed)  # the rule, written out: one randperm(K) per document, first L
    expected = [sorted(torch.randperm(k, generator=g)[:l].tolist()) for _ in range(n)]
    assert all(any(s not in e for e in expected) for s in range(k))  # no redraw needed for this seed
    plan = split_ai_assignment(n, k, l, seed)
    assert [list(e) for e in plan.excluded] == expected and plan.draws == 1
    for i in range(n):
        assert len(set(plan.excluded[i])) == l
        assert sum(i in plan.training_documents(s) for s in range(k)) == k - l
    assert split_ai_assignment(n, k, l, seed) == plan


def test_split_ai_redraws_until_every_sub_model_has_a_document():
    # 2 documents, K = 2, L = 1: a draw that excludes both from the same sub-model is redrawn
    for seed in range(20):
        plan = split_ai_assignment(2, 2, 1, seed)
        assert sorted(plan.excluded) == [(0,), (1,)]


def test_split_ai_routes_a_non_member_by_its_hash():
    plan = SplitAIPlan(k=3, l=1, excluded=((0,), (2,), (1,), (1,), (2,)))
    text = "a text nobody trained on"
    j = int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 5
    assert plan.route_text(text) == plan.excluded[j]


def test_split_ai_average_of_two_sub_models_by_hand():
    # K = 2 sub-models, V = 2, one block of 2 predicted tokens.
    z0 = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]])  # softmax: [.5, .5], [.75, .25]
    z1 = torch.tensor([[[math.log(9), 0.0], [0.0, math.log(4)]]])  # [.9, .1], [.2, .8]
    w = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])  # token 0: both answer; token 1: only sub-model 1
    p = split_ai_probs(torch.stack([z0, z1]), w)
    assert p.shape == (1, 2, 2)
    assert p[0, 0].tolist() == pytest.approx([0.7, 0.3], abs=1e-6)
    assert p[0, 1].tolist() == pytest.approx([0.2, 0.8], abs=1e-6)


def test_distillation_loss_is_kl_by_hand():
    teacher = torch.tensor([[[0.7, 0.3], [1.0, 0.0]]])
    student = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]])  # q = [.5, .5], [.75, .25]
    kl0 = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)
    kl1 = 1.0 * math.log(1.0 / 0.75)  # 0 log 0 = 0
    assert distillation_loss(student, teacher).item() == pytest.approx((kl0 + kl1) / 2, abs=1e-6)


def test_batches_owners_name_each_tokens_document():
    docs = [[10 + j] * (3 + j) for j in range(5)]  # document j is the token 10 + j repeated; EOS = 0
    gen = torch.Generator().manual_seed(0)
    it = _batches(docs, eos_id=0, n_ctx=4, batch_size=2, generator=gen, owners=True)
    for _ in range(6):
        x, o = next(it)
        assert x.shape == o.shape == (2, 4)
        for b in range(2):
            for t in range(4):
                if x[b, t] != 0:
                    assert o[b, t] == x[b, t] - 10
                elif t > 0 and x[b, t - 1] != 0:  # an EOS belongs to the document it ends
                    assert o[b, t] == x[b, t - 1] - 10


def test_selena_tiny_run_records_the_routing(corpus, tmp_path):
    s = train_model(corpus, tmp_path / "m", preset="tiny", defense="selena", selena_k=3, selena_l=1, max_steps=4,
                    selena_sub_steps=3, progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    sel = r["selena"]
    assert r["defense"] == "selena" and sel["k"] == 3 and sel["l"] == 1 and sel["sub_steps"] == 3
    assert len(sel["excluded"]) == r["n_train_documents"] == 12 and all(len(e) == 1 for e in sel["excluded"])
    assert sel["sub_model_documents"] == [sum(s not in e for e in sel["excluded"]) for s in range(3)]
    assert [m["documents"] for m in sel["sub_models"]] == sel["sub_model_documents"]
    assert s.steps == sel["distill_steps"] == 4 and len(sel["distill_kl"]) == 4
    assert (s.out_dir / "model.safetensors").is_file()


def test_selena_bad_input_before_training(corpus, tmp_path):
    out = tmp_path / "m"
    for kw, msg in [({"selena_k": 1}, "--selena-k"), ({"selena_l": 4}, r"--selena-l .*\[1, 3\]"),
                    ({"selena_l": 0}, "--selena-l"), ({"selena_k": 13, "selena_l": 2}, "at least K = 13"),
                    ({"selena_sub_steps": 0}, "--selena-sub-steps"), ({"early_stopping": 2}, "early-stopping")]:
        with pytest.raises(LlmMiaError, match=msg):
            train_model(corpus, out, preset="tiny", defense="selena", progress=False, **kw)
    with pytest.raises(LlmMiaError, match="--selena-k need --defense selena"):
        train_model(corpus, out, preset="tiny", defense="dp", epsilon=1.0, selena_k=5, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("extra, msg", [
    (["--defense", "selena", "--selena-k", "1"], "--selena-k"),
    (["--defense", "selena", "--selena-l", "4"], "--selena-l"),
    (["--defense", "selena", "--selena-k", "20"], "at least K = 20"),
    (["--defense", "dp", "--epsilon", "1", "--selena-l", "1"], "need --defense selena"),
])
def test_cli_selena_errors(extra, msg, corpus, tmp_path, capsys):
    code, _, err = run_cli(["train", "--corpus", corpus, "--out", tmp_path / "m", "--preset", "tiny", *extra], capsys)
    assert code == 2 and err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("defense, kw", [("selena", {"selena_k": 2, "selena_l": 1, "selena_sub_steps": 1}),
                                         ("adv-reg", {})])
def test_selena_and_adv_reg_train_a_lora_adapter(defense, kw, corpus, tmp_path):
    from llm_mia.training.train import LoraSpec

    base = train_model(corpus, tmp_path / "base", preset="tiny", max_steps=2, progress=False)
    s = train_model(corpus, tmp_path / "adapter", base=str(base.out_dir), lora=LoraSpec(r=2), preset="tiny",
                    max_steps=2, defense=defense, progress=False, **kw)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    assert (s.out_dir / "adapter_model.safetensors").is_file() and r["defense"] == defense and r["lora"]["r"] == 2
