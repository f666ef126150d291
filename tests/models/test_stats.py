"""Per-token statistics (llm_mia.models.stats): scoring-cases.md C01-C04, C06, C10 (a, c), C17.

Every expected value comes from hand arithmetic on the S1 step model or from a slow reference that
runs the Hugging Face model on one unpadded id list at a time (no attention mask, no position ids)
and takes log-softmax by hand in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.signals import mean_nll, perplexity
from llm_mia.models.stats import TokenStats, compute_token_stats, vocab_stats
from tests.conftest import LIKELY, UNLIKELY, StepModel

A = [0, 1, 2]
B = [0, 1, 2, 3, 4, 0, 1, 3, 4, 0]
C17_IDS = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 2, 0, 1, 2, 4, 0, 1, 3, 4, 0]




# ------------------------------------------------------------------------------------ references

def s1_logprobs(ids: list[int]) -> list[float]:
    """S1 by hand: log p(b | a) = 2 - ln(e^2 + 4) if b = a + 1 (mod 5), else -ln(e^2 + 4)."""
    z = math.log(math.exp(2.0) + 4.0)
    return [(2.0 if b == (a + 1) % 5 else 0.0) - z for a, b in zip(ids[:-1], ids[1:])]


def logsoftmax_stats(logits_row: np.ndarray, target: int) -> tuple[float, float, float]:
    """log p(target), mu = sum p log p, sigma = sqrt(sum p (log p - mu)^2), float64 by hand."""
    x = np.asarray(logits_row, dtype=np.float64)
    lse = x.max() + math.log(np.exp(x - x.max()).sum())
    logp = x - lse
    p = np.exp(logp)
    mu = float((p * logp).sum())
    sigma = math.sqrt(float((p * (logp - mu) ** 2).sum()))
    return float(logp[target]), mu, sigma


@torch.no_grad()
def ref_hf(model, ids: list[int], start_of=lambda p: 0, first: int = 1) -> np.ndarray:
    """Slow oracle: (n-first, 3) array of (log p, mu, sigma) for positions first..n-1.

    Token p is predicted by running ``model`` alone on ``ids[start_of(p):p]`` (unpadded, no mask,
    no position ids) and reading the last logits row.
    """
    out = []
    for p in range(first, len(ids)):
        ctx = ids[start_of(p):p]
        logits = model(input_ids=torch.tensor([ctx])).logits[0, -1].double().numpy()
        out.append(logsoftmax_stats(logits, ids[p]))
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def stats_row(stats: TokenStats, i: int) -> np.ndarray:
    n = int(stats.n_scored[i])
    return np.stack([stats.token_logprob[i, :n].numpy(), stats.mean_logprob[i, :n].numpy(),
                     stats.std_logprob[i, :n].numpy()], axis=1).astype(np.float64)


def assert_no_nan(stats: TokenStats) -> None:
    for name in ("token_logprob", "mean_logprob", "std_logprob"):
        assert not torch.isnan(getattr(stats, name)).any(), name


class NanAtPad(torch.nn.Module):
    """Wraps a model and writes NaN into the logits of every padded position (attention_mask == 0).

    A pipeline that removes pads by selection is unaffected; one that multiplies by a 0/1 mask gets NaN.
    """

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kw):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        logits = out.logits.clone()
        logits[attention_mask == 0] = float("nan")

        class Out:
            pass

        o = Out()
        o.logits = logits
        return o


# ------------------------------------------------------------------------------------ C01

def test_c01_s1_shift_and_count():
    stats = compute_token_stats(StepModel(), [[0, 1, 2, 4]])
    assert stats.n_scored.tolist() == [3]
    assert stats.mask.tolist() == [[True, True, True]]
    lp = stats.token_logprob[0].tolist()
    assert lp == pytest.approx([-0.432653, -0.432653, -2.432653], abs=1e-6)
    assert lp == pytest.approx([LIKELY, LIKELY, UNLIKELY], abs=1e-6)
    # reading the logits at the same position would give -2.432653 everywhere
    assert lp[0] != pytest.approx(-2.432653, abs=1e-3)
    nll = float(mean_nll(stats)[0])
    assert nll == pytest.approx(1.099320, abs=1e-6)
    assert nll == pytest.approx(-(2 * LIKELY + UNLIKELY) / 3, abs=1e-6)
    assert float(perplexity(mean_nll(stats))[0]) == pytest.approx(3.002123, abs=1e-5)
    assert float(perplexity(mean_nll(stats))[0]) == pytest.approx(math.exp(-(2 * LIKELY + UNLIKELY) / 3), rel=1e-6)


@pytest.mark.parametrize("n", [2, 3, 7, 16])
def test_c01_s2_sum_equals_hf_loss(s2_model, n):
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(0, 64, (n,), generator=g).tolist()
    stats = compute_token_stats(s2_model, [ids])
    assert int(stats.n_scored[0]) == n - 1
    with torch.no_grad():
        loss = float(s2_model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    assert float(stats.token_logprob[0, : n - 1].double().sum()) == pytest.approx(-loss * (n - 1), abs=1e-5 * n)
    np.testing.assert_allclose(stats_row(stats, 0), ref_hf(s2_model, ids), atol=1e-5)


# ------------------------------------------------------------------------------------ C02 / C03

@pytest.mark.parametrize("batch", [[A], [B], [A, B], [B, A], [A, B, B]])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("side", ["right", "left"])
def test_c02_s1_batch_invariance(batch, batch_size, side):
    stats = compute_token_stats(StepModel(), batch, batch_size=batch_size, pad_id=4, padding_side=side)
    nll = mean_nll(stats)
    for i, seq in enumerate(batch):
        n = len(seq) - 1
        assert int(stats.n_scored[i]) == n
        assert stats.token_logprob[i, :n].tolist() == pytest.approx(s1_logprobs(seq), abs=1e-6)
        expected = {len(A): 0.432653, len(B): 0.654875}[len(seq)]
        assert float(nll[i]) == pytest.approx(expected, abs=1e-6)
        assert float(nll[i]) == pytest.approx(-sum(s1_logprobs(seq)) / n, abs=1e-6)
        assert stats.mask[i].tolist() == [j < n for j in range(stats.mask.shape[1])]
    assert_no_nan(stats)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_c02_s2_token_stats_match_unbatched(s2_model, batch_size):
    batches = [[A], [B], [A, B], [B, A], [A, B, B]]
    alone = {tuple(s): ref_hf(s2_model, s) for s in (A, B)}
    for batch in batches:
        stats = compute_token_stats(s2_model, batch, batch_size=batch_size, pad_id=4)
        for i, seq in enumerate(batch):
            np.testing.assert_allclose(stats_row(stats, i), alone[tuple(seq)], atol=1e-5)


def test_c03_per_sample_loss_not_batch_mean():
    stats = compute_token_stats(StepModel(), [A, B], batch_size=2, pad_id=4)
    la, lb = -sum(s1_logprobs(A)), -sum(s1_logprobs(B))
    batch_mean = (la + lb) / (2 + 9)
    assert batch_mean == pytest.approx(0.614471, abs=1e-6)
    nll = mean_nll(stats).tolist()
    assert nll == pytest.approx([0.432653, 0.654875], abs=1e-6)
    assert nll == pytest.approx([la / 2, lb / 9], abs=1e-6)
    for v in nll:
        assert abs(v - batch_mean) > 1e-3


# ------------------------------------------------------------------------------------ C04

@pytest.mark.parametrize("side", ["left", "right"])
def test_c04_padding_side_matches_unpadded_run(s2_model, side):
    g = torch.Generator().manual_seed(4)
    short, long = torch.randint(0, 64, (3,), generator=g).tolist(), torch.randint(0, 64, (9,), generator=g).tolist()
    for batch in ([short, long], [long, short]):
        stats = compute_token_stats(s2_model, batch, batch_size=2, padding_side=side, pad_id=7)
        assert_no_nan(stats)
        for i, seq in enumerate(batch):
            np.testing.assert_allclose(stats_row(stats, i), ref_hf(s2_model, seq), atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_c04_nan_logits_at_pads_never_reach_outputs(s2_model, side):
    """Pads are removed by selection: NaN logits at padded positions leave no NaN anywhere."""
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, 64, (k,), generator=g).tolist() for k in (3, 9, 1, 0, 6)]
    stats = compute_token_stats(NanAtPad(s2_model), seqs, batch_size=5, padding_side=side)
    assert_no_nan(stats)
    assert stats.n_scored.tolist() == [2, 8, 0, 0, 5]
    for i, seq in enumerate(seqs):
        np.testing.assert_allclose(stats_row(stats, i), ref_hf(s2_model, seq), atol=1e-5)
    assert not torch.isnan(mean_nll(stats)[[0, 1, 4]]).any()
    assert torch.isnan(mean_nll(stats)[[2, 3]]).all()


def test_c04_bad_padding_side_raises(s2_model):
    with pytest.raises(LlmMiaError):
        compute_token_stats(s2_model, [A], padding_side="middle")


# ------------------------------------------------------------------------------------ C06

@pytest.mark.parametrize("side", ["right", "left"])
def test_c06_pad_equals_eos_equals_bos(tiny_model, tiny_tokenizer, side):
    tok = tiny_tokenizer
    eos = tok.eos_token_id
    assert eos == tok.bos_token_id
    t1 = [eos] + tok("Alpha beta.")["input_ids"]
    t2 = tok("gamma")["input_ids"] + [eos] + tok("delta")["input_ids"]
    assert t1[0] == eos and eos in t2[1:-1]
    batched = compute_token_stats(tiny_model, [t1, t2], batch_size=2, pad_id=eos, padding_side=side)
    assert batched.n_scored.tolist() == [len(t1) - 1, len(t2) - 1]
    assert batched.mask.sum(1).tolist() == [len(t1) - 1, len(t2) - 1]
    for i, seq in enumerate([t1, t2]):
        ref = ref_hf(tiny_model, seq)  # every token attended (no mask at all)
        np.testing.assert_allclose(stats_row(batched, i), ref, atol=1e-5)
        alone = compute_token_stats(tiny_model, [seq], batch_size=1, pad_id=eos)
        np.testing.assert_allclose(stats_row(batched, i), stats_row(alone, 0), atol=1e-5)
    # the internal EOS of text 2 is scored (as a target) at its own column
    k = t2.index(eos, 1)
    assert float(batched.token_logprob[1, k - 1]) == pytest.approx(ref_hf(tiny_model, t2)[k - 1, 0], abs=1e-5)
    # and the leading EOS of text 1 matters: dropping it changes the next token's log-prob
    without = ref_hf(tiny_model, t1[1:])
    assert abs(without[0, 0] - float(batched.token_logprob[0, 1])) > 1e-4


# ------------------------------------------------------------------------------------ C10 (a, c)

def test_c10a_vocab_stats_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    tok, mu, sigma, _ = vocab_stats(logits, torch.tensor([1, 0]))
    z = math.log(math.e**2 + math.e + 1)
    lp = [2 - z, 1 - z, -z]
    p = [math.exp(v) for v in lp]
    m = sum(a * b for a, b in zip(p, lp))
    var = sum(a * (b - m) ** 2 for a, b in zip(p, lp))
    assert tok.tolist() == pytest.approx([lp[1], lp[0]], abs=1e-6)
    assert tok[0].item() == pytest.approx(-1.407606, abs=1e-6)
    assert mu.tolist() == pytest.approx([m, m], abs=1e-6)
    assert mu[0].item() == pytest.approx(-0.832396, abs=1e-6)
    assert (sigma**2).tolist() == pytest.approx([var, var], abs=1e-6)
    assert (sigma[0] ** 2).item() == pytest.approx(0.424405, abs=1e-6)
    zz = ((tok - mu) / sigma).tolist()
    assert zz == pytest.approx([-0.882951, 0.652054], abs=1e-5)
    assert tok.dtype == mu.dtype == sigma.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_c10c_low_precision_logits_use_fp32_log_softmax(dtype):
    logits = torch.zeros(1, 1000)
    logits[0, 0], logits[0, 1] = 20.0, -2.0
    tok, mu, sigma, _ = vocab_stats(logits.to(dtype), torch.tensor([1]))
    x = logits[0].double().numpy()
    ref = logsoftmax_stats(x, 1)
    assert tok.item() == pytest.approx(-22.000, abs=1e-3)
    assert tok.item() == pytest.approx(ref[0], abs=1e-4)
    assert math.isfinite(mu.item()) and mu.item() == pytest.approx(ref[1], abs=1e-4)
    assert math.isfinite(sigma.item()) and sigma.item() == pytest.approx(ref[2], abs=1e-4)


def test_vocab_stats_minus_inf_logits_and_random_rows():
    logits = torch.tensor([[0.0, -math.inf, 1.0, -math.inf]])
    tok, mu, sigma, _ = vocab_stats(logits, torch.tensor([2]))
    ref = logsoftmax_stats(np.array([0.0, 1.0]), 1)  # the -inf ids have p = 0 and contribute 0
    assert [tok.item(), mu.item(), sigma.item()] == pytest.approx(list(ref), abs=1e-6)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 50, generator=g) * 3
    targets = torch.randint(0, 50, (20,), generator=g)
    tok, mu, sigma, _ = vocab_stats(logits, targets)
    for r in range(20):
        ref = logsoftmax_stats(logits[r].double().numpy(), int(targets[r]))
        assert [tok[r].item(), mu[r].item(), sigma[r].item()] == pytest.approx(list(ref), abs=1e-5)


@pytest.mark.parametrize("V", [4, 5, 7, 64, 1000, 50257])
def test_vocab_stats_uniform_is_exactly_degenerate(V):
    """Uniform logits: sigma exactly 0 and log p(target) exactly mu, whatever V (no rounding noise)."""
    for c in (0.0, 3.7, -12.3):
        tok, mu, sigma, _ = vocab_stats(torch.full((1, V), c), torch.tensor([1]))
        assert sigma.item() == 0.0
        assert tok.item() == mu.item()
        assert tok.item() == pytest.approx(-math.log(V), abs=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 128])
def test_vocab_stats_chunks_and_moments_flag(chunk_rows):
    """Row blocks of any size give the same values as the slow reference; moments=False gives NaN
    mu/sigma and the same log p; a target whose logit is -inf gets log p = -inf."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(17, 40, generator=g) * 4
    logits[3, 5] = -math.inf
    targets = torch.randint(0, 40, (17,), generator=g)
    targets[3] = 5
    tok, mu, sigma, _ = vocab_stats(logits, targets, chunk_rows=chunk_rows)
    tok2, mu2, sigma2, _ = vocab_stats(logits, targets, moments=False, chunk_rows=chunk_rows)
    for r in range(17):
        x = logits[r].double().numpy()
        if r == 3:
            assert tok[r].item() == -math.inf and tok2[r].item() == -math.inf
            ref = logsoftmax_stats(np.delete(x, 5), 0)
            assert [mu[r].item(), sigma[r].item()] == pytest.approx(list(ref[1:]), abs=1e-5)
            continue
        ref = logsoftmax_stats(x, int(targets[r]))
        assert [tok[r].item(), mu[r].item(), sigma[r].item()] == pytest.approx(list(ref), abs=1e-5)
        assert tok2[r].item() == tok[r].item()
    assert torch.isnan(mu2).all() and torch.isnan(sigma2).all()


