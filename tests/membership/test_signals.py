"""Signals and the scoring pipeline: scoring-cases.md C02 (signals), C05, C08-C12, C20.

Expected values come from hand arithmetic, ``zlib`` / ``math`` / ``numpy``, slow sort- or
window-loops, or the Hugging Face model run directly on one unpadded id list at a time.
"""

from __future__ import annotations

import math
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership import signals as S
from llm_mia.membership.scoring import score
from llm_mia.membership.signals import (
    SignalInputs,
    mean_nll,
    min_k_plus_plus_scores,
    min_k_scores,
    perplexity,
    row_flags,
    window_scores,
    zlib_bytes,
)
from llm_mia.models.hf import from_objects
from llm_mia.models.stats import TokenStats, compute_token_stats, vocab_stats
from tests.conftest import LIKELY, UNLIKELY, StepModel

# ------------------------------------------------------------------------------------ helpers

def make_stats(rows: list[list[float]], *, mu: list[list[float]] | None = None, sigma: list[list[float]] | None = None,
               junk: float = -100.0) -> TokenStats:
    """Hand-built TokenStats; unscored cells hold ``junk`` so a signal that ignores the mask is caught."""
    n = len(rows)
    T = max([len(r) for r in rows] + [0])
    out = torch.full((3, n, T), junk, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[0, i, : len(r)] = torch.tensor(r, dtype=torch.float32)
        out[1, i, : len(r)] = torch.tensor(mu[i] if mu else [0.0] * len(r), dtype=torch.float32)
        out[2, i, : len(r)] = torch.tensor(sigma[i] if sigma else [1.0] * len(r), dtype=torch.float32)
    ns = torch.tensor([len(r) for r in rows], dtype=torch.long)
    mask = torch.arange(T)[None, :] < ns[:, None]
    return TokenStats(out[0], out[1], out[2], mask, ns, torch.zeros(n, dtype=torch.bool))


@torch.no_grad()
def ref_logprobs(model, ids: list[int]) -> np.ndarray:
    """Log-probs of ids[1:] from one unpadded forward pass, log-softmax by hand in float64."""
    if len(ids) < 2:
        return np.zeros(0)
    logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()  # (n, V)
    out = []
    for p in range(1, len(ids)):
        x = logits[p - 1]
        lse = x.max() + math.log(np.exp(x - x.max()).sum())
        out.append(x[ids[p]] - lse)
    return np.array(out)


def ref_nll(model, ids: list[int]) -> float:
    lp = ref_logprobs(model, ids)
    return float(-lp.mean()) if len(lp) else math.nan


def slow_min_k(values: list[float], k: float) -> float:
    """Mean of the lowest max(1, floor(k n)) values, k read as the decimal it is written as."""
    if not values:
        return math.nan
    kk = max(1, math.floor(Fraction(str(k)) * len(values)))
    return sum(sorted(values)[:kk]) / kk


def slow_window(values: list[float], w: int) -> float:
    """-(lowest mean NLL over every window of min(w, n) consecutive tokens)."""
    n = len(values)
    if n == 0:
        return math.nan
    m = min(w, n)
    return -min(-sum(values[s:s + m]) / m for s in range(0, n - m + 1))


def same(a: float, b: float, tol: float = 1e-5) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(b))


# ------------------------------------------------------------------------------------ C02 (signals)

