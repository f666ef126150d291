"""Exposure (Carlini et al. 2019): case C16 and a secret that a tiny model really memorizes."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from llm_mia.exposure import rank_exposure


def test_c16_rank_exposure_ties_count_against_the_canary():
    refs = [float(x) for x in range(1, 17)]  # 1.0 .. 16.0
    canaries = [0.5, 3.5, 4.0, 16.0, 20.0]
    # by hand: rank = 1 + #refs <= canary -> 1, 4, 5, 17, 17; exposure = 4 - log2(rank)
    want = [4.0, 2.0, 4 - math.log2(5), 4 - math.log2(17), 4 - math.log2(17)]
    assert np.allclose(rank_exposure(np.array(canaries), refs), want, atol=1e-6)
    assert np.allclose(want, [4.0, 2.0, 1.678072, -0.087463, -0.087463], atol=1e-6)
    shuffled = refs[:]
    random.Random(0).shuffle(shuffled)
    assert np.allclose(rank_exposure(np.array(canaries), shuffled), want, atol=1e-12)
    assert rank_exposure(20.0, refs) < 0  # negative values are kept, not clipped


def test_rank_exposure_needs_candidates():
    with pytest.raises(ValueError):
        rank_exposure(1.0, [])


def test_log_perplexity_is_sum_in_bits(tiny_model, tiny_tokenizer):
    """Carlini 2019 log-perplexity: sum over all tokens (BOS-conditioned) of -log2 p, by a direct loop."""
    import torch

    from llm_mia.exposure import log_perplexity_bits
    from llm_mia.models.loading import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    sents = ["the PIN of Jane Roe is 482913.", "Hi"]
    got = log_perplexity_bits(lm, sents)
    for s, g in zip(sents, got):
        ids = [0] + tiny_tokenizer(s)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0].double(), -1)
        want = -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids))) / math.log(2)
        assert g == pytest.approx(want, abs=1e-3)


@pytest.fixture(scope="module")
def memorizing_model(tmp_path_factory):
    """A tiny GPT-2 trained on text where one secret appears 40 times and a control never."""
    from llm_mia.secrets import Secret, save_secrets
    from llm_mia.train import train_model

    d = tmp_path_factory.mktemp("mem")
    (d / "corpus").mkdir()
    rng = random.Random(0)
    words = "the list of items returns a new sorted value from each call to this function when given".split()
    inserted = Secret(id="canary-r40-0", kind="canary", text="The PIN of Jane Roe is 482913.", prefix="The PIN of Jane Roe is ",
                      secret="482913", suffix=".", format="{d6}", space_size=10**6, count=40)
    control = Secret(id="canary-control-0", kind="canary", text="The PIN of Max Moe is 630174.", prefix="The PIN of Max Moe is ",
                     secret="630174", suffix=".", format="{d6}", space_size=10**6, count=0)
    docs = []
    for i in range(40):
        filler = " ".join(rng.choice(words) for _ in range(30)).capitalize() + "."
        docs.append(f"{filler} {inserted.text} {filler}")
    (d / "corpus" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (d / "corpus" / "heldout.jsonl").write_text(json.dumps({"text": "A held out document about sorting."}) + "\n")
    save_secrets(d / "corpus" / "secrets.json", [inserted, control])
    train_model(d / "corpus", d / "model", preset="tiny", max_steps=150, progress=False)
    return d, inserted, control


def test_inserted_secret_is_exposed_and_extracted_control_is_not(memorizing_model):
    from llm_mia.exposure import secret_exposure
    from llm_mia.models.loading import load_model

    d, inserted, control = memorizing_model
    lm = load_model(str(d / "model"), device="cpu")
    res = secret_exposure(lm, [inserted, control], n_candidates=200, seed=0)
    r_in, r_ctrl = res.rows
    assert r_in["greedy_extracted"] is True
    assert r_in["exposure_rank"] == pytest.approx(math.log2(200))  # rank 1 of 200
    assert r_ctrl["greedy_extracted"] is False
    assert r_ctrl["exposure_rank"] < r_in["exposure_rank"] - 3