def test_compute_token_stats_without_moments(s2_model):
    """Two batchings (row blocks of 2 vs the default) agree within fp32 rounding: BLAS promises no
    bit-equality across block shapes or CPUs, so atol = 1e-6 nats, rtol = 1e-6."""
    seqs = [[1, 2, 3, 4, 5], [6, 7, 8]]
    full = compute_token_stats(s2_model, seqs, max_rows_per_chunk=2)
    light = compute_token_stats(s2_model, seqs, moments=False)
    torch.testing.assert_close(full.token_logprob, light.token_logprob, atol=1e-6, rtol=1e-6)
    assert torch.isnan(light.mean_logprob[light.mask]).all() and torch.isnan(light.std_logprob[light.mask]).all()
    assert (light.mean_logprob[~light.mask] == 0).all()
    assert torch.isfinite(full.mean_logprob[full.mask]).all()


# ------------------------------------------------------------------------------------ C17

def test_c17_s1_sliding_context_scores_each_position_once():
    model = StepModel(max_context=8)  # raises IndexError on any input longer than 8
    stats = compute_token_stats(model, [C17_IDS], max_context=8, stride=4)
    assert stats.n_scored.tolist() == [19]
    assert stats.truncated.tolist() == [True]
    assert stats.token_logprob[0].tolist() == pytest.approx(s1_logprobs(C17_IDS), abs=1e-6)
    nll = float(mean_nll(stats)[0])
    assert nll == pytest.approx(0.853706, abs=1e-6)
    assert nll == pytest.approx(-sum(s1_logprobs(C17_IDS)) / 19, abs=1e-6)
    assert abs(nll - 0.932653) > 1e-2  # the plain mean of window means


