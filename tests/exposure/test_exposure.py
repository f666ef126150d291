"""Exposure (Carlini et al. 2019): cases C16 and P15, the shared-prefix path against slow loops, exact
exposure against brute force, and a secret that a tiny model really memorizes."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from llm_mia.exposure.estimators import (
    extrapolated_exposure,
    rank_exposure,
    samples_for_half,
)


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

    from llm_mia.exposure.secrets import log_perplexity_bits
    from llm_mia.models.hf import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    sents = ["the PIN of Jane Roe is 482913.", "Hi"]
    got = log_perplexity_bits(lm, sents)
    for s, g in zip(sents, got):
        ids = [0] + tiny_tokenizer(s)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0].double(), -1)
        want = -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids))) / math.log(2)
        assert g == pytest.approx(want, abs=1e-3)



def test_c16_canary_far_below_every_reference_extrapolates_to_inf_with_flag():
    refs = [float(x) for x in range(1, 17)]
    far = extrapolated_exposure(-1e6, refs)
    assert far.bits == math.inf and "extrapolated_far_tail" in far.flags
    near = extrapolated_exposure(8.5, refs)  # the middle of the candidates: about 1 bit, finite
    assert 0.3 < near.bits < 2.0 and near.flags == []
    shuffled = refs[:]
    random.Random(1).shuffle(shuffled)
    assert extrapolated_exposure(8.5, shuffled).bits == pytest.approx(near.bits, abs=1e-6)


# ------------------------------------------------------------------ P15: skew-normal on degenerate input

def _phi_inv(q):
    from scipy.special import ndtri

    return ndtri(q)


def test_p15a_all_equal_candidates_give_nan_and_flag_rank_still_reported():
    cands = [42.0] * 1000
    e = extrapolated_exposure(41.0, cands)
    assert math.isnan(e.bits) and "extrapolated_degenerate" in e.flags
    assert float(rank_exposure(41.0, cands)) == pytest.approx(math.log2(1000))
    assert float(rank_exposure(42.0, cands)) == pytest.approx(math.log2(1000) - math.log2(1001))


def test_p15b_nonfinite_candidate_dropped_and_counted():
    vals = list(100 + 10 * _phi_inv((np.arange(500) + 0.5) / 500)) + [math.inf]
    e = extrapolated_exposure(80.0, vals)
    assert e.n_dropped == 1 and "nonfinite_candidates_dropped" in e.flags
    assert math.isfinite(e.bits)
    assert e.bits == pytest.approx(extrapolated_exposure(80.0, vals[:-1]).bits, abs=1e-9)


def test_p15c_half_normal_candidates_log_cdf_tail_and_below_support():
    cands = np.abs(_phi_inv((np.arange(200) + 0.5) / 200))
    e = extrapolated_exposure(0.01, cands)
    assert e.bits == pytest.approx(8.38, abs=0.01) and e.flags == []
    below = extrapolated_exposure(0.001, cands)
    assert below.bits == math.inf and "extrapolated_far_tail" in below.flags


def test_p15d_normal_candidates_far_secret_within_a_tenth_of_a_bit():
    from scipy.stats import norm

    cands = 100 + 10 * _phi_inv((np.arange(500) + 0.5) / 500)
    e = extrapolated_exposure(60.0, cands)
    assert e.bits == pytest.approx(14.98, abs=0.1)
    assert -norm.logcdf(-4.0) / math.log(2) == pytest.approx(14.95, abs=0.01)  # normal theory
    assert e.bits > math.log2(len(cands))  # can exceed log2 N


def test_samples_for_half_by_hand():
    assert samples_for_half(0.0) == math.inf
    assert samples_for_half(1.0) == 1
    assert samples_for_half(0.5) == 1
    assert samples_for_half(0.1) == 7  # 0.9**6 = 0.531 > 0.5 >= 0.9**7 = 0.478
    assert samples_for_half(1e-12) == math.ceil(math.log(2) * 1e12)  # no 1 - p rounding to 1
    with pytest.raises(ValueError):
        samples_for_half(1.5)


# ------------------------------------------------------------------ the shared-prefix path against slow loops

def _slow_bits(model, ids):
    """-log2 p summed over ids[1:], one sentence at a time, float64 log-softmax."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids))) / math.log(2)


