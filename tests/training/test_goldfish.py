"""Goldfish loss (Hans et al. 2024, arXiv 2406.10209, Section 3.1): the hashed mask, the loss over the
kept labels, the same drops for a repeated passage, and the training run. Expected masks come from
hashing each context by hand with hashlib; expected losses from a slow loop over positions."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import pytest
import torch

import llm_mia.training.defenses as D
from llm_mia.core.errors import LlmMiaError
from llm_mia.training.train import train_model
from tests.conftest import run_cli
from tests.training.test_train import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def hand_drop(context: list[int], k: int) -> bool:
    """The documented rule written out: blake2b-64 of the ids as little-endian int64, mod k == 0."""
    raw = b"".join(struct.pack("<q", t) for t in context)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") % k == 0


def test_goldfish_mask_on_a_hand_example():
    x = torch.tensor([[5, 9, 2, 7, 7, 1, 3, 8, 4, 6], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    keep = D.goldfish_keep_mask(x, k=2, h=3)
    rows = x.tolist()
    want = [[True] * 3 + [not hand_drop(r[i - 3:i], 2) for i in range(3, 10)] for r in rows]
    assert keep.tolist() == want
    assert keep[:, :3].all()  # fewer than h preceding tokens: always kept
    # the constant row has one context (1, 1, 1) everywhere: all its positions >= h share one decision
    assert len(set(keep[1, 3:].tolist())) == 1
    assert not keep.all()  # k = 2 drops something in these 14 positions


def test_goldfish_drop_rate_near_one_in_k():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5000, (8, 200), generator=g)
    keep = D.goldfish_keep_mask(x, k=4, h=13)
    dropped = float((~keep[:, 13:]).float().mean())
    assert abs(dropped - 0.25) < 0.03  # 1,496 positions: std of the rate about 0.011


def test_goldfish_duplicated_passage_drops_the_same_positions():
    g = torch.Generator().manual_seed(1)
    passage = torch.randint(0, 1000, (60,), generator=g)
    a = torch.cat([torch.randint(0, 1000, (7,), generator=g), passage, torch.randint(0, 1000, (3,), generator=g)])
    b = torch.cat([torch.randint(0, 1000, (30,), generator=g), passage[:40]])
    x = torch.stack([a, b])  # (2, 70): the passage at offsets 7 and 30
    keep = D.goldfish_keep_mask(x, k=4, h=13)
    # every passage position with h passage tokens before it: same context, same decision
    pa, pb = keep[0, 7 + 13:7 + 40], keep[1, 30 + 13:30 + 40]
    assert torch.equal(pa, pb) and not pa.all()
    # and again in a later call (no state, no seed)
    assert torch.equal(D.goldfish_keep_mask(x, k=4, h=13), keep)


def test_goldfish_loss_is_the_mean_over_kept_labels():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 11, (3, 9), generator=g)
    logits = torch.randn(3, 9, 11, generator=g)
    keep = D.goldfish_keep_mask(x, k=2, h=2)
    total, n = 0.0, 0
    for b in range(3):
        for i in range(1, 9):
            if keep[b, i]:
                logp = logits[b, i - 1].double().log_softmax(-1)
                total += -float(logp[x[b, i]])
                n += 1
    assert 0 < n < 24
    assert float(D.goldfish_loss(logits, x, keep)) == pytest.approx(total / n, rel=1e-5)
    # all kept: the plain mean next-token loss
    full = torch.ones_like(keep)
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), x[:, 1:].reshape(-1))
    assert float(D.goldfish_loss(logits, x, full)) == pytest.approx(float(plain), rel=1e-5)


@pytest.mark.parametrize("k,h", [(1, 13), (4, 0)])
def test_goldfish_bad_settings(k, h):
    with pytest.raises(LlmMiaError, match="goldfish"):
        D.goldfish_keep_mask(torch.zeros(1, 4, dtype=torch.long), k=k, h=h)


def test_train_with_goldfish(corpus, tmp_path):
    s = train_model(corpus, tmp_path / "m", preset="tiny", defense="goldfish", max_steps=2, progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    assert r["defense"] == "goldfish" and r["goldfish"]["k"] == 4 and r["goldfish"]["h"] == 13
    assert 0.15 < r["goldfish"]["dropped_fraction"] < 0.3  # positions >= 13 of 128-token blocks, 1 in 4
    assert math.isfinite(s.train_loss)


def test_cli_goldfish_offered_and_checked(corpus, tmp_path, capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and "goldfish" in out and "--goldfish-k" in out
    code, _, err = run_cli(["train", "--corpus", corpus, "--out", tmp_path / "m", "--preset", "tiny",
                            "--goldfish-k", "8"], capsys)
    assert code == 2 and "--goldfish-k need --defense goldfish" in err
    code, _, err = run_cli(["train", "--corpus", corpus, "--out", tmp_path / "m", "--preset", "tiny",
                            "--defense", "goldfish", "--goldfish-k", "1"], capsys)
    assert code == 2 and "--goldfish-k" in err and len(err.strip().splitlines()) == 1