def test_c17_short_sequence_not_truncated():
    stats = compute_token_stats(StepModel(max_context=8), [C17_IDS[:8], C17_IDS], max_context=8, stride=4, batch_size=2)
    assert stats.truncated.tolist() == [False, True]
    assert stats.token_logprob[0, :7].tolist() == pytest.approx(s1_logprobs(C17_IDS[:8]), abs=1e-6)


def test_c17_bad_stride_raises():
    with pytest.raises(LlmMiaError):
        compute_token_stats(StepModel(max_context=8), [C17_IDS], max_context=8, stride=8)
    with pytest.raises(LlmMiaError):
        compute_token_stats(StepModel(max_context=8), [C17_IDS], max_context=8, stride=0)


def documented_window_start(p: int, max_context: int, stride: int) -> int:
    """The docs' rule: token p is scored in the first window [k*stride, k*stride + max_context) containing it."""
    if p < max_context:
        return 0
    return ((p - max_context) // stride + 1) * stride


@pytest.mark.parametrize("stride", [None, 4, 15, 1])
@pytest.mark.parametrize("side", ["right", "left"])
def test_c17_s2_forty_ids(s2_model, stride, side):
    g = torch.Generator().manual_seed(17)
    ids = torch.randint(0, 64, (40,), generator=g).tolist()
    short = ids[:5]
    stats = compute_token_stats(s2_model, [short, ids], stride=stride, padding_side=side, batch_size=3)
    assert stats.truncated.tolist() == [False, True]
    assert stats.n_scored.tolist() == [4, 39]
    s = stride or 16 // 2
    for p in range(16, 40):  # at least max_context - stride tokens of context
        assert p - documented_window_start(p, 16, s) >= 16 - s
    ref = ref_hf(s2_model, ids, start_of=lambda p: documented_window_start(p, 16, s))
    np.testing.assert_allclose(stats_row(stats, 1), ref, atol=1e-5)
    np.testing.assert_allclose(stats_row(stats, 0), ref_hf(s2_model, short), atol=1e-5)


def test_context_lens_skip_prompt_tokens(s2_model):
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 64, (k,), generator=g).tolist() for k in (6, 10, 3)]
    ctx = [3, 1, 5]
    stats = compute_token_stats(s2_model, seqs, context_lens=ctx, batch_size=3)
    assert stats.n_scored.tolist() == [3, 9, 0]
    for i, seq in enumerate(seqs):
        np.testing.assert_allclose(stats_row(stats, i), ref_hf(s2_model, seq, first=max(1, ctx[i])), atol=1e-5)


