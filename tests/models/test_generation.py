"""Batched generation (llm_mia.models.generation): scoring-cases.md C06 (prompt mask), C19, sampling seeds.

The oracle is a slow loop that runs the model on one unpadded prompt at a time and picks each next
token by hand (argmax, or top-k + temperature + torch.multinomial with the row's own generator).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.generation import PerSampleSampler, generate, left_pad, sample_seed

EOS = 0
PROMPTS = [[EOS], [5, 9, 3], [1, 2, 3, 4, 5, 6, 7]]  # 1 (EOS only), 3 and 7 tokens




@pytest.fixture(scope="module")
def gen_model():
    """S2's shape with large weights (initializer_range 0.5): argmax gaps far above float noise."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16, initializer_range=0.5)
    return GPT2LMHeadModel(cfg).eval()


@torch.no_grad()
def ref_generate(model, prompt, n, *, seed=None, top_k=0, temperature=1.0, eos=None, banned_n=0, min_gap=None):
    """One prompt, no padding, no mask. Greedy when seed is None; stops before the first EOS."""
    ids, out = list(prompt), []
    # sampling oracle: the row's n uniforms drawn once from its seed; token = first id whose
    # cumulative probability (id order) exceeds u * total, found by a plain Python scan
    u = torch.rand(n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64) if seed is not None else None
    for step in range(n):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        logits = logits / (temperature(step) if callable(temperature) else temperature)
        if eos is not None and step < banned_n:
            logits[eos] = -torch.inf
        if top_k:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if u is None:
            top2 = torch.topk(logits, 2).values
            if min_gap is not None:
                min_gap.append(float(top2[0] - top2[1]))
            t = int(logits.argmax())
        else:
            t = inverse_cdf_pick(torch.softmax(logits.double(), -1).tolist(), float(u[step]))
        if eos is not None and t == eos:
            break
        ids.append(t)
        out.append(t)
    return out


def inverse_cdf_pick(probs: list[float], u: float) -> int:
    acc = 0.0
    cum = []
    for p in probs:
        acc += p
        cum.append(acc)
    x = u * cum[-1]
    return next((i for i, c in enumerate(cum) if c > x), len(probs) - 1)


# ------------------------------------------------------------------------------------ C06 / left_pad

def test_c06_single_eos_prompt_mask():
    ids, mask = left_pad([[EOS]], EOS)
    assert ids.tolist() == [[EOS]] and mask.tolist() == [[1]]


def test_left_pad_masks_from_lengths_even_when_ids_equal_pad():
    ids, mask = left_pad([[0], [0, 3, 0], [2, 0]], 0)
    assert ids.tolist() == [[0, 0, 0], [0, 3, 0], [0, 2, 0]]
    assert mask.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]
    with pytest.raises(LlmMiaError):
        left_pad([[1], []], 0)


# ------------------------------------------------------------------------------------ C19

@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]])
def test_c19_batched_greedy_equals_alone(gen_model, order):
    prompts = [PROMPTS[i] for i in order]
    batched = generate(gen_model, prompts, max_new_tokens=8, pad_id=EOS, greedy=True)
    for p, g in zip(prompts, batched):
        gaps = []
        ref = ref_generate(gen_model, p, 8, min_gap=gaps)
        assert min(gaps) > 1e-3  # no near-tie: the comparison below is not at the mercy of rounding
        alone = generate(gen_model, [p], max_new_tokens=8, pad_id=EOS, greedy=True)[0]
        assert g.prompt == p  # the prompt comes back without pads
        assert len(g.new_ids) == 8  # new tokens only: no pads, no prompt
        assert g.new_ids == alone.new_ids == ref


def test_c19_greedy_stops_before_eos(gen_model):
    p = PROMPTS[1]
    free = ref_generate(gen_model, p, 8)
    eos = free[3]  # a token the model emits at step 3 (maybe earlier too)
    expected = free[: free.index(eos)]
    got = generate(gen_model, [PROMPTS[2], p], max_new_tokens=8, pad_id=EOS, greedy=True, eos_id=eos)[1]
    assert got.new_ids == expected
    assert eos not in got.new_ids


# ------------------------------------------------------------------------------------ sampling

SEEDS = [sample_seed(7, i) for i in range(6)]


def test_sample_seed_is_deterministic_and_distinct():
    assert SEEDS == [sample_seed(7, i) for i in range(6)]
    assert len(set(SEEDS)) == 6
    assert all(0 <= s < 2**63 for s in SEEDS)
    assert sample_seed(8, 0) != sample_seed(7, 0)
    ss = np.random.SeedSequence([7, 3]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)
    assert sample_seed(7, 3) == int(ss)