def test_c02_every_signal_batch_invariant_on_s2(s2_model):
    torch.manual_seed(1)
    from transformers import GPT2Config, GPT2LMHeadModel

    ref_model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16)).eval()
    A, B = [0, 1, 2], [0, 1, 2, 3, 4, 0, 1, 3, 4, 0]
    Al, Bl = [5, 1, 2, 9], [5, 1, 2, 3, 4, 0, 1]  # stand-ins for the lowercase views (own lengths)
    view = {tuple(A): (Al, "Abc."), tuple(B): (Bl, "Bcdea bde ab")}
    freq = torch.rand(64, generator=torch.Generator().manual_seed(0)) + 0.01
    freq = freq / freq.sum()
    pop = [[3, 4, 5, 6], [9, 8, 7, 6, 5, 1], [2, 2]]  # RMIA's population, batched with the texts' batch size
    import numpy as np

    from llm_mia.membership.signals.shadow import ShadowInputs, fit_attack_classifier, token_logprob_matrix

    shadows = [GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16)).eval()
               for _ in range(4)]
    shadow_in = {tuple(A): [True, True, False, False], tuple(B): [False, True, True, False]}
    pop_in = np.array([[True, False, True, False], [False, True, False, True], [True, True, False, False]])
    rng = np.random.default_rng(0)
    clf = fit_attack_classifier(rng.normal(size=(40, 5)), np.arange(40) % 2)

    def mean_lp(model, seqs, kw):
        return -S.mean_nll(compute_token_stats(model, seqs, **kw)).double().numpy()

    def tok_lp(seqs, kw):  # (n, K, T): each shadow model's per-token log p, NaN-padded to one width
        rows = [token_logprob_matrix(compute_token_stats(m, seqs, **kw)) for m in shadows]
        w = max(r.shape[1] for r in rows)
        return np.stack([np.pad(r, ((0, 0), (0, w - r.shape[1])), constant_values=np.nan) for r in rows], 1)

    def signals_of(batch, batch_size):
        kw = dict(batch_size=batch_size, pad_id=4)
        population = SignalInputs(target=compute_token_stats(s2_model, pop, **kw), texts=["pop"] * 3,
                                  reference=compute_token_stats(ref_model, pop, **kw))
        shadow = ShadowInputs(x_logprob=np.stack([mean_lp(m, batch, kw) for m in shadows], 1),
                              x_in=np.array([shadow_in[tuple(x)] for x in batch]), z_target=mean_lp(s2_model, pop, kw),
                              z_logprob=np.stack([mean_lp(m, pop, kw) for m in shadows], 1), z_in=pop_in,
                              classifier=clf, n_models=4, x_token_logprob=tok_lp(batch, kw),
                              z_token_logprob=tok_lp(pop, kw))
        inp = SignalInputs(population=population, target=compute_token_stats(s2_model, batch, **kw),
                           texts=[view[tuple(x)][1] for x in batch],
                           lowercase=compute_token_stats(s2_model, [view[tuple(x)][0] for x in batch], **kw),
                           reference=compute_token_stats(ref_model, batch, **kw),
                           recall=compute_token_stats(s2_model, [[7, 8, 9] + x for x in batch], context_lens=3, **kw),
                           token_freq=freq, shadow=shadow)
        return {name: sig.fn(inp) for name, sig in S.REGISTRY.items()}

    assert {"loss", "zlib", "lowercase", "reference", "reference_diff", "min_k", "min_k_plus_plus", "window",
            "ez_mia", "wbc", "rmia"} <= set(S.REGISTRY)
    alone = {tuple(x): signals_of([x], 1) for x in (A, B)}
    for name in ("lira_online", "lira_offline", "lira_token_online", "lira_token_offline", "rmia_online",
                 "rmia_offline", "shokri"):  # defined, so compared
        assert all(math.isfinite(float(alone[tuple(x)][name][0])) for x in (A, B)), name
    for batch in ([A], [B], [A, B], [B, A], [A, B, B]):
        for bs in (1, 2, 3):
            got = signals_of(batch, bs)
            for name in S.REGISTRY:
                for i, x in enumerate(batch):
                    assert same(float(got[name][i]), float(alone[tuple(x)][name][0])), (name, batch, bs)
    # and the unbatched loss is the oracle's
    assert float(alone[tuple(B)]["loss"][0]) == pytest.approx(-ref_nll(s2_model, B), abs=1e-5)
    assert float(alone[tuple(B)]["reference_diff"][0]) == pytest.approx(ref_nll(ref_model, B) - ref_nll(s2_model, B), abs=1e-5)


# ------------------------------------------------------------------------------------ C05

def _tokenizer_state(tok):
    return (tok.pad_token, tok.pad_token_id, len(tok), tok.padding_side, dict(tok.special_tokens_map),
            tok.get_vocab(), tok("Hello world. Bye.")["input_ids"])