# ------------------------------------------------------------------------------------ property

_unbatched_cache: dict = {}


def _unbatched(model, seq: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    if seq not in _unbatched_cache:
        s = compute_token_stats(model, [list(seq)], batch_size=1)
        _unbatched_cache[seq] = (stats_row(s, 0), bool(s.truncated[0]))
    return _unbatched_cache[seq]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seqs=st.lists(st.lists(st.integers(0, 63), min_size=0, max_size=20), min_size=1, max_size=5),
       batch_size=st.integers(1, 6), side=st.sampled_from(["right", "left"]), pad_id=st.integers(0, 63),
       data=st.data())
def test_property_batching_never_changes_a_row(s2_model, seqs, batch_size, side, pad_id, data):
    order = data.draw(st.permutations(range(len(seqs))))
    batch = [seqs[j] for j in order]
    stats = compute_token_stats(s2_model, batch, batch_size=batch_size, padding_side=side, pad_id=pad_id)
    assert_no_nan(stats)
    for i, seq in enumerate(batch):
        assert int(stats.n_scored[i]) == max(0, len(seq) - 1)
        row, trunc = _unbatched(s2_model, tuple(seq))
        assert bool(stats.truncated[i]) == trunc == (len(seq) > 16)
        np.testing.assert_allclose(stats_row(stats, i), row, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_unbatched_matches_slow_reference(s2_model, seed):
    """Anchors the property test's 'unbatched' values to the independent oracle."""
    g = torch.Generator().manual_seed(100 + seed)
    for n in (1, 2, 9, 16, 20):
        ids = torch.randint(0, 64, (n,), generator=g).tolist()
        row, _ = _unbatched(s2_model, tuple(ids))
        ref = ref_hf(s2_model, ids, start_of=lambda p: documented_window_start(p, 16, 8))
        np.testing.assert_allclose(row, ref, atol=1e-5)


class _FullLogits(torch.nn.Module):
    """Hides the model's class, so compute_token_stats takes the full-logits path."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.config = m.config

    def forward(self, **kw):
        return self.m(**kw)


def _tiny(arch: str):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)).eval()
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                                            tie_word_embeddings=False)).eval()
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, max_position_embeddings=16)).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt-neox"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_head_on_scored_positions_equals_full_logits(arch, side):
    """The head run on the scored positions only (no (B, T, V) logits) gives the full-logits values,
    and both match a plain unbatched HF forward pass per sequence."""
    from llm_mia.models.stats import _body_and_head

    model = _tiny(arch)
    assert _body_and_head(model) is not None and _body_and_head(_FullLogits(model)) is None
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, 64, (int(n),), generator=g).tolist() for n in (12, 3, 16, 7, 1, 30)]
    fast = compute_token_stats(model, seqs, batch_size=4, padding_side=side, max_context=16, stride=8)
    full = compute_token_stats(_FullLogits(model), seqs, batch_size=4, padding_side=side, max_context=16, stride=8)
    for f in ("token_logprob", "mean_logprob", "std_logprob"):
        assert torch.allclose(getattr(fast, f), getattr(full, f), atol=1e-5, rtol=0), f
    assert torch.equal(fast.n_scored, full.n_scored)
    with torch.no_grad():
        for i, s in enumerate(seqs[:4]):  # no sliding context needed: compare with one HF pass
            if len(s) < 2:
                continue
            lp = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, :-1].double(), -1)
            ref = lp.gather(-1, torch.tensor(s[1:])[:, None])[:, 0]
            assert torch.allclose(fast.token_logprob[i, :len(s) - 1].double(), ref, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_is_top1_matches_hand_argmax(s2_model, side):
    """token_is_top1 (EZ-MIA's error zone is where it is False) is the true token having the row's
    largest logit, read from one unpadded HF pass per sequence; False in unscored cells."""
    g = torch.Generator().manual_seed(11)
    seqs = [torch.randint(0, 64, (int(n),), generator=g).tolist() for n in (9, 1, 16, 4)]
    seqs.append([5] * 12)  # a repeated token: the untrained model's top-1 is often the last input
    stats = compute_token_stats(s2_model, seqs, batch_size=2, padding_side=side)
    with torch.no_grad():
        for i, s in enumerate(seqs):
            n = len(s) - 1
            if n < 1:
                assert not stats.token_is_top1[i].any()
                continue
            logits = s2_model(input_ids=torch.tensor([s])).logits[0, :-1].double().tolist()
            want = [row[t] == max(row) for row, t in zip(logits, s[1:])]
            # a near-tie (margin < 1e-4) may flip between code paths, like any argmax: not compared
            clear = [abs(row[t] - max(v for j, v in enumerate(row) if j != t)) > 1e-4 for row, t in zip(logits, s[1:])]
            got = stats.token_is_top1[i, :n].tolist()
            assert [g for g, c in zip(got, clear) if c] == [w for w, c in zip(want, clear) if c]
            assert sum(clear) >= n - 1
            assert not stats.token_is_top1[i, n:].any()
    assert stats.token_is_top1.any() and (stats.mask & ~stats.token_is_top1).any()  # both kinds occur
    _, _, _, top1 = vocab_stats(torch.tensor([[1.0, 3.0, 3.0], [0.0, -math.inf, 2.0]]), torch.tensor([2, 1]))
    assert top1.tolist() == [True, False]  # a tie counts as top-1; a -inf logit never is


def test_b4_15_progress_counts_inputs_not_windows(tiny_tokenizer):
    """Sliding windows of a sequence longer than the context count once, when its last window is scored;
    a sequence with nothing to score counts too: the calls sum to the number of inputs."""
    from tests.conftest import make_tiny_gpt2

    model = make_tiny_gpt2(len(tiny_tokenizer), n_positions=16)
    seqs = [list(range(3, 43)), list(range(3, 8)), [3], list(range(3, 30))]  # 40 and 27 tokens slide; [3] scores none
    calls = []
    compute_token_stats(model, seqs, batch_size=2, progress=calls.append)
    assert sum(calls) == len(seqs) and all(c >= 0 for c in calls)


# ------------------------------------------------------------------------------------ fused head (issue 23)

@pytest.mark.parametrize("vocab_block", [1, 7, 64, 333, 1000, 4096])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_stats_matches_float64_oracle_and_vocab_stats(vocab_block, with_bias):
    """The blockwise head (GEMM + statistics per vocabulary block, blocks merged) gives the float64
    log-softmax values by hand and the old full-logits vocab_stats values within 1e-4 nats, the same
    top-1 flags; moments=False gives NaN mu/sigma and the same log p."""
    from llm_mia.models.stats import head_stats

    g = torch.Generator().manual_seed(3)
    V, d, M = 1000, 24, 37
    weight = torch.randn(V, d, generator=g) * 0.7
    bias = torch.randn(V, generator=g) if with_bias else None
    hidden = torch.randn(M, d, generator=g)
    targets = torch.randint(0, V, (M,), generator=g)
    logits = hidden @ weight.T + (bias if with_bias else 0)
    targets[:5] = logits[:5].argmax(-1)  # some targets are the top-1
    tok, mu, sigma, top1 = head_stats(hidden, weight, bias, targets, vocab_block=vocab_block)
    old = vocab_stats(logits, targets)
    lp64 = torch.log_softmax((hidden.double() @ weight.double().T + (bias.double() if with_bias else 0)), -1)
    for r in range(M):
        p = lp64[r].exp()
        m = float((p * lp64[r]).sum())
        sd = math.sqrt(float((p * (lp64[r] - m) ** 2).sum()))
        assert [tok[r].item(), mu[r].item(), sigma[r].item()] == pytest.approx([float(lp64[r, targets[r]]), m, sd],
                                                                               abs=1e-4)
    for new, ref in zip((tok, mu, sigma), old[:3]):
        torch.testing.assert_close(new, ref, atol=1e-4, rtol=0)
    assert torch.equal(top1, old[3]) and top1[:5].all() and not top1[5:].all()
    tok2, mu2, sigma2, top2 = head_stats(hidden, weight, bias, targets, moments=False, vocab_block=vocab_block)
    assert torch.equal(tok2, tok) and torch.equal(top2, top1)
    assert torch.isnan(mu2).all() and torch.isnan(sigma2).all()


@pytest.mark.parametrize("vocab_block", [1, 3, 2048])
def test_head_stats_uniform_is_exactly_degenerate(vocab_block):
    """A zero head (uniform logits, any bias constant): sigma exactly 0, log p(target) exactly mu, every
    target top-1 (a tie), as vocab_stats promises, whatever the blocking."""
    from llm_mia.models.stats import head_stats

    for c in (0.0, 3.7):
        tok, mu, sigma, top1 = head_stats(torch.randn(4, 8), torch.zeros(50, 8), torch.full((50,), c),
                                          torch.tensor([0, 1, 49, 7]), vocab_block=vocab_block)
        assert (sigma == 0).all() and torch.equal(tok, mu) and top1.all()
        assert tok.tolist() == pytest.approx([-math.log(50)] * 4, abs=1e-6)
    with pytest.raises(LlmMiaError, match="vocab_block must be >= 1"):
        head_stats(torch.randn(4, 8), torch.zeros(50, 8), None, torch.tensor([0, 1, 49, 7]), vocab_block=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fused_head_blocks_equal_full_logits_path(arch, monkeypatch):
    """compute_token_stats with the fused head cut into small row and vocabulary blocks gives the
    values of the full-logits path (the model's own forward, old vocab_stats) within 1e-4 nats."""
    import llm_mia.models.stats as stats_mod

    model = _tiny(arch)
    g = torch.Generator().manual_seed(9)
    seqs = [torch.randint(0, 64, (int(n),), generator=g).tolist() for n in (12, 5, 16, 9)]
    full = compute_token_stats(_FullLogits(model), seqs, batch_size=3)
    monkeypatch.setattr(stats_mod, "HEAD_VOCAB_BLOCK", 10)
    fast = compute_token_stats(model, seqs, batch_size=3, max_rows_per_chunk=5)
    for f in ("token_logprob", "mean_logprob", "std_logprob"):
        torch.testing.assert_close(getattr(fast, f), getattr(full, f), atol=1e-4, rtol=0)
    assert torch.equal(fast.token_is_top1, full.token_is_top1) and torch.equal(fast.token_id, full.token_id)