@pytest.mark.parametrize("prompts", [[[EOS]] * 6, [PROMPTS[i % 3] for i in range(6)]])
def test_sampling_same_seeds_same_samples_any_batch_size(gen_model, prompts):
    kw = dict(max_new_tokens=8, pad_id=EOS, top_k=40, temperature=1.0)
    full = generate(gen_model, prompts, seeds=SEEDS, **kw)
    for bs in (1, 2, 4):
        parts = []
        for b0 in range(0, 6, bs):
            parts += generate(gen_model, prompts[b0:b0 + bs], seeds=SEEDS[b0:b0 + bs], **kw)
        assert [g.new_ids for g in parts] == [g.new_ids for g in full]
    for p, s, g in zip(prompts, SEEDS, full):
        assert g.new_ids == ref_generate(gen_model, p, 8, seed=s, top_k=40)
        assert len(g.new_ids) == 8 and g.prompt == p
    # different seeds give different samples
    other = generate(gen_model, prompts, seeds=[sample_seed(8, i) for i in range(6)], **kw)
    assert [g.new_ids for g in other] != [g.new_ids for g in full]
    if all(p == prompts[0] for p in prompts):  # same prompt, different seeds: different samples
        assert len({tuple(g.new_ids) for g in full}) > 1


def test_sampling_with_top_k_1_is_greedy(gen_model):
    sampled = generate(gen_model, PROMPTS, max_new_tokens=8, pad_id=EOS, seeds=SEEDS[:3], top_k=1)
    greedy = generate(gen_model, PROMPTS, max_new_tokens=8, pad_id=EOS, greedy=True)
    assert [g.new_ids for g in sampled] == [g.new_ids for g in greedy]


def test_sampling_temperature_schedule_and_banned_eos(gen_model):
    calls = []

    def temp(i):
        calls.append(i)
        return 0.7 if i < 3 else 1.3

    # EOS banned for the first 5 new tokens, counted from each prompt's end whatever its padding
    eos = 5
    got = generate(gen_model, PROMPTS, max_new_tokens=8, pad_id=EOS, seeds=SEEDS[:3], top_k=10, temperature=temp,
                   eos_id=eos, min_new_tokens=5)
    assert sorted(set(calls)) == list(range(8))
    for p, s, g in zip(PROMPTS, SEEDS[:3], got):
        assert g.new_ids == ref_generate(gen_model, p, 8, seed=s, top_k=10, temperature=lambda i: 0.7 if i < 3 else 1.3,
                                         eos=eos, banned_n=5)
        assert len(g.new_ids) >= 5


def test_sampling_needs_one_seed_per_prompt(gen_model):
    with pytest.raises(LlmMiaError):
        generate(gen_model, PROMPTS, max_new_tokens=2, pad_id=EOS, seeds=SEEDS[:2])
    with pytest.raises(LlmMiaError):
        generate(gen_model, PROMPTS, max_new_tokens=2, pad_id=EOS)


def test_per_sample_sampler_rows_are_independent():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 50, generator=g)
    ids = torch.zeros(3, 4, dtype=torch.long)
    seeds = [11, 22, 11]
    out = PerSampleSampler(seeds, top_k=5, temperature=1.0, prompt_width=4, n_steps=4)(ids, scores.clone())
    for r in range(3):
        alone = PerSampleSampler([seeds[r]], top_k=5, temperature=1.0, prompt_width=4, n_steps=4)(ids[r:r + 1], scores[r:r + 1].clone())
        assert torch.equal(out[r], alone[0])
        finite = torch.isfinite(out[r]).nonzero()[:, 0].tolist()
        assert len(finite) == 1 and out[r, finite[0]] == 0.0
        assert finite[0] in torch.topk(scores[r], 5).indices.tolist()
        u0 = float(torch.rand(4, generator=torch.Generator().manual_seed(seeds[r]), dtype=torch.float64)[0])
        kth = torch.topk(scores[r], 5).values[-1]
        probs = torch.softmax(scores[r].masked_fill(scores[r] < kth, -torch.inf).double(), -1)
        assert finite[0] == inverse_cdf_pick(probs.tolist(), u0)


def _oracle_pick(row: torch.Tensor, u: float, *, top_k: int, t: float, banned=(), limit=None) -> int:
    """The sampler's definition, row by row: temper, mask, keep every id >= the k-th value, scan the cdf."""
    x = row.float() / t
    if limit is not None:
        x[limit:] = -torch.inf
    x[list(banned)] = -torch.inf
    kth = torch.topk(x, top_k).values[-1]
    x = x.masked_fill(x < kth, -torch.inf)
    return inverse_cdf_pick(torch.softmax(x.double(), -1).tolist(), u)


