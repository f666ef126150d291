"""Membership scoring end to end: ReCaLL, DC-PDD, calibration, bootstrap CI, `score_texts` and `llm-mia score`.

Every expected value is computed here by an independent route: hand arithmetic, numpy / sklearn,
Python's ``zlib`` and ``collections.Counter``, or a slow loop that runs the Hugging Face model on
one unpadded id list at a time and takes the log-softmax by hand in float64.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_signals import hand_rows, slow_ez, slow_wbc

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership import signals as S
from llm_mia.membership.metrics import bootstrap_auc_ci, calibrate_threshold
from llm_mia.membership.scoring import score, score_texts
from llm_mia.models.hf import from_objects
from llm_mia.models.stats import TokenStats
from llm_mia.models.tokenizer import train_bpe_tokenizer
from tests.conftest import TOKENIZER_TEXT, make_tiny_gpt2, run_cli

ALL_NO_EXTRA = ["loss", "zlib", "lowercase", "min_k", "min_k_plus_plus", "window"]

TEXTS = [
    "Hello world. Bye.",
    "The quick brown fox jumps over the lazy dog.",
    "Return a new list containing all items from the iterable in ascending order. " * 2,  # 112 tokens: window < loss
    "my social security number is 123-45-6789. Call 555-0100 now!",
    "İSTANBUL istanbul 😀 héllo wörld",
    "A",  # one token: nothing to score under the GPT-2 convention
    "def f(x):\n    return x + 1",
    "Alpha beta gamma delta epsilon. 0123456789 abcdef ABCDEF",
    "Hello, world.\nSecond line, with a comma.",
    "",  # empty
    "Bye. Call now! The lazy dog.",
    "sorted list, iterable order: ascending items.",
]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
CALIB = [
    "Gamma delta, alpha beta.",
    "The lazy fox returns a list.",
    "Call the function f with x.",
    "ascending items of a new iterable",
    "wörld héllo İstanbul",
    "0123456789 ABCDEF abcdef 555",
    "quick quick quick brown",
    "Jumps over the dog, then returns.",
]
PREFIX = "def g(y):\n    return y * 2\n"
FREQ_CORPUS = ["The quick brown fox. The lazy dog.", "Return a sorted list of items.", "Hello world, hello world."]


# ----------------------------------------------------------------------------- slow, obviously-correct reference

@torch.no_grad()
def hf_stats(model, ids: list[int], first: int) -> np.ndarray:
    """Rows (log p(x_t), mu_t, sigma_t) for t = first .. len-1, from one unpadded forward pass.

    log p = logits - logsumexp(logits) by hand in float64 on the logits at position t-1.
    """
    first = max(1, first)
    if len(ids) <= first:
        return np.zeros((0, 3))
    logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    rows = []
    for t in range(first, len(ids)):
        x = logits[t - 1]
        m = x.max()
        logp = x - (m + math.log(np.exp(x - m).sum()))
        p = np.exp(logp)
        mu = float((p * logp).sum())
        sigma = math.sqrt(float((p * (logp - mu) ** 2).sum()))
        rows.append((logp[ids[t]], mu, sigma))
    return np.array(rows)


def lowest_fifth_mean(v: np.ndarray) -> float:
    return float(np.sort(v)[: max(1, len(v) // 5)].mean())  # k = 0.2: max(1, floor(n / 5)) values


def slow_window(lp: np.ndarray, w: int = 50) -> float:
    m = min(w, len(lp))
    return -min(-lp[s:s + m].mean() for s in range(len(lp) - m + 1))


def nan_ratio(a: float, b: float) -> float:
    return math.nan if (math.isnan(a) or math.isnan(b)) else a / b


def expected_row(text: str, model, tok, *, ref=None, ref_tok=None, prefix: str | None = None, freq=None) -> dict:
    """n_scored_tokens, nll, zlib_bytes and every signal of one text, computed text by text."""
    ids = tok(text)["input_ids"]  # the tiny tokenizers add no BOS: the first token is context
    st = hf_stats(model, ids, 1)
    n = len(st)
    lp = st[:, 0]
    nll = float(-lp.mean()) if n else math.nan
    zb = len(zlib.compress(text.encode("utf-8")))
    low = hf_stats(model, tok(text.lower())["input_ids"], 1)[:, 0]
    nll_low = float(-low.mean()) if len(low) else math.nan
    s = {
        "loss": -nll,
        "zlib": nan_ratio(zb, nll),
        "lowercase": nan_ratio(nll_low, nll),
        "min_k": lowest_fifth_mean(lp) if n else math.nan,
        "min_k_plus_plus": lowest_fifth_mean((lp - st[:, 1]) / st[:, 2]) if n else math.nan,
        "window": slow_window(lp) if n else math.nan,
    }
    if ref is not None:
        if ref_tok is tok:  # same tokenizer: per token, same positions (and EZ-MIA, WBC token by token)
            r = hf_stats(ref, ids, 1)[:, 0]
            ref_nll, tgt_nll = (float(-r.mean()) if n else math.nan), nll
            ht, hr = (hand_rows(model, ids), hand_rows(ref, ids)) if n else ([], [])
            s["ez_mia"] = slow_ez(ht, hr) if n else math.nan
            s["wbc"] = slow_wbc([a for a, _ in ht], [a for a, _ in hr])
        else:  # per UTF-8 byte, each model scoring every token of the text after its BOS
            nb = max(1, len(text.encode("utf-8")))
            r = hf_stats(ref, [ref_tok.bos_token_id] + ref_tok(text)["input_ids"], 1)[:, 0]
            t = hf_stats(model, [tok.bos_token_id] + ids, 1)[:, 0]
            ref_nll = float(-r.sum()) / nb if len(r) else math.nan
            tgt_nll = float(-t.sum()) / nb if len(t) else math.nan
        s["reference"] = nan_ratio(ref_nll, tgt_nll)
        s["reference_diff"] = ref_nll - tgt_nll
    if prefix is not None:
        p_ids = [tok.bos_token_id] + tok(prefix)["input_ids"]
        c = hf_stats(model, p_ids + ids, len(p_ids))[:, 0]  # every token of the text, given the prefix
        s["recall"] = nan_ratio(float(-c.mean()) if len(c) else math.nan, nll)
    if freq is not None:
        s["dc_pdd"] = slow_dc_pdd(ids[1:], np.exp(lp), freq) if n else math.nan
    return {"n_scored_tokens": n, "nll": nll, "zlib_bytes": zb, "scores": s}


def slow_dc_pdd(ids: list[int], probs, freq, a: float = 0.01) -> float:
    seen, alphas = set(), []
    for t, p in zip(ids, probs):
        if t in seen:
            continue
        seen.add(t)
        alphas.append(min(float(p) * math.log(1.0 / float(freq[t])), a))
    return sum(alphas) / len(alphas)


def slow_freq(tok, texts, V) -> np.ndarray:
    c = Counter(i for t in texts for i in tok(t)["input_ids"])
    total = sum(c.values())
    return np.array([(1 + c[v]) / (total + V) for v in range(V)])


def close(a, b, tol: float = 1e-5) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(b))


def num(v) -> float:
    """A JSON number of the output ("NaN" / "Infinity" strings included)."""
    return float(v.replace("Infinity", "inf")) if isinstance(v, str) else float(v)


def assert_row_matches(row: dict, exp: dict, tol: float = 1e-5):
    assert row["n_scored_tokens"] == exp["n_scored_tokens"]
    assert row["zlib_bytes"] == exp["zlib_bytes"]
    assert close(num(row["nll"]), exp["nll"], tol), (row["nll"], exp["nll"])
    assert set(row["scores"]) == set(exp["scores"])
    for k, v in exp["scores"].items():
        assert close(num(row["scores"][k]), v, tol), (k, row["scores"][k], v)


# ----------------------------------------------------------------------------- fixtures: tiny model folders

@pytest.fixture(scope="module")
def ref_tokenizer():
    """A different BPE (other merges, 270 ids) so that reference scoring goes per byte."""
    return train_bpe_tokenizer(TOKENIZER_TEXT[::-1], vocab_size=270, min_frequency=1)


@pytest.fixture(scope="module")
def ref_model(tiny_tokenizer):
    return make_tiny_gpt2(len(tiny_tokenizer), n_positions=256, seed=1)


@pytest.fixture(scope="module")
def other_ref_model(ref_tokenizer):
    return make_tiny_gpt2(len(ref_tokenizer), n_positions=256, seed=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model, tiny_tokenizer, ref_model, ref_tokenizer, other_ref_model):
    """Model folders (safetensors + tokenizer) for the CLI, and the input files."""
    from transformers.utils import logging as hf_logging

    d = tmp_path_factory.mktemp("score")
    hf_logging.disable_progress_bar()
    for name, (m, t) in {"target": (tiny_model, tiny_tokenizer), "ref": (ref_model, tiny_tokenizer),
                         "ref_other": (other_ref_model, ref_tokenizer)}.items():
        m.save_pretrained(d / name)
        t.save_pretrained(d / name)
        assert (d / name / "model.safetensors").exists()
    rows = [{"id": f"doc{i}", "text": t, "label": y} for i, (t, y) in enumerate(zip(TEXTS, LABELS))]
    (d / "in.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    import csv

    with open(d / "in.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, y] for t, y in zip(TEXTS, LABELS))
    one_line = [t for t in TEXTS if "\n" not in t]
    (d / "in.txt").write_text("\n".join(one_line) + "\n", encoding="utf-8")
    (d / "calib.txt").write_text("\n".join(CALIB) + "\n", encoding="utf-8")
    (d / "prefix.txt").write_text(PREFIX, encoding="utf-8")
    (d / "freq.txt").write_text("\n".join(FREQ_CORPUS) + "\n", encoding="utf-8")
    return d




def read_out(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- ReCaLL

def test_recall_against_direct_hf_computation(tiny_model, tiny_tokenizer):
    lm = from_objects(tiny_model, tiny_tokenizer)
    texts = ["Hello world. Bye.", "The quick brown fox jumps over the lazy dog.", "A", ""]
    res = score(lm, texts, signals=["recall", "loss"], recall_prefix=PREFIX, batch_size=3)
    p_ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(PREFIX)["input_ids"]
    for row, t in zip(res.rows, texts):
        ids = tiny_tokenizer(t)["input_ids"]
        cond = hf_stats(tiny_model, p_ids + ids, len(p_ids))[:, 0]  # all of the text's tokens, given the prefix
        alone = hf_stats(tiny_model, ids, 1)[:, 0]  # the plain view: the first token is context
        assert len(cond) == len(ids)
        want = (-cond.mean()) / (-alone.mean()) if len(alone) else math.nan
        assert close(row["scores"]["recall"], want), (t, row["scores"]["recall"], want)
    assert math.isnan(res.rows[2]["scores"]["recall"]) and math.isnan(res.rows[3]["scores"]["recall"])
    # not a constant: the prefix changes the conditional NLL
    assert res.rows[0]["scores"]["recall"] != pytest.approx(1.0, abs=1e-4)


def test_recall_needs_a_prefix(tiny_model, tiny_tokenizer):
    with pytest.raises(LlmMiaError, match="recall-prefix"):
        score(from_objects(tiny_model, tiny_tokenizer), ["Hello"], signals=["recall"])
    # and is not among the default signals without one
    res = score(from_objects(tiny_model, tiny_tokenizer), ["Hello world"])
    assert "recall" not in res.rows[0]["scores"] and "dc_pdd" not in res.rows[0]["scores"]


# ----------------------------------------------------------------------------- DC-PDD

def make_stats(ids_rows, lp_rows, junk=-7.0):
    n = len(ids_rows)
    T = max(len(r) for r in ids_rows)
    lp = torch.full((n, T), junk)
    tid = torch.full((n, T), -1, dtype=torch.long)
    for i, (a, b) in enumerate(zip(ids_rows, lp_rows)):
        lp[i, : len(a)] = torch.tensor(b)
        tid[i, : len(a)] = torch.tensor(a)
    ns = torch.tensor([len(r) for r in ids_rows])
    mask = torch.arange(T)[None] < ns[:, None]
    return TokenStats(lp, torch.zeros(n, T), torch.ones(n, T), mask, ns, torch.zeros(n, dtype=torch.bool), tid)


def test_dc_pdd_by_hand():
    # V = 4, frequencies f = [0.5, 0.25, 0.125, 0.125]; row 0: ids 1, 2, 1, 3 with p = 0.5, 0.25, 0.9, 0.01
    freq = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    st = make_stats([[1, 2, 1, 3], [0], [3, 3]], [[math.log(0.5), math.log(0.25), math.log(0.9), math.log(0.01)],
                                                  [math.log(0.2)], [math.log(0.3), math.log(0.9)]])
    # first occurrences only: id 1 (p .5), id 2 (p .25), id 3 (p .01); the second id 1 (p .9) is ignored
    a1, a2, a3 = 0.5 * math.log(4), 0.25 * math.log(8), 0.01 * math.log(8)
    got = S.dc_pdd_scores(st, freq, a=1.0)
    assert got[0].item() == pytest.approx((a1 + a2 + a3) / 3, abs=1e-6)
    assert got[1].item() == pytest.approx(0.2 * math.log(2), abs=1e-6)
    assert got[2].item() == pytest.approx(0.3 * math.log(8), abs=1e-6)
    # the cap a: alpha = min(alpha, a)
    got = S.dc_pdd_scores(st, freq, a=0.1)
    assert got[0].item() == pytest.approx((0.1 + 0.1 + a3) / 3, abs=1e-6)
    assert got[2].item() == pytest.approx(0.1, abs=1e-6)


def test_dc_pdd_empty_row_is_nan():
    st = make_stats([[1], [2, 2]], [[-1.0], [-1.0, -2.0]])
    st = TokenStats(st.token_logprob, st.mean_logprob, st.std_logprob, st.mask & torch.tensor([[False], [True]]),
                    torch.tensor([0, 2]), st.truncated, st.token_id)
    got = S.dc_pdd_scores(st, torch.full((4,), 0.25, dtype=torch.float64), a=1.0)
    assert math.isnan(got[0].item())
    assert got[1].item() == pytest.approx(math.exp(-1.0) * math.log(4), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dc_pdd_matches_slow_loop_on_random_rows(seed):
    g = np.random.default_rng(seed)
    V = 7
    freq = g.dirichlet(np.ones(V))
    ids_rows = [list(g.integers(0, V, g.integers(1, 15))) for _ in range(5)]
    lp_rows = [list(np.log(g.uniform(0.001, 1, len(r)))) for r in ids_rows]
    got = S.dc_pdd_scores(make_stats(ids_rows, lp_rows), torch.tensor(freq), a=0.5)
    for i, (ids, lp) in enumerate(zip(ids_rows, lp_rows)):
        assert got[i].item() == pytest.approx(slow_dc_pdd([int(x) for x in ids], np.exp(lp), freq, a=0.5), abs=1e-5)


def test_token_frequencies_laplace_by_hand(tiny_tokenizer):
    texts = ["ab ab ab", "ab cd", ""]
    V = len(tiny_tokenizer)
    got = S.token_frequencies(tiny_tokenizer, texts, V).numpy()
    ids = [i for t in texts for i in tiny_tokenizer(t)["input_ids"]]
    c = Counter(ids)
    assert got.shape == (V,)
    for v in range(V):
        assert got[v] == pytest.approx((1 + c[v]) / (len(ids) + V), rel=1e-12)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    unseen = next(v for v in range(V) if v not in c)
    assert got[unseen] == pytest.approx(1 / (len(ids) + V))


def test_dc_pdd_end_to_end_on_the_tiny_model(tiny_model, tiny_tokenizer):
    V = len(tiny_tokenizer)
    freq = S.token_frequencies(tiny_tokenizer, FREQ_CORPUS, V)
    texts = ["The quick brown fox. The quick brown fox.", "Hello world", "A"]
    res = score(from_objects(tiny_model, tiny_tokenizer), texts, signals=["dc_pdd"], token_freq=freq)
    hand_freq = slow_freq(tiny_tokenizer, FREQ_CORPUS, V)
    # a = 1: no cap, so the value depends on every p and f (with a = 0.01 a random model is always capped)
    uncapped = S.dc_pdd_scores(res.target, freq, a=1.0)
    for i, t in enumerate(texts):
        ids = tiny_tokenizer(t)["input_ids"]
        lp = hf_stats(tiny_model, ids, 1)[:, 0]
        if len(lp) == 0:
            assert math.isnan(res.rows[i]["scores"]["dc_pdd"]) and math.isnan(uncapped[i].item())
            continue
        assert uncapped[i].item() == pytest.approx(slow_dc_pdd(ids[1:], np.exp(lp), hand_freq, a=1.0), rel=1e-5)
        assert res.rows[i]["scores"]["dc_pdd"] == pytest.approx(slow_dc_pdd(ids[1:], np.exp(lp), hand_freq), rel=1e-5)


# ----------------------------------------------------------------------------- calibrate_threshold, bootstrap CI

def realized_fpr(scores, t) -> float:
    s = [x for x in scores if not math.isnan(x)]
    return sum(x > t for x in s) / len(s)


@pytest.mark.parametrize("target, t, fpr", [(0.0, 1.0, 0.0), (0.05, 1.0, 0.0), (0.1, 0.9, 0.1), (0.15, 0.9, 0.1),
                                            (0.2, 0.8, 0.2), (0.5, 0.5, 0.5), (0.95, 0.1, 0.9)])
def test_calibrate_threshold_by_hand(target, t, fpr):
    scores = [0.5, 0.1, 0.9, 0.3, 1.0, 0.7, 0.2, 0.8, 0.4, 0.6]  # 10 non-members
    got = calibrate_threshold(scores, target)
    assert got == pytest.approx(t)
    assert realized_fpr(scores, got) == pytest.approx(fpr)
    assert realized_fpr(scores, got) <= target


def test_calibrate_threshold_ties_stay_below():
    scores = [5.0, 5.0, 5.0, 1.0]
    # target 0.5 allows 2 of 4 above t, but the top 3 tie: t = 5, nothing flagged (never 3/4 > 0.5)
    assert calibrate_threshold(scores, 0.5) == 5.0 and realized_fpr(scores, 5.0) == 0.0
    assert calibrate_threshold(scores, 0.75) == 1.0 and realized_fpr(scores, 1.0) == 0.75
    assert calibrate_threshold([2.0, 2.0], 0.0) == 2.0


def test_calibrate_threshold_nan_ignored_inf_kept():
    assert calibrate_threshold([math.nan, 1.0, 2.0, math.nan], 0.5) == 1.0
    assert calibrate_threshold([math.inf, 1.0, 2.0], 0.0) == math.inf
    assert calibrate_threshold([math.inf, 1.0, 2.0], 0.34) == 2.0


@pytest.mark.parametrize("seed", range(6))
def test_calibrate_threshold_is_the_best_reachable_fpr(seed):
    g = np.random.default_rng(seed)
    n = int(g.integers(1, 40))
    s = g.integers(0, 8, n).astype(float)  # many ties
    target = float(g.uniform(0, 0.99))
    t = calibrate_threshold(s, target)
    fpr = lambda th: float((s > th).sum()) / n  # noqa: E731
    reachable = [fpr(th) for th in np.unique(s) if (s > th).sum() <= target * n + 1e-9]
    assert fpr(t) <= target + 1e-12
    assert fpr(t) == max(reachable)


@pytest.mark.parametrize("scores, target", [([], 0.1), ([math.nan, math.nan], 0.1), ([1.0, 2.0], 1.0),
                                            ([1.0, 2.0], -0.1), ([1.0, 2.0], 1.5)])
def test_calibrate_threshold_errors(scores, target):
    with pytest.raises(LlmMiaError) as e:
        calibrate_threshold(scores, target)
    assert "\n" not in str(e.value)


def test_bootstrap_auc_ci_deterministic_bounded_and_contains_auc():
    g = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(60)].astype(int)
    s = np.r_[g.normal(1.5, 1, 40), g.normal(0, 1, 60)]
    auc = roc_auc_score(y, s)
    lo, hi = bootstrap_auc_ci(y, s, seed=3)
    assert (lo, hi) == bootstrap_auc_ci(y, s, seed=3)
    assert (lo, hi) != bootstrap_auc_ci(y, s, seed=4)
    assert 0.0 <= lo < auc < hi <= 1.0
    assert hi - lo < 0.3  # 100 samples: a few hundredths either side, not the whole [0, 1]
    lo90, hi90 = bootstrap_auc_ci(y, s, seed=3, level=0.9)
    assert lo <= lo90 <= hi90 <= hi


def test_bootstrap_auc_ci_equals_a_slow_resample_loop():
    """The interval equals a plain loop: the same resamples (members' then non-members' indices per
    round, one generator), each scored by scikit-learn's AUC, percentiles by numpy; with ties, NaN
    and a chunk boundary (8,000 scores: the 300 resamples are counted 250 at a time)."""
    g = np.random.default_rng(5)
    for n_pos, n_neg in ((7, 5), (40, 60), (4000, 4000)):
        y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
        s = np.round(np.r_[g.normal(0.4, 1, n_pos), g.normal(0, 1, n_neg)], 1)  # many ties
        s[[0, n_pos]] = np.nan
        keep = ~np.isnan(s)
        pos, neg = s[keep & (y == 1)], s[keep & (y == 0)]
        rng = np.random.default_rng(11)
        aucs = []
        for _ in range(300):
            p = pos[rng.integers(0, len(pos), len(pos))]
            q = neg[rng.integers(0, len(neg), len(neg))]
            aucs.append(roc_auc_score(np.r_[np.ones(len(p)), np.zeros(len(q))], np.r_[p, q]))
        expected = (np.quantile(aucs, 0.025), np.quantile(aucs, 0.975))
        np.testing.assert_allclose(bootstrap_auc_ci(y, s, n_boot=300, seed=11), expected, rtol=0, atol=1e-12)


def test_bootstrap_auc_ci_edge_cases():
    assert bootstrap_auc_ci([1, 1, 0, 0], [3.0, 2.0, 1.0, 0.0]) == (1.0, 1.0)  # clear separation
    assert bootstrap_auc_ci([1, 1, 0, 0], [0.0, 1.0, 2.0, 3.0]) == (0.0, 0.0)  # never flipped
    assert bootstrap_auc_ci([1, 0, 1, 0], [2.0, 2.0, 2.0, 2.0]) == (0.5, 0.5)  # ties count 1/2
    # NaN dropped, inf ranked
    assert bootstrap_auc_ci([1, 1, 0, 0, 1], [math.inf, 2.0, 1.0, -math.inf, math.nan]) == (1.0, 1.0)
    with pytest.raises(LlmMiaError):
        bootstrap_auc_ci([1, 1], [0.1, 0.2])


def test_roc_plot_writes_png_with_nan_and_inf(tmp_path):
    from llm_mia.report.plots import roc_plot

    roc_plot(tmp_path / "r.png", [1, 0, 1, 0, 1], {"a": [1.0, 0.0, math.inf, math.nan, 0.5], "b": [math.nan] * 5})
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- score_texts / score

def test_score_texts_dataframe(tiny_model, tiny_tokenizer):
    texts = ["Hello world. Bye.", "", "The quick brown fox jumps over the lazy dog.", "A", TEXTS[2]]
    df = score_texts(from_objects(tiny_model, tiny_tokenizer), texts, batch_size=2)
    assert len(df) == len(texts) and list(df["id"]) == list(range(len(texts)))
    assert {"n_scored_tokens", "nll", "perplexity", "zlib_bytes", "flags", *ALL_NO_EXTRA} <= set(df.columns)
    assert "reference" not in df.columns
    for i, t in enumerate(texts):
        exp = expected_row(t, tiny_model, tiny_tokenizer)
        r = df.iloc[i]
        assert r["n_scored_tokens"] == exp["n_scored_tokens"] and r["zlib_bytes"] == exp["zlib_bytes"]
        assert close(r["nll"], exp["nll"]) and close(r["perplexity"], math.exp(exp["nll"]) if exp["n_scored_tokens"] else math.nan, 1e-4)
        for k, v in exp["scores"].items():
            assert close(r[k], v), (i, k, r[k], v)
        assert ("too_short" in r["flags"]) == (exp["n_scored_tokens"] == 0)
    assert df.loc[2, "window"] == pytest.approx(df.loc[2, "loss"])  # 9 tokens: one window
    assert df.loc[4, "window"] > df.loc[4, "loss"] + 1e-4  # 111 tokens: the best 50-token window beats the mean


def test_score_texts_signal_subset_and_folder(folders, tiny_model, tiny_tokenizer, ref_model):
    df = score_texts(str(folders / "target"), ["Hello world. Bye.", "Bye."], reference=str(folders / "ref"),
                     signals=["reference_diff", "loss"])
    assert [c for c in df.columns if c in S.REGISTRY] == ["reference_diff", "loss"]
    for i, t in enumerate(["Hello world. Bye.", "Bye."]):
        exp = expected_row(t, tiny_model, tiny_tokenizer, ref=ref_model, ref_tok=tiny_tokenizer)
        assert close(df.loc[i, "reference_diff"], exp["scores"]["reference_diff"])


def test_per_byte_reference_covers_every_byte(tiny_model, tiny_tokenizer, other_ref_model, ref_tokenizer):
    """Different tokenizers: both NLLs are totals over the whole text / its UTF-8 bytes."""
    lm, ref = from_objects(tiny_model, tiny_tokenizer), from_objects(other_ref_model, ref_tokenizer)
    texts = ["The quick brown fox jumps over the lazy dog.", "İSTANBUL 😀", "A", ""]
    plain = score(lm, texts, reference=ref, signals=["reference", "reference_diff"])
    bos = score(lm, texts, reference=ref, signals=["reference", "reference_diff"], prepend_bos=True)
    assert plain.inputs.reference_per_byte
    for i, t in enumerate(texts):
        exp = expected_row(t, tiny_model, tiny_tokenizer, ref=other_ref_model, ref_tok=ref_tokenizer)
        for k in ("reference", "reference_diff"):
            assert close(plain.rows[i]["scores"][k], exp["scores"][k]), (t, k)
            # per byte, the start-token convention of the target's own view must not matter
            assert close(bos.rows[i]["scores"][k], plain.rows[i]["scores"][k]), (t, k)
    assert math.isnan(plain.rows[3]["scores"]["reference"])
    # "A" is one token: nothing scored in the plain view, but per byte both models score it after BOS
    assert plain.rows[2]["n_scored_tokens"] == 0 and math.isfinite(plain.rows[2]["scores"]["reference_diff"])


# ----------------------------------------------------------------------------- llm-mia score (CLI)

def test_cli_txt_without_labels(folders, tiny_model, tiny_tokenizer, capsys, tmp_path):
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli(["score", "--model", folders / "target", "--input", folders / "in.txt",
                                 "--output", out, "--batch-size", 3], capsys)
    assert code == 0, err
    assert "scored" in stdout
    texts = (folders / "in.txt").read_text(encoding="utf-8").split("\n")[:-1]
    rows = read_out(out)
    assert [r["id"] for r in rows] == list(range(len(texts)))
    for r, t in zip(rows, texts):
        assert {"id", "n_scored_tokens", "nll", "zlib_bytes", "scores", "flags"} <= set(r)
        assert "label" not in r and "member" not in r
        assert list(r["scores"]) == ALL_NO_EXTRA  # default: every signal whose inputs are given
        assert_row_matches(r, expected_row(t, tiny_model, tiny_tokenizer))
    empty = rows[texts.index("")]
    assert empty["nll"] == "NaN" and all(v == "NaN" for v in empty["scores"].values())
    assert empty["flags"] == ["too_short"] and empty["zlib_bytes"] == len(zlib.compress(b""))
    assert "too_short" in rows[texts.index("A")]["flags"]


def test_cli_empty_row_leaves_other_rows_unchanged(folders, capsys, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    others = ["Hello world. Bye.", "The quick brown fox jumps over the lazy dog.", TEXTS[2]]
    a.write_text("\n".join([others[0], "", others[1], "", others[2]]) + "\n", encoding="utf-8")
    b.write_text("\n".join(others) + "\n", encoding="utf-8")
    for src in (a, b):
        code, _, err = run_cli(["score", "--model", folders / "target", "--input", src, "--output",
                                src.with_suffix(".jsonl"), "--batch-size", 4], capsys)
        assert code == 0, err
    with_empty, alone = read_out(a.with_suffix(".jsonl")), read_out(b.with_suffix(".jsonl"))
    assert [r["id"] for r in with_empty] == [0, 1, 2, 3, 4]
    for r in (with_empty[1], with_empty[3]):
        assert r["flags"] == ["too_short"] and r["n_scored_tokens"] == 0 and r["scores"]["loss"] == "NaN"
    for r, s in zip([with_empty[0], with_empty[2], with_empty[4]], alone):
        assert r["n_scored_tokens"] == s["n_scored_tokens"] and r["flags"] == s["flags"] == []
        for k in ALL_NO_EXTRA:
            assert close(num(r["scores"][k]), num(s["scores"][k])), k


def test_cli_jsonl_labels_metrics_roc(folders, tiny_model, tiny_tokenizer, ref_model, capsys, tmp_path):
    out, met, roc = tmp_path / "out.jsonl", tmp_path / "m.json", tmp_path / "roc.png"
    code, stdout, err = run_cli(["score", "--model", folders / "target", "--reference", folders / "ref",
                                 "--input", folders / "in.jsonl", "--output", out, "--metrics", met, "--roc", roc],
                                capsys)
    assert code == 0, err
    rows = read_out(out)
    assert [r["id"] for r in rows] == [f"doc{i}" for i in range(len(TEXTS))]
    assert [r["label"] for r in rows] == LABELS
    for r, t in zip(rows, TEXTS):
        assert_row_matches(r, expected_row(t, tiny_model, tiny_tokenizer, ref=ref_model, ref_tok=tiny_tokenizer))
    m = json.loads(met.read_text())
    sigs = ALL_NO_EXTRA + ["reference", "reference_diff", "ez_mia", "wbc"]
    assert set(m["signals"]) == set(sigs)
    for sig in sigs:
        e = m["signals"][sig]
        vals = np.array([num(r["scores"][sig]) for r in rows])
        y = np.array(LABELS)
        keep = ~np.isnan(vals)
        assert e["n_members"] == int((y[keep] == 1).sum()) and e["n_nonmembers"] == int((y[keep] == 0).sum())
        assert e["auc"] == pytest.approx(roc_auc_score(y[keep], vals[keep]), abs=1e-12)
        lo, hi = e["auc_ci"]
        assert 0.0 <= lo <= hi <= 1.0
        assert set(e["tpr_at_fpr"]) == {"0.001", "0.01", "0.05"}
        pos, neg = vals[keep][y[keep] == 1], vals[keep][y[keep] == 0]
        for key, v in e["tpr_at_fpr"].items():
            target = float(key)
            # slow rule: every threshold "score >= th" over the observed scores (and +inf: nothing flagged)
            pts = [((neg >= th).mean(), (pos >= th).mean()) for th in [*np.unique(vals[keep]), math.inf]]
            tpr, neg_fpr = max((tp, -fp) for fp, tp in pts if fp <= target)  # largest TPR, then smallest FPR
            assert v["tpr"] == pytest.approx(tpr) and v["realized_fpr"] == pytest.approx(-neg_fpr)
            assert v["below_resolution"] == (target < 1 / len(neg))
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_csv_with_different_tokenizer_reference(folders, tiny_model, tiny_tokenizer, other_ref_model,
                                                    ref_tokenizer, capsys, tmp_path):
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["score", "--model", folders / "target", "--reference", folders / "ref_other",
                            "--input", folders / "in.csv", "--output", out, "--batch-size", 5], capsys)
    assert code == 0, err
    rows = read_out(out)
    assert [r["id"] for r in rows] == list(range(len(TEXTS)))  # no id column: row index
    assert [r["label"] for r in rows] == LABELS
    for r, t in zip(rows, TEXTS):  # the CSV's quoted commas and newlines reach the model intact
        assert_row_matches(r, expected_row(t, tiny_model, tiny_tokenizer, ref=other_ref_model, ref_tok=ref_tokenizer))


def test_cli_recall_and_dc_pdd(folders, tiny_model, tiny_tokenizer, capsys, tmp_path):
    out, src = tmp_path / "out.jsonl", tmp_path / "in.jsonl"
    texts = [t for t in TEXTS if len(t) < 100]  # prefix + text within the 128-token context (no sliding here)
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    code, _, err = run_cli(["score", "--model", folders / "target", "--input", src, "--output", out,
                            "--signals", "recall,dc_pdd,loss", "--recall-prefix", folders / "prefix.txt",
                            "--dc-pdd-corpus", folders / "freq.txt"], capsys)
    assert code == 0, err
    freq = slow_freq(tiny_tokenizer, FREQ_CORPUS, len(tiny_tokenizer))
    rows = read_out(out)
    assert len(rows) == len(texts)
    for r, t in zip(rows, texts):
        exp = expected_row(t, tiny_model, tiny_tokenizer, prefix=PREFIX.strip(), freq=freq)
        assert list(r["scores"]) == ["recall", "dc_pdd", "loss"]
        for k in r["scores"]:
            assert close(num(r["scores"][k]), exp["scores"][k]), (t, k)


def test_cli_signals_subset(folders, capsys, tmp_path):
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["score", "--model", folders / "target", "--input", folders / "in.txt", "--output", out,
                            "--signals", "min_k, zlib"], capsys)
    assert code == 0, err
    assert all(list(r["scores"]) == ["min_k", "zlib"] for r in read_out(out))


@pytest.mark.parametrize("signals, needle", [("loss,min-k", "did you mean 'min_k'"),
                                             ("lowercse", "did you mean 'lowercase'"),
                                             ("reference", "reference model"),
                                             ("recall", "recall-prefix")])
def test_cli_bad_signal_exit_2_no_output(folders, capsys, tmp_path, signals, needle):
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["score", "--model", folders / "target", "--input", folders / "in.txt", "--output", out,
                            "--signals", signals], capsys)
    assert code == 2
    assert needle in error_line(err)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_metrics_without_labels_exit_2_nothing_written(folders, capsys, tmp_path):
    out, met, roc = tmp_path / "out.jsonl", tmp_path / "m.json", tmp_path / "r.png"
    code, _, err = run_cli(["score", "--model", folders / "target", "--input", folders / "in.txt", "--output", out,
                            "--metrics", met, "--roc", roc], capsys)
    assert code == 2
    assert "label" in error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_input_and_missing_model(folders, capsys, tmp_path):
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["score", "--model", folders / "target", "--input", tmp_path / "nope.jsonl",
                            "--output", out], capsys)
    assert code == 2 and "not found" in error_line(err) and not out.exists()
    code, _, err = run_cli(["score", "--model", tmp_path / "no-model", "--input", folders / "in.txt",
                            "--output", out], capsys)
    assert code == 2 and "no-model" in error_line(err) and not out.exists()


def test_cli_calibrate_thresholds_and_decisions(folders, tiny_model, tiny_tokenizer, capsys, tmp_path):
    out, met = tmp_path / "out.jsonl", tmp_path / "m.json"
    code, _, err = run_cli(["score", "--model", folders / "target", "--input", folders / "in.jsonl", "--output", out,
                            "--metrics", met, "--calibrate-on", folders / "calib.txt", "--target-fpr", "0.25"], capsys)
    assert code == 0, err
    cal = json.loads(met.read_text())["calibration"]
    assert cal["target_fpr"] == 0.25
    thresholds = {k: num(v) for k, v in cal["thresholds"].items()}
    assert set(thresholds) == set(ALL_NO_EXTRA)
    calib_exp = [expected_row(t, tiny_model, tiny_tokenizer)["scores"] for t in CALIB]
    for sig, t in thresholds.items():
        vals = sorted((c[sig] for c in calib_exp), reverse=True)
        assert close(t, vals[2], 1e-5), sig  # floor(0.25 * 8) = 2 calibration scores may lie above
    for r in read_out(out):
        for sig, t in thresholds.items():
            v = num(r["scores"][sig])
            assert r["member"][sig] == (None if math.isnan(v) else v > t), (r["id"], sig)
    # on the calibration set itself, the realized FPR is at most the target
    out2 = tmp_path / "self.jsonl"
    code, _, err = run_cli(["score", "--model", folders / "target", "--input", folders / "calib.txt",
                            "--output", out2, "--calibrate-on", folders / "calib.txt", "--target-fpr", "0.25"], capsys)
    assert code == 0, err
    rows = read_out(out2)
    for sig in ALL_NO_EXTRA:
        flagged = sum(r["member"][sig] for r in rows)
        assert flagged <= 2, sig
        if len({r["scores"][sig] for r in rows}) == len(rows):  # no ties: exactly floor(0.25 * 8)
            assert flagged == 2, sig


def test_fused_activations_same_logits_and_applied_by_load_model(tiny_tokenizer, tmp_path):
    """gelu_new -> torch's fused tanh GELU: one module per layer, logits equal to the original
    model's (computed before the swap) to fp32 rounding; load_model applies it, from_objects only
    when asked, and the saved config is untouched."""
    import copy

    from transformers.activations import NewGELUActivation

    from llm_mia.models.hf import use_fused_activations
    from llm_mia.models.loading import load_model

    model = make_tiny_gpt2(len(tiny_tokenizer), seed=3)
    ids = torch.tensor([[5, 17, 3, 99, 42, 7, 1]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    swapped = copy.deepcopy(model)
    assert use_fused_activations(swapped) == 2
    assert use_fused_activations(swapped) == 0
    with torch.no_grad():
        after = swapped(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5, rtol=0)
    assert not torch.equal(before, make_tiny_gpt2(len(tiny_tokenizer), seed=4)(input_ids=ids).logits)
    from_objects(model, tiny_tokenizer)
    assert sum(isinstance(m, NewGELUActivation) for m in model.modules()) == 2
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"), device="cpu")
    assert not any(isinstance(m, NewGELUActivation) for m in lm.model.modules())
    assert lm.model.config.activation_function == "gelu_new"
    with torch.no_grad():
        assert torch.allclose(lm.model(input_ids=ids).logits, before, atol=1e-5, rtol=0)