def _slow_sample_log(model, ids, a, b, k=40):
    """log of the top-k renormalised probability of tokens ids[a:b] given ids[:a], token by token."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    total = 0.0
    for t in range(a, b):
        p = torch.softmax(logits[t - 1], -1)
        kth = torch.sort(p, descending=True).values[k - 1]
        if p[ids[t]] < kth:
            return -math.inf
        total += math.log(p[ids[t]].item() / p[p >= kth].sum().item())
    return total


@pytest.mark.parametrize("prefix,randoms,suffix", [
    ("The PIN of Jane Roe is ", ["482913", "000000", "7", "99999999", "482913"], "."),  # ragged random parts
    ("Hello wor", ["ld", "d", "ldx", "l", "ld"], " now!"),  # BPE merges across the boundary
    ("Alpha bet", ["a", "ab", "x", "a gamma"], ""),
    ("", ["123-45-6789", "Bye", "é"], "."),  # empty prefix: only BOS is shared
])
@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_score_space_equals_slow_whole_sentence_loop(tiny_model, tiny_tokenizer, prefix, randoms, suffix, batch_size):
    from llm_mia.exposure.secrets import score_space
    from llm_mia.models.hf import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    got = score_space(lm, prefix, randoms, suffix, batch_size=batch_size, top_k=40)
    for r, g in zip(randoms, got.logppl):
        ids = [0] + tiny_tokenizer(prefix + r + suffix)["input_ids"]
        assert g == pytest.approx(_slow_bits(tiny_model, ids), abs=1e-4)
    # candidate order changes nothing, value by value
    perm = list(range(len(randoms)))
    random.Random(0).shuffle(perm)
    again = score_space(lm, prefix, [randoms[i] for i in perm], suffix, batch_size=batch_size, top_k=40)
    assert np.allclose(again.logppl, got.logppl[perm], atol=1e-4)
    assert np.allclose(np.exp(again.sample_logprob), np.exp(got.sample_logprob[perm]), atol=1e-6)


@pytest.mark.parametrize("k", [5, 200])
def test_sample_probability_equals_token_by_token_top_k_loop(tiny_model, tiny_tokenizer, k):
    """k = 200 of a ~300-token vocabulary keeps most tokens (finite values); k = 5 mostly gives -inf."""
    from llm_mia.exposure.secrets import score_space
    from llm_mia.models.hf import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    prefix, suffix = "my social security number is ", "."
    randoms = ["123-45-6789", "555-01-0000", "9", "0"]
    got = score_space(lm, prefix, randoms, suffix, top_k=k, batch_size=3)
    for r, g in zip(randoms, got.sample_logprob):
        ids = [0] + tiny_tokenizer(prefix + r + suffix)["input_ids"]
        enc = tiny_tokenizer(prefix + r + suffix, return_offsets_mapping=True)
        # the sample continues the tokens lying wholly in the prefix ("... is", " " here), BOS first
        pre = 1 + sum(e <= len(prefix) for _, e in enc["offset_mapping"])
        end = 1 + sum(s < len(prefix) + len(r) for s, _ in enc["offset_mapping"])
        assert end > pre
        want = _slow_sample_log(tiny_model, ids, pre, end, k=k)
        if want == -math.inf:
            assert g == -math.inf
        else:
            assert g == pytest.approx(want, abs=1e-4)
    if k == 200:
        assert np.isfinite(got.sample_logprob).sum() >= 2  # the comparison above is not all -inf


def test_shared_prefix_scorer_groups_ragged_tails_and_small_groups(tiny_model):
    import torch

    from llm_mia.models.prefix import score_shared_prefix

    g = torch.Generator().manual_seed(0)
    seqs, split = [], []
    for i in range(23):
        pre = [0, 5, 6, 7] if i % 3 else [0, 5, 9]
        tail = torch.randint(1, 300, (int(torch.randint(0, 6, (1,), generator=g)),), generator=g).tolist()
        seqs.append(pre + tail)
        split.append(len(pre))
    seqs += [[0, 1], [0, 1, 2, 3, 4, 5], [0]]  # alone in their groups -> scored whole
    split += [2, 3, 1]
    res = score_shared_prefix(tiny_model, seqs, split, batch_size=4, top_k=40)
    for i, s in enumerate(seqs):
        want = -_slow_bits(tiny_model, s) * math.log(2) if len(s) > 1 else 0.0
        assert float(res.total_logprob[i]) == pytest.approx(want, abs=2e-4)
        assert int(res.n_tail[i]) == len(s) - int(res.split[i])
    assert res.split[-3:].tolist() == [1, 1, 1]


def test_sentences_longer_than_the_context_scored_like_whole_sentences(tiny_tokenizer):
    from conftest import make_tiny_gpt2

    from llm_mia.exposure.secrets import log_perplexity_bits, score_space
    from llm_mia.models.hf import from_objects

    lm = from_objects(make_tiny_gpt2(len(tiny_tokenizer), n_positions=24), tiny_tokenizer)
    prefix, suffix = "Call ", " now!"
    randoms = ["555-0100", "555-0100 " * 4 + "or 555-0199"]  # the second is longer than 24 tokens
    got = score_space(lm, prefix, randoms, suffix, top_k=40)
    want = log_perplexity_bits(lm, [prefix + r + suffix for r in randoms])  # sliding context there
    assert np.allclose(got.logppl, want, atol=1e-4)
    assert np.isfinite(got.sample_logprob[0]) or got.sample_logprob[0] == -math.inf
    assert math.isnan(got.sample_logprob[1])


# ------------------------------------------------------------------ exact exposure against brute force

def test_exact_exposure_on_a_space_of_ten_thousand_equals_brute_force(tiny_model, tiny_tokenizer):
    from llm_mia.data.secrets import Secret, enumerate_space
    from llm_mia.exposure.secrets import log_perplexity_bits, secret_exposure
    from llm_mia.models.hf import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    prefix, suffix = "Call 555-", " now!"
    secrets = [Secret(id=f"s{v}", kind="canary", text=prefix + v + suffix, prefix=prefix, secret=v, suffix=suffix,
                      format="{d4}", space_size=10**4, count=c) for v, c in (("0100", 4), ("7310", 0), ("9999", 1))]
    res = secret_exposure(lm, secrets, n_references=50, exact_limit=10**4, beams=2)
    space = enumerate_space("{d4}", 10**4)
    lp = log_perplexity_bits(lm, [prefix + v + suffix for v in space], batch_size=128)  # whole-sentence path
    for s, row in zip(secrets, res.rows):
        mine = lp[space.index(s.secret)]
        rank = 1 + sum(1 for v, x in zip(space, lp) if v != s.secret and x <= mine)
        assert row["exposure_exact"] == pytest.approx(math.log2(10**4) - math.log2(rank), abs=1e-9)
        assert row["log_perplexity_bits"] == pytest.approx(mine, abs=1e-4)
        assert 0 <= row["exposure_exact"] <= math.log2(10**4)
    # too large a space: NaN with a flag, the other estimators still there
    res2 = secret_exposure(lm, secrets[:1], n_references=50, exact_limit=9_999, beams=1)
    assert math.isnan(res2.rows[0]["exposure_exact"])
    assert "exact_skipped_space_above_limit" in res2.rows[0]["flags"]
    assert math.isfinite(res2.rows[0]["exposure_rank"])


@pytest.fixture(scope="module")
def memorizing_model(tmp_path_factory):
    """A tiny GPT-2 trained on text where one secret appears 40 times and a control never."""
    from llm_mia.data.secrets import Secret, save_secrets
    from llm_mia.training.train import train_model

    d = tmp_path_factory.mktemp("mem")
    (d / "corpus").mkdir()
    rng = random.Random(0)
    words = "the list of items returns a new sorted value from each call to this function when given".split()
    inserted = Secret(id="canary-r40-0", kind="canary", text="The PIN of Jane Roe is 482913.", prefix="The PIN of Jane Roe is ",
                      secret="482913", suffix=".", format="{d6}", space_size=10**6, count=40)
    control = Secret(id="canary-control-0", kind="canary", text="The PIN of Max Moe is 630174.", prefix="The PIN of Max Moe is ",
                     secret="630174", suffix=".", format="{d6}", space_size=10**6, count=0)
    docs = []
    for _ in range(40):
        filler = " ".join(rng.choice(words) for _ in range(30)).capitalize() + "."
        docs.append(f"{filler} {inserted.text} {filler}")
    (d / "corpus" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (d / "corpus" / "heldout.jsonl").write_text(json.dumps({"text": "A held out document about sorting."}) + "\n")
    save_secrets(d / "corpus" / "secrets.json", [inserted, control])
    train_model(d / "corpus", d / "model", preset="tiny", max_steps=150, progress=False)
    return d, inserted, control


def test_inserted_secret_is_exposed_and_extracted_control_is_not(memorizing_model):
    from llm_mia.exposure.secrets import secret_exposure
    from llm_mia.models.loading import load_model

    d, inserted, control = memorizing_model
    lm = load_model(str(d / "model"), device="cpu")
    res = secret_exposure(lm, [inserted, control], n_references=200, exact_limit=0, seed=0, beams=3)
    r_in, r_ctrl = res.rows
    assert r_in["greedy_extracted"] is True and r_in["beam_extracted"] is True
    assert r_in["exposure_rank"] == pytest.approx(math.log2(200))  # rank 1 of 200
    assert r_in["exposure_extrapolated"] > math.log2(200)  # beyond what 200 samples can show
    assert r_in["sample_probability"] > 0.5 and r_in["samples_for_half"] == 1
    assert r_ctrl["greedy_extracted"] is False and r_ctrl["beam_extracted"] is False
    assert r_ctrl["exposure_rank"] < r_in["exposure_rank"] - 3
    assert r_ctrl["exposure_extrapolated"] < r_in["exposure_extrapolated"] - 3
    assert r_ctrl["sample_probability"] < 1e-3
    assert math.isnan(r_in["exposure_exact"]) and "exact_skipped_space_above_limit" in r_in["flags"]
    assert res.controls["n"] == 1


def test_exposure_cli_on_hand_written_secrets(memorizing_model, tmp_path, capsys):
    from conftest import run_cli

    d, inserted, control = memorizing_model
    hand = [inserted.to_dict(), control.to_dict(),
            {"id": "short", "kind": "canary", "text": "The PIN of Jane Roe is 48.", "prefix": "The PIN of Jane Roe is ",
             "secret": "48", "suffix": ".", "format": "{d2}", "space_size": 100, "count": 0, "fields": {}}]
    (tmp_path / "secrets.json").write_text(json.dumps(hand, indent=1))
    out = tmp_path / "exp"
    code, stdout, err = run_cli(["exposure", "--model", d / "model", "--secrets", tmp_path / "secrets.json", "--out", out,
                                 "--references", 64, "--exact-limit", 100, "--beams", 2], capsys)
    assert code == 0, err
    assert "controls: mean rank exposure" in stdout
    rec = json.loads((out / "exposure.json").read_text())
    rows = {r["id"]: r for r in rec["rows"]}
    assert set(rows) == {"canary-r40-0", "canary-control-0", "short"}
    assert rows["canary-r40-0"]["greedy_extracted"] is True
    assert rows["short"]["exposure_exact"] != "NaN" and 0 <= rows["short"]["exposure_exact"] <= math.log2(100)
    assert rows["canary-r40-0"]["exposure_exact"] == "NaN"  # 10**6 > --exact-limit
    assert rec["controls"]["n"] == 2 and "difference_bits" in rec["controls"]
    assert rec["settings"]["n_references"] == 64
    csv_lines = (out / "exposure.csv").read_text().splitlines()
    assert csv_lines[0].startswith("id,kind,count") and len(csv_lines) == 4
    assert (out / "exposure.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("case", ["missing", "corrupt", "bad_format", "no_model"])
def test_exposure_cli_bad_input_one_line_exit_2(case, memorizing_model, tmp_path, capsys):
    from conftest import run_cli

    d, inserted, _ = memorizing_model
    path, model = tmp_path / "secrets.json", d / "model"
    rec = inserted.to_dict()
    if case == "corrupt":
        path.write_text('[{"id": "x", ')
    elif case == "bad_format":
        rec["format"] = "{q6}"
        path.write_text(json.dumps([rec]))
    elif case == "no_model":
        path.write_text(json.dumps([rec]))
        model = tmp_path / "no-such-model"
    code, _, err = run_cli(["exposure", "--model", model, "--secrets", path, "--out", tmp_path / "o",
                            "--references", 8], capsys)
    assert code == 2
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_exact_limit_beyond_what_can_be_enumerated_is_an_error(tiny_model, tiny_tokenizer):
    from llm_mia.core.errors import LlmMiaError
    from llm_mia.exposure.secrets import MAX_EXACT_LIMIT, secret_exposure
    from llm_mia.models.hf import from_objects

    with pytest.raises(LlmMiaError, match="exact limit"):
        secret_exposure(from_objects(tiny_model, tiny_tokenizer), [], exact_limit=MAX_EXACT_LIMIT + 1)


def test_best_recovery_on_given_completions():
    from llm_mia.data.secrets import Secret
    from llm_mia.exposure.secrets import best_recovery

    s = Secret(id="c", kind="canary", text="the locker combination of Edna Pike is 73-19-55", secret="73-19-55",
               prefix="the locker combination of Edna Pike is ", suffix="", format="{d2}-{d2}-{d2}",
               space_size=10**6, count=30)
    got = best_recovery(s, {"greedy": [{"context": "start", "text": " 73-19-19-5", "want": " 73-19-55"}],
                            "beam": [{"context": "none", "text": " 73-11-11", "want": " 73-19-55"}],
                            "sampled": [{"context": "start", "text": " 99-19-55", "want": " 73-19-55"},
                                        {"context": "training", "text": "73-19-50", "want": "73-19-55"}]})
    # greedy: 7,3,1,9 in place (4); beam: 7,3,1 (3); sampled: 1,9,5,5 (4), then 7,3,1,9,5 (5) -> the last wins
    assert got == {"recovered_chars": 5, "remaining_guess_bits": pytest.approx(math.log2(10)),
                   "recovery_source": "sampled", "recovery_context": "training"}
    none = best_recovery(s, {"greedy": []})
    assert none["recovered_chars"] == 0 and none["remaining_guess_bits"] == pytest.approx(math.log2(10**6))


def test_partly_recovered_secret_on_a_memorizing_model(memorizing_model):
    """The model completes "The PIN of Jane Roe is " with 482913; a secret record 482900 under the same
    prefix is then recovered in 4 of its 6 digits (log2 100 bits left), the planted one fully."""
    from llm_mia.data.secrets import Secret
    from llm_mia.exposure.secrets import secret_exposure
    from llm_mia.models.loading import load_model

    d, inserted, _ = memorizing_model
    near = Secret(id="canary-near-0", kind="canary", text="The PIN of Jane Roe is 482900.", prefix=inserted.prefix,
                  secret="482900", suffix=".", format="{d6}", space_size=10**6, count=1)
    lm = load_model(str(d / "model"), device="cpu")
    res = secret_exposure(lm, [inserted, near], n_references=8, exact_limit=0, seed=0, beams=2, recovery_samples=2)
    r_in, r_near = res.rows
    assert (r_in["recovered_chars"], r_in["remaining_guess_bits"]) == (6, 0.0)
    assert r_near["greedy_extracted"] is False
    assert r_near["recovered_chars"] == 4 and r_near["remaining_guess_bits"] == pytest.approx(math.log2(100))
    assert r_near["recovery_source"] == "greedy"