@pytest.mark.parametrize("case", ["plain", "tempered", "banned", "limit", "ties", "few finite"])
def test_per_sample_sampler_top_k_path_equals_the_definition(case):
    """The draw made on the k candidates only (no (B, V) softmax) picks the id the definition picks, for
    every row; where the k-th value ties (the definition keeps every tie) the sampler falls back to
    the full distribution and still agrees; ``scores`` is never written to."""
    g = torch.Generator().manual_seed(7)
    B, V, k = 16, 300, 12
    scores = torch.randn(B, V, generator=g) * 3
    banned, limit, temp = (), None, 1.0
    if case == "tempered":
        temp = 10.0 / 3
    if case == "banned":
        banned = tuple(torch.topk(scores[0], 3).indices.tolist()) + (5,)  # row 0's three best are banned
    if case == "limit":
        limit = 250
        scores[:, 260] = 50.0  # the best logit sits in a padded row: never drawn
    if case == "ties":
        scores[:, :40] = scores[:, :40].round()  # many equal values, some at the k-th place
        scores[3, :] = 1.0  # one row entirely tied
    if case == "few finite":
        scores[:, 5:] = -torch.inf  # fewer finite logits than k
    seeds = [sample_seed(9, i) for i in range(B)]
    sampler = PerSampleSampler(seeds, top_k=k, temperature=temp, prompt_width=2, n_steps=3,
                               banned_until=(banned, 3), vocab_limit=limit)
    before = scores.clone()
    for step in range(3):
        out = sampler(torch.zeros(B, 2 + step, dtype=torch.long), scores)
        assert torch.equal(scores, before)
        picked = out.argmax(-1).tolist()
        assert (torch.isfinite(out).sum(-1) == 1).all()
        for r in range(B):
            u = float(sampler.uniforms[r, step])
            assert picked[r] == _oracle_pick(scores[r], u, top_k=k, t=temp, banned=banned, limit=limit), (case, step, r)
        fast = sampler._pick_among_top_k(scores, step, temp, sampler.uniforms[:, step])
        if case in ("ties", "few finite"):
            assert fast is None  # the definition keeps the ties: drawn over the vocabulary
        else:
            assert fast is not None and fast.tolist() == picked


# ------------------------------------------------------------------------------------ P05

@pytest.fixture(scope="module")
def eos_model():
    """A stub that always prefers EOS: gen_model's shape with +100 added to the EOS logit."""
    torch.manual_seed(1)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64)
    m = GPT2LMHeadModel(cfg).eval()

    def hook(_mod, _inp, out):
        out = out.clone()
        out[..., EOS] += 100.0
        return out

    m.lm_head.register_forward_hook(hook)
    return m