def test_c05_tokenizer_without_pad_token(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token is None
    before = _tokenizer_state(tok)
    emb = tuple(tiny_model.get_input_embeddings().weight.shape)
    vocab = tiny_model.config.vocab_size
    texts = ["Hello world. Bye.", "The quick brown fox jumps over the lazy dog."]
    lens = [len(tok(t)["input_ids"]) for t in texts]
    assert lens[0] != lens[1]
    loaded = from_objects(tiny_model, tok)
    r2 = score(loaded, texts, batch_size=2)
    r1 = score(loaded, texts, batch_size=1)
    assert _tokenizer_state(tok) == before
    assert tuple(tiny_model.get_input_embeddings().weight.shape) == emb
    assert tiny_model.config.vocab_size == vocab
    for a, b, t in zip(r2.rows, r1.rows, texts):
        assert a["n_scored_tokens"] == b["n_scored_tokens"] == len(tok(t)["input_ids"]) - 1
        assert set(a["scores"]) == set(b["scores"]) and a["scores"]
        for name in a["scores"]:
            assert same(a["scores"][name], b["scores"][name]), name
        assert a["nll"] == pytest.approx(ref_nll(tiny_model, tok(t)["input_ids"]), abs=1e-5)


# ------------------------------------------------------------------------------------ C08

@pytest.mark.parametrize("text, literal", [
    ("Hello world", 19), ("😀", 12), ("héllo wörld 😀 " * 3, 31), ("The quick brown fox " * 10, 31), ("", 8),
])
def test_c08_zlib_bytes(text, literal):
    expected = len(zlib.compress(text.encode("utf-8")))
    assert zlib_bytes(text) == expected
    assert expected == literal  # the values of scoring-cases.md (stock zlib, level 6)


def test_c08_zlib_signal_reads_the_whole_text():
    text = "héllo wörld 😀 " * 3
    stats = make_stats([[LIKELY, UNLIKELY]])
    nll = -(LIKELY + UNLIKELY) / 2
    got = float(S.REGISTRY["zlib"].fn(SignalInputs(target=stats, texts=[text]))[0])
    assert got == pytest.approx(len(zlib.compress(text.encode("utf-8"))) / nll, rel=1e-6)
    # not the characters, not the code points
    assert got != pytest.approx(len(zlib.compress(text.encode("utf-32-le"))) / nll, rel=1e-3)
    assert got != pytest.approx(len(text) / nll, rel=1e-3)


# ------------------------------------------------------------------------------------ C09

@pytest.mark.parametrize("k, literal", [(0.1, -3.0), (0.2, -3.0), (0.5, -2.1), (1.0, -1.2)])
def test_c09_min_k_short_text(k, literal):
    lp = [-0.5, -3.0, -1.2, -0.1]
    kept = max(1, math.floor(k * len(lp)))
    expected = sum(sorted(lp)[:kept]) / kept
    assert expected == pytest.approx(literal)
    stats = make_stats([lp, [-7.0] * 2, lp[:1]])  # batch mates of other lengths, junk in unscored cells
    got = min_k_scores(stats, k=k)
    assert float(got[0]) == pytest.approx(expected, abs=1e-6)
    assert float(got[2]) == pytest.approx(-0.5, abs=1e-6)  # n = 1 keeps its only token
    assert not torch.isnan(got).any()


def test_c09_min_k_bad_k_raises():
    with pytest.raises(LlmMiaError):
        min_k_scores(make_stats([[-1.0]]), k=0.0)
    with pytest.raises(LlmMiaError):
        min_k_scores(make_stats([[-1.0]]), k=1.5)


@pytest.mark.parametrize("seed", range(5))
def test_min_k_matches_slow_sort_loop(seed):
    rng = np.random.default_rng(seed)
    rows = [list(rng.normal(-2, 2, size=int(rng.integers(0, 30))).round(4)) for _ in range(12)]
    stats = make_stats(rows)
    for k in (0.01, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.99, 1.0):
        got = min_k_scores(stats, k=k)
        for i, r in enumerate(rows):
            assert same(float(got[i]), slow_min_k(r, k)), (k, r)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(st.floats(-50, 0, allow_nan=False, width=32), max_size=25), min_size=1, max_size=6),
       k100=st.integers(1, 100))
def test_property_min_k_and_min_k_plus_plus(rows, k100):
    k = k100 / 100
    stats = make_stats(rows)
    got = min_k_scores(stats, k=k)
    for i, r in enumerate(rows):
        assert same(float(got[i]), slow_min_k(r, k), 1e-4)
    # Min-K%++ with mu = 0 and sigma = 1 is Min-K%
    pp, flag = min_k_plus_plus_scores(stats, k=k)
    for i, r in enumerate(rows):
        assert same(float(pp[i]), slow_min_k(r, k), 1e-4)
    assert not flag.any()


# ------------------------------------------------------------------------------------ window

@pytest.mark.parametrize("seed", range(5))
def test_window_matches_slow_loop(seed):
    rng = np.random.default_rng(seed)
    rows = [list(rng.normal(-2, 2, size=int(rng.integers(0, 40))).round(4)) for _ in range(12)]
    stats = make_stats(rows)
    for w in (1, 2, 3, 5, 17, 50):
        got = window_scores(stats, window=w)
        for i, r in enumerate(rows):
            assert same(float(got[i]), slow_window(r, w)), (w, r)


def test_window_registered_signal_uses_50_tokens_and_bad_window_raises():
    rng = np.random.default_rng(9)
    rows = [list(rng.normal(-2, 2, size=n).round(4)) for n in (120, 49, 50, 0)]
    got = S.REGISTRY["window"].fn(SignalInputs(target=make_stats(rows), texts=["x"] * 4))
    for i, r in enumerate(rows):
        assert same(float(got[i]), slow_window(r, 50))
    with pytest.raises(LlmMiaError):
        window_scores(make_stats(rows), window=0)


# ------------------------------------------------------------------------------------ C10 (b)

def _hand_z(logits: list[float], target: int) -> float:
    z = math.log(sum(math.exp(v) for v in logits))
    lp = [v - z for v in logits]
    p = [math.exp(v) for v in lp]
    mu = sum(a * b for a, b in zip(p, lp))
    sd = math.sqrt(sum(a * (b - mu) ** 2 for a, b in zip(p, lp)))
    return (lp[target] - mu) / sd


def test_c10a_min_k_plus_plus_values():
    tok, mu, sigma, _ = vocab_stats(torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]), torch.tensor([1, 0]))
    stats = make_stats([[float(tok[0])], [float(tok[1])], [float(tok[0]), float(tok[1])]],
                       mu=[[float(mu[0])], [float(mu[1])], [float(mu[0]), float(mu[1])]],
                       sigma=[[float(sigma[0])], [float(sigma[1])], [float(sigma[0]), float(sigma[1])]])
    s, flag = min_k_plus_plus_scores(stats, k=0.2)
    z1, z0 = _hand_z([2, 1, 0], 1), _hand_z([2, 1, 0], 0)
    assert (z1, z0) == pytest.approx((-0.882951, 0.652054), abs=1e-6)
    assert s.tolist() == pytest.approx([z1, z0, z1], abs=1e-5)
    assert float(min_k_plus_plus_scores(stats, k=1.0)[0][2]) == pytest.approx((z1 + z0) / 2, abs=1e-5)
    assert not flag.any()


class UniformModel(torch.nn.Module):
    """Logits 0 for all V ids at every position: sigma = 0 at every prediction."""

    def __init__(self, V: int):
        super().__init__()
        self.V = V
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kw):
        class Out:
            pass

        o = Out()
        o.logits = torch.zeros(*input_ids.shape, self.V)
        return o


@pytest.mark.parametrize("V", [4, 7, 1000])
def test_c10b_zero_sigma_is_finite_and_flagged(V):
    stats = compute_token_stats(UniformModel(V), [[0, 1, 2], [3], [1, 2]], batch_size=3)
    s, flag = min_k_plus_plus_scores(stats, k=0.2)
    assert s[0].item() == 0.0 and s[2].item() == 0.0
    assert math.isnan(s[1].item())  # no scored token
    assert flag.tolist() == [True, False, True]
    inp = SignalInputs(target=stats, texts=["abc", "d", "bc"])
    flags = row_flags(inp)
    assert "zero_sigma" in flags[0] and "zero_sigma" in flags[2] and "too_short" in flags[1]
    # the loss is still the hand value
    assert mean_nll(stats)[0].item() == pytest.approx(math.log(V), abs=1e-5)


def test_c10b_zero_sigma_among_normal_tokens():
    # one uniform prediction (z := 0) among two ordinary ones, k = 1.0 averages all three
    z1, z0 = _hand_z([2, 1, 0], 1), _hand_z([2, 1, 0], 0)
    tok, mu, sigma, _ = vocab_stats(torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 0.0]]), torch.tensor([1, 2, 0]))
    stats = make_stats([tok.tolist()], mu=[mu.tolist()], sigma=[sigma.tolist()])
    s, flag = min_k_plus_plus_scores(stats, k=1.0)
    assert s.item() == pytest.approx((z1 + 0.0 + z0) / 3, abs=1e-5)
    assert flag.tolist() == [True]


# ------------------------------------------------------------------------------------ C11

SIGNAL_NAMES_NLL = ("loss", "zlib", "lowercase", "min_k", "min_k_plus_plus", "window")