@pytest.mark.parametrize("greedy", [True, False])
def test_p05_min_new_tokens_counts_new_tokens_not_the_prompt(eos_model, greedy):
    p5, p10 = [3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    kw = dict(max_new_tokens=30, pad_id=EOS, eos_id=EOS, min_new_tokens=20, greedy=greedy)
    for prompts in ([p5], [p10], [p5, p10], [p10, p5]):
        seeds = None if greedy else [sample_seed(0, i) for i in range(len(prompts))]
        got = generate(eos_model, prompts, seeds=seeds, **kw)
        assert [len(g.new_ids) for g in got] == [20] * len(prompts)  # min_length would give 15 / 10
        assert all(EOS not in g.new_ids for g in got)


@pytest.mark.parametrize("width", [5, 10])
def test_p05_temperature_decay_processor(width):
    from llm_mia.models.generation import TemperatureDecay

    proc = TemperatureDecay(width)
    scores = torch.tensor([[2.0, 0, 0, 0, 0, 0, 0, 0]])
    expected_t = {0: 10.0, 10: 5.5, 19: 1.45, 20: 1.0, 25: 1.0}  # 10 - 9 i / 20, then 1
    for i, t in expected_t.items():
        ids = torch.zeros(1, width + i, dtype=torch.long)  # the i-th new token is being chosen
        out = proc(ids, scores.clone())
        assert torch.allclose(out, scores / t, atol=1e-6), (i, out)
        if i < 20:
            assert not torch.equal(out, scores)
    with pytest.raises(LlmMiaError):
        TemperatureDecay(5, start=0.0)


def test_p05_temperature_decay_changes_the_samples_and_config_is_top_k_40(gen_model, monkeypatch):
    """Samples with the decay equal the slow loop with T(i) = 10 - 9 i / 20; they differ from plain
    top-k samples with the same seeds (top-k 40 is applied by our sampler); the GenerationConfig
    actually passed to HF does not sample again (argmax of the sampler's one-point distribution)."""
    seen = []
    orig = type(gen_model).generate

    def spy(self, *a, **kw):
        seen.append(kw["generation_config"])
        return orig(self, *a, **kw)

    monkeypatch.setattr(type(gen_model), "generate", spy)
    seeds = [sample_seed(5, i) for i in range(3)]
    decayed = generate(gen_model, PROMPTS, max_new_tokens=8, pad_id=EOS, seeds=seeds, top_k=40,
                       temperature_decay=(10.0, 1.0, 20))
    plain = generate(gen_model, PROMPTS, max_new_tokens=8, pad_id=EOS, seeds=seeds, top_k=40)
    for p, s, g in zip(PROMPTS, seeds, decayed):
        assert g.new_ids == ref_generate(gen_model, p, 8, seed=s, top_k=40, temperature=lambda i: 10 - 9 * min(i, 20) / 20)
    assert [g.new_ids for g in decayed] != [g.new_ids for g in plain]
    cfg = seen[0]
    assert cfg.do_sample is False and cfg.num_beams == 1


@pytest.mark.parametrize("decay", [None, (10.0, 1.0, 20)])
def test_generation_logprobs_equal_a_second_scoring_pass(gen_model, decay):
    """Each sampled token's recorded log p (raw logits, before temperature and top-k) and top-1 flag equal
    today's two-pass values: compute_token_stats over prompt + new tokens, the prompt as context (1e-4)."""
    from llm_mia.models.stats import compute_token_stats

    seeds = [sample_seed(11, i) for i in range(len(PROMPTS))]
    gens = generate(gen_model, PROMPTS, max_new_tokens=7, pad_id=EOS, seeds=seeds, top_k=5, temperature_decay=decay)
    seqs = [g.prompt + g.new_ids for g in gens]
    st = compute_token_stats(gen_model, seqs, context_lens=[len(g.prompt) for g in gens], moments=False)
    for i, g in enumerate(gens):
        n = len(g.new_ids)
        assert n == 7 and int(st.n_scored[i]) == n  # EOS is a token like any other here (not passed as eos_id)
        np.testing.assert_allclose(g.logprob, st.token_logprob[i, :n].numpy(), atol=1e-4, rtol=0)
        assert g.top1 == st.token_is_top1[i, :n].tolist()
    # a slow, obviously correct oracle for one row: the unpadded prompt run token by token
    g = gens[1]
    with torch.no_grad():
        ids = list(g.prompt)
        for k, t in enumerate(g.new_ids):
            lp = torch.log_softmax(gen_model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
            assert abs(float(lp[t]) - g.logprob[k]) < 1e-4
            ids.append(t)


def test_loaded_model_scores_generated_samples_from_the_generation_pass(gen_model):
    """LoadedModel.token_stats reads kept samples (moments off) instead of a forward pass; the values
    equal a fresh pass (1e-4); an unknown sequence in the same call is scored by the model; with
    moments the model always runs."""
    from llm_mia.models.hf import LoadedModel
    from llm_mia.models.stats import compute_token_stats

    class Tok:  # what generate's defaults read; every default is passed explicitly below
        bos_token_id = eos_token_id = EOS

        def __len__(self):
            return 64

    lm = LoadedModel(model=gen_model, tokenizer=Tok(), source="t", max_context=16)
    seeds = [sample_seed(3, i) for i in range(len(PROMPTS))]
    gens = lm.generate(PROMPTS, max_new_tokens=6, pad_id=EOS, eos_id=None, vocab_limit=64, seeds=seeds, top_k=8,
                       keep_logprobs=True)
    seqs = [g.prompt + g.new_ids for g in gens] + [[1, 2, 3, 4]]
    ctx = [len(g.prompt) for g in gens] + [1]
    fresh = compute_token_stats(gen_model, seqs, context_lens=ctx, moments=False)
    got = lm.token_stats(seqs, context_lens=ctx, moments=False)
    assert lm.gen_reused == 3 and not lm._gen_cache
    assert torch.equal(got.n_scored, fresh.n_scored) and torch.equal(got.mask, fresh.mask)
    assert torch.equal(got.token_id, fresh.token_id) and torch.equal(got.token_is_top1, fresh.token_is_top1)
    np.testing.assert_allclose(got.token_logprob.numpy(), fresh.token_logprob.numpy(), atol=1e-4, rtol=0)
    assert got.mean_logprob[got.mask].isnan().all()
    lm.generate(PROMPTS, max_new_tokens=6, pad_id=EOS, eos_id=None, vocab_limit=64, seeds=seeds, top_k=8,
                keep_logprobs=True)
    lm.token_stats(seqs, context_lens=ctx, moments=True)
    assert lm.gen_reused == 3 and len(lm._gen_cache) == 3