def test_c11_empty_and_too_short_texts(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    loaded = from_objects(tiny_model, tok)
    normal = ["Hello world. Bye.", "Return a new list containing all items."]
    short = ["", " ", "Hi", "H"]
    texts = [short[0], normal[0], short[1], short[2], normal[1], short[3]]
    ntok = [len(tok(t)["input_ids"]) if t else 0 for t in texts]
    assert [ntok[0], ntok[2], ntok[5]] == [0, 1, 1]
    res = score(loaded, texts, batch_size=4)
    assert set(SIGNAL_NAMES_NLL) <= set(res.rows[0]["scores"])
    for t, n, row in zip(texts, ntok, res.rows):
        assert row["zlib_bytes"] == len(zlib.compress(t.encode("utf-8")))
        assert row["n_scored_tokens"] == max(0, n - 1)
        if n <= 1:
            assert "too_short" in row["flags"]
            assert math.isnan(row["nll"]) and math.isnan(row["perplexity"])
            for name in SIGNAL_NAMES_NLL:
                assert math.isnan(row["scores"][name]), name
        else:
            assert "too_short" not in row["flags"]
            assert row["nll"] == pytest.approx(ref_nll(tiny_model, tok(t)["input_ids"]), abs=1e-5)
            for name in SIGNAL_NAMES_NLL:
                assert math.isfinite(row["scores"][name]), name
    for t in normal:
        alone = score(loaded, [t], batch_size=1).rows[0]
        row = res.rows[texts.index(t)]
        assert alone["flags"] == row["flags"]
        for name, v in alone["scores"].items():
            assert same(row["scores"][name], v), name


def test_c11_all_rows_empty(tiny_model, tiny_tokenizer):
    texts = ["", " "]
    res = score(from_objects(tiny_model, tiny_tokenizer), texts, batch_size=2)
    for t, row in zip(texts, res.rows):
        assert "too_short" in row["flags"]
        assert row["scores"] and all(math.isnan(v) for v in row["scores"].values())
        assert row["zlib_bytes"] == len(zlib.compress(t.encode("utf-8")))


# ------------------------------------------------------------------------------------ C12

def test_c12_perplexity_overflow():
    got = perplexity(torch.tensor([800.0, 900.0, 2.0, 0.0]))
    assert math.isinf(got[0].item()) and got[0].item() > 0
    assert math.isinf(got[1].item()) and got[1].item() > 0
    assert got[2].item() == pytest.approx(math.exp(2.0), abs=1e-6)
    assert got[2].item() == pytest.approx(7.389056, abs=1e-6)
    assert got[3].item() == 1.0
    # ranking uses the NLL: 800 and 900 stay ordered
    loss = S.REGISTRY["loss"].fn(SignalInputs(target=make_stats([[-800.0], [-900.0]]), texts=["a", "b"]))
    assert torch.isfinite(loss).all() and loss[0] > loss[1]
    assert loss.tolist() == pytest.approx([-800.0, -900.0])


def test_c12_zlib_ratio_with_zero_nll_is_plus_inf_and_flagged():
    stats = make_stats([[0.0, 0.0, 0.0], [LIKELY], []])
    inp = SignalInputs(target=stats, texts=["abc abc", "x", ""])
    nll = mean_nll(stats)
    assert nll[0].item() == 0.0 and not math.copysign(1.0, nll[0].item()) < 0  # +0.0, never -0.0
    z = S.REGISTRY["zlib"].fn(inp)
    assert z[0].item() == math.inf
    assert z[1].item() == pytest.approx(len(zlib.compress(b"x")) / -LIKELY, rel=1e-6)
    assert math.isnan(z[2].item())
    flags = row_flags(inp)
    assert "zero_nll" in flags[0] and "zero_nll" not in flags[1] and "too_short" in flags[2]
    assert S.total_nll(stats)[0].item() == 0.0 and math.copysign(1.0, S.total_nll(stats)[0].item()) > 0


def test_c12_certain_model_end_to_end():
    """A model that is certain of every next token: NLL 0 -> the zlib ratio ranks it highest (+inf)."""

    class Certain(StepModel):
        def __init__(self):
            super().__init__()
            self.table = self.table * 200.0  # logit 400 for the likely step: p = 1 in fp32

    stats = compute_token_stats(Certain(), [[0, 1, 2, 3, 4], [0, 2, 4]], batch_size=2)
    inp = SignalInputs(target=stats, texts=["abcde", "ace"])
    assert mean_nll(stats)[0].item() == 0.0
    assert S.REGISTRY["zlib"].fn(inp)[0].item() == math.inf
    assert S.REGISTRY["zlib"].fn(inp)[1].item() == pytest.approx(len(zlib.compress(b"ace")) / 400.0, rel=1e-5)
    assert "zero_nll" in row_flags(inp)[0]


# ------------------------------------------------------------------------------------ C20

def test_c20_decode_whole_id_list(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer
    ids = tok("Bye 😀")["input_ids"]
    whole = tok.decode(ids)
    joined = "".join(tok.decode([i]) for i in ids)
    assert whole == "Bye 😀"
    assert "\ufffd" in joined and "\ufffd" not in whole
    # scoring a sample from its ids and its whole decode: zlib over the real UTF-8 bytes
    row = score(from_objects(tiny_model, tok), [whole], ids=[ids], signals=["zlib", "loss"]).rows[0]
    assert row["zlib_bytes"] == len(zlib.compress("Bye 😀".encode()))
    assert row["zlib_bytes"] != len(zlib.compress(joined.encode("utf-8")))
    assert row["nll"] == pytest.approx(ref_nll(tiny_model, ids), abs=1e-5)


def test_c20_lowercase_view_tokenized_on_its_own(tiny_tokenizer, tiny_model):
    tok = tiny_tokenizer
    texts = ["İSTANBUL", "Hello world. Bye. İSTANBUL istanbul", "ABCDEF"]
    assert len("İSTANBUL".lower()) == len("İSTANBUL") + 1
    res = score(from_objects(tiny_model, tok), texts, signals=["lowercase", "loss"], batch_size=3)
    low = res.inputs.lowercase
    for i, t in enumerate(texts):
        ids, lids = tok(t)["input_ids"], tok(t.lower())["input_ids"]
        assert int(low.n_scored[i]) == len(lids) - 1
        expected = ref_nll(tiny_model, lids) / ref_nll(tiny_model, ids)
        assert res.rows[i]["scores"]["lowercase"] == pytest.approx(expected, rel=1e-5)
        assert res.rows[i]["scores"]["loss"] == pytest.approx(-ref_nll(tiny_model, ids), abs=1e-5)


def test_lowercase_view_runs_only_where_lowercasing_changes_the_ids(tiny_tokenizer, tiny_model, monkeypatch):
    """A text whose lowercase has the same ids reuses the target view; the others run; the ratio is
    still NLL(lowercase) / NLL(text) from a plain forward pass (1 for the unchanged texts)."""
    from llm_mia.models.hf import LoadedModel

    tok = tiny_tokenizer
    texts = ["hello world. bye.", "Hello World. Bye.", "bye bye"]
    ran = []
    orig = LoadedModel._compute

    def spy(self, sequences, *a):
        ran.extend(list(s) for s in sequences)
        return orig(self, sequences, *a)

    monkeypatch.setattr(LoadedModel, "_compute", spy)
    res = score(from_objects(tiny_model, tok), texts, signals=["lowercase"], batch_size=3)
    ids = [tok(t)["input_ids"] for t in texts]
    assert ran == ids + [tok(texts[1].lower())["input_ids"]]  # the target view, then one lowercase row
    for i, t in enumerate(texts):
        expected = ref_nll(tiny_model, tok(t.lower())["input_ids"]) / ref_nll(tiny_model, ids[i])
        assert res.rows[i]["scores"]["lowercase"] == pytest.approx(expected, rel=1e-5)
    assert res.rows[0]["scores"]["lowercase"] == 1.0 and res.rows[1]["scores"]["lowercase"] != 1.0


# ------------------------------------------------------------------------------------ registry

def test_unknown_signal_suggests_a_name():
    with pytest.raises(LlmMiaError, match="did you mean 'min_k'"):
        S.get_signals(["min_kk"])


# ------------------------------------------------------------------------------------ T3-01

class G4(StepModel):
    """G4: S1's table with logit[2][4] = -inf, so after id 2, id 4 has probability exactly 0."""

    def __init__(self):
        super().__init__()
        self.table[2, 4] = -math.inf


def g4_logprobs(ids: list[int]) -> list[float]:
    """Plain-Python log-softmax of G4's rows, one step at a time."""
    out = []
    for a, b in zip(ids[:-1], ids[1:]):
        logits = [2.0 if j == (a + 1) % 5 else 0.0 for j in range(5)]
        if a == 2:
            logits[4] = -math.inf
        z = math.log(sum(math.exp(v) for v in logits if v != -math.inf))
        out.append(logits[b] - z if logits[b] != -math.inf else -math.inf)
    return out


def test_t3_01_zero_probability_token_is_not_padding():
    rows = [[0, 1, 2, 4], [0, 1, 2, 3, 4, 0, 1, 2, 4, 0, 1, 2, 3]]
    stats = compute_token_stats(G4(), rows, batch_size=2)
    lps = [g4_logprobs(r) for r in rows]
    assert lps[0] == pytest.approx([-0.432653, -0.432653, -math.inf], abs=1e-6)
    assert lps[1][2] == pytest.approx(-0.340753, abs=1e-6) and lps[1].count(-math.inf) == 1
    for i, lp in enumerate(lps):
        got = stats.token_logprob[i, :len(lp)].tolist()
        assert [v == -math.inf for v in got] == [v == -math.inf for v in lp]
        assert [v for v in got if v != -math.inf] == pytest.approx([v for v in lp if v != -math.inf], abs=1e-6)
    mk = min_k_scores(stats, k=0.2).tolist()
    mkpp, _ = min_k_plus_plus_scores(stats, k=0.2)
    win = window_scores(stats, window=2).tolist()
    assert mk == [slow_min_k(lp, 0.2) for lp in lps] == [-math.inf, -math.inf]
    assert mkpp.tolist() == [-math.inf, -math.inf]  # z = (-inf - mu) / sigma
    assert win == pytest.approx([slow_window(lp, 2) for lp in lps], abs=1e-6)
    assert win == pytest.approx([-0.432653, -0.386703], abs=1e-6)
    assert mean_nll(stats).tolist() == [math.inf, math.inf]  # loss -inf, as before
    # the same text padded next to a long one, on either side: the mask, not a value, marks padding
    for side in ("right", "left"):
        alone = compute_token_stats(G4(), [rows[0]], batch_size=1)
        both = compute_token_stats(G4(), [rows[1], rows[0]], batch_size=2, padding_side=side)
        assert min_k_scores(both, k=0.2)[1].item() == min_k_scores(alone, k=0.2)[0].item() == -math.inf
        assert window_scores(both, window=2)[1].item() == pytest.approx(window_scores(alone, window=2)[0].item(), abs=1e-6)


# ------------------------------------------------------------------------------------ EZ-MIA, WBC, RMIA

@torch.no_grad()
def hand_rows(model, ids: list[int]) -> list[tuple[float, bool]]:
    """(log p(x_t), x_t is the top-1 prediction) for ids[1:], one unpadded pass, by hand in float64."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double().tolist()
    out = []
    for p in range(1, len(ids)):
        x = logits[p - 1]
        m = max(x)
        lse = m + math.log(sum(math.exp(v - m) for v in x))
        out.append((x[ids[p]] - lse, x[ids[p]] == m))
    return out


def slow_ez(tgt: list[tuple[float, bool]], ref: list[tuple[float, bool]]) -> float:
    pos = neg = 0.0
    zone = 0
    for (lt, top1), (lr, _) in zip(tgt, ref):
        if top1:
            continue
        zone += 1
        if lt > lr:
            pos += lt - lr
        else:
            neg += lr - lt
    if zone == 0 or pos + neg == 0:
        return math.nan
    return pos / (pos + neg)


def slow_wbc(lt: list[float], lr: list[float], sizes=(2, 3, 4, 6, 9, 13, 18, 25, 32, 40)) -> float:
    fracs = []
    for w in sizes:
        if w > len(lt):
            continue
        wins = range(len(lt) - w + 1)
        fracs.append(sum(-sum(lr[s:s + w]) > -sum(lt[s:s + w]) for s in wins) / len(wins))
    return sum(fracs) / len(fracs) if fracs else math.nan


def _models_and_seqs(seed: int = 7):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    ref = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=64)).eval()
    torch.manual_seed(seed + 1)
    tgt = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64)).eval()
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 64, (int(n),), generator=g).tolist() for n in (2, 3, 12, 45, 5, 30, 1)]
    return tgt, ref, seqs


def test_ez_mia_and_wbc_match_slow_loops():
    tgt, ref, seqs = _models_and_seqs()
    inp = SignalInputs(target=compute_token_stats(tgt, seqs, batch_size=3),
                       texts=["x"] * len(seqs), reference=compute_token_stats(ref, seqs, batch_size=2))
    ez = S.REGISTRY["ez_mia"].fn(inp).tolist()
    wbc = S.REGISTRY["wbc"].fn(inp).tolist()
    flags = row_flags(inp)
    for i, ids in enumerate(seqs):
        if len(ids) < 2:
            assert math.isnan(ez[i]) and math.isnan(wbc[i])
            assert {"ez_mia_no_error_zone", "wbc_too_short"} <= set(flags[i])
            continue
        t, r = hand_rows(tgt, ids), hand_rows(ref, ids)
        assert same(ez[i], slow_ez(t, r)), (i, ez[i], slow_ez(t, r))
        assert same(wbc[i], slow_wbc([a for a, _ in t], [a for a, _ in r])), i
        assert ("wbc_too_short" in flags[i]) == (len(ids) - 1 < 2)
    assert 0 < sum(1 for v in ez if v == v and 0 < v < 1)  # the oracle is not only NaN / edge values


def _hand_stats(lt: list[list[float]], lr: list[list[float]], top1: list[list[bool]]):
    t, r = make_stats(lt), make_stats(lr)
    T = t.mask.shape[1]
    t.token_is_top1 = torch.tensor([row + [True] * (T - len(row)) for row in top1], dtype=torch.bool)  # junk past n
    return SignalInputs(target=t, texts=["x"] * len(lt), reference=r)


def test_ez_mia_limit_keeps_its_order_and_is_flagged():
    """N = 0 (the target never less sure than the reference on its errors) is the most member-like
    case: it scores the top value 1 (the reference code returns 0), flagged; nothing is NaN from
    inf - inf; no error-zone token or no difference at all is NaN, flagged."""
    inp = _hand_stats(
        lt=[[-1.0, -2.0, -0.1], [-1.0, -3.0, -0.5], [-0.1, -0.2], [-1.0, -1.0], [-math.inf, -1.0], [-math.inf, -1.0]],
        lr=[[-3.0, -2.5, -9.0], [-2.0, -2.5, -0.5], [-3.0, -3.0], [-1.0, -1.0], [-math.inf, -2.0], [-2.0, -1.5]],
        top1=[[False, False, True], [False, False, False], [True, True], [False, False], [False, False],
              [False, False]])
    ez = S.REGISTRY["ez_mia"].fn(inp).tolist()
    # row 0: d = +2, +0.5 (third token is top-1: outside the zone) -> P = 2.5, N = 0
    # row 1: d = +1, -0.5, 0 -> 1 / 1.5; row 4: both -inf give d = 0, then +1 -> 1
    # row 5: d = -inf, +0.5 -> 0
    assert ez[0] == 1.0 and ez[1] == pytest.approx(2 / 3, abs=1e-6) and ez[4] == 1.0 and ez[5] == 0.0
    assert math.isnan(ez[2]) and math.isnan(ez[3])
    assert ez[0] > ez[1]  # order kept: P/N = inf ranks above P/N = 2
    flags = row_flags(inp)
    assert "ez_mia_no_negative" in flags[0] and "ez_mia_no_negative" not in flags[1]
    assert "ez_mia_no_error_zone" in flags[2] and "ez_mia_undefined" in flags[3]


def test_wbc_infinite_windows_and_ties():
    inp = _hand_stats(lt=[[-1.0, -1.0, -1.0], [-1.0, -math.inf, -1.0], [-1.0, -1.0, -1.0], [-0.5, -2.0, -0.1]],
                      lr=[[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [-1.0, -math.inf, -1.0], [-1.0, -1.0, -1.0]],
                      top1=[[True] * 3] * 4)
    got = S.REGISTRY["wbc"].fn(inp).tolist()
    # sizes 2 and 3 (3 tokens): ties never exceed; a window with a target -inf never exceeds; with a
    # reference -inf always. Row 3, reference NLL - target NLL: w = 2: -0.5, -0.1 (0 of 2); w = 3: +0.4 (1 of 1)
    assert got == [0.0, 0.0, 1.0, 0.5]
    assert got[3] == slow_wbc([-0.5, -2.0, -0.1], [-1.0, -1.0, -1.0])


def test_ez_mia_and_wbc_refuse_another_tokenizer(tiny_model, tiny_tokenizer):
    from conftest import TOKENIZER_TEXT, make_tiny_gpt2

    from llm_mia.models.tokenizer import train_bpe_tokenizer

    other = train_bpe_tokenizer(TOKENIZER_TEXT[::-1], vocab_size=270, min_frequency=1)
    tgt = from_objects(tiny_model, tiny_tokenizer)
    ref = from_objects(make_tiny_gpt2(len(other), seed=5), other)
    texts = ["Hello world. Bye.", "The quick brown fox."]
    res = score(tgt, texts, reference=ref)  # default: every signal whose inputs exist
    assert "reference" in res.rows[0]["scores"]
    assert not {"ez_mia", "wbc", "rmia"} & set(res.rows[0]["scores"])
    for name in ("ez_mia", "wbc"):
        with pytest.raises(LlmMiaError, match="tokenizer"):
            score(tgt, texts, reference=ref, signals=[name])
        with pytest.raises(LlmMiaError, match="token by token"):
            S.REGISTRY[name].fn(res.inputs)  # per-byte inputs: refused, never paired by position


def same_list(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def test_rmia_matches_slow_loop(tiny_model, tiny_tokenizer):
    from conftest import make_tiny_gpt2

    from llm_mia.membership.signals.finetuned import rmia_from_inputs, rmia_scores

    tok = tiny_tokenizer
    ref_model = make_tiny_gpt2(len(tok), seed=3)
    tgt, ref = from_objects(tiny_model, tok), from_objects(ref_model, tok)
    texts = ["Hello world. Bye.", "The quick brown fox jumps over the lazy dog.", "A", "def f(x):\n    return x + 1"]
    pop = ["Alpha beta gamma delta.", "Call 555-0100 now!", "my social security number", "héllo wörld", "B"]

    def mean_lp(model, t):  # mean log p per scored token (GPT-2 convention: the first token is context)
        lp = ref_logprobs(model, tok(t)["input_ids"])
        return float(lp.mean()) if len(lp) else math.nan

    def lr(t, a):  # Pr(x | theta) / Pr(x), Pr(x) = ((1 + a) p_ref + (1 - a)) / 2, plain floats
        pt, pr = math.exp(mean_lp(tiny_model, t)), math.exp(mean_lp(ref_model, t))
        return pt / (((1 + a) * pr + (1 - a)) / 2)

    res = score(tgt, texts, reference=ref, population=pop)
    for a in (0.3, 1.0, 0.0):
        z = [lr(p, a) for p in pop if len(tok(p)["input_ids"]) > 1]
        vals = rmia_from_inputs(res.inputs, a=a).tolist()
        if a == 0.3:  # the registered signal's defaults
            assert same_list(vals, [r["scores"]["rmia"] for r in res.rows])
        for t, v in zip(texts, vals):
            if len(tok(t)["input_ids"]) < 2:
                assert math.isnan(v)
                continue
            expected = sum(lr(t, a) / lz > 1.0 for lz in z) / len(z)
            assert v == pytest.approx(expected, abs=1e-9), (a, t)
            assert 0 < expected < 1 or a != 0.3  # not an edge value: the population comparison matters
    assert "rmia_undefined" in res.rows[2]["flags"]
    assert {"ez_mia", "wbc", "rmia"} <= set(res.rows[0]["scores"])  # all picked when their inputs exist
    assert "rmia" not in score(tgt, texts, reference=ref).rows[0]["scores"]  # no population: not picked
    with pytest.raises(LlmMiaError, match="population"):
        score(tgt, texts, reference=ref, signals=["rmia"])
    with pytest.raises(LlmMiaError, match="empty"):
        score(tgt, texts, reference=ref, population=[""])
    with pytest.raises(LlmMiaError):
        rmia_scores(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), a=1.5)
