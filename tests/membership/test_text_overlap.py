"""Text-only membership signals: SaMIA (Kaneko et al. 2024) and n-gram coverage (Hallinan et al. 2025)."""

from __future__ import annotations

import json
import math

import pytest

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.signals.text_overlap import coverage, ngram_coverage, rouge_n_recall, samia, words
from llm_mia.models.continuations import sample_continuations
from llm_mia.models.hf import from_objects
from tests.conftest import run_cli


def _slow_rouge1(cand: str, ref: str) -> float:
    """Unigram recall by removing matched words one at a time from a copy of the candidate."""
    c, hit = list(words(cand)), 0
    for w in words(ref):
        if w in c:
            c.remove(w)
            hit += 1
    return hit / len(words(ref))


def _slow_coverage(sample: str, suffix: str, n: int) -> float:
    s, x = words(sample), words(suffix)
    covered = 0
    for pos in range(len(x)):  # is word pos inside some n-gram of x that occurs in the sample?
        ok = False
        for start in range(max(0, pos - n + 1), min(pos, len(x) - n) + 1):
            g = x[start:start + n]
            if any(s[j:j + n] == g for j in range(len(s) - n + 1)):
                ok = True
        covered += ok
    return covered / len(x)


def test_hand_computed_overlaps():
    # suffix words: the cat sat on the mat (6); sample: the the cat (counts clipped: the x2, cat x1) -> 3/6
    assert rouge_n_recall("The the cat", "the cat sat on the mat") == pytest.approx(3 / 6)
    assert samia(["the the cat", "dog"], "the cat sat on the mat") == pytest.approx((3 / 6 + 0) / 2)
    # 3-grams of the suffix in the sample: (cat sat on) covers words 1..3 -> 3/6
    assert coverage("a cat sat on a hat", "the cat sat on the mat", 3) == pytest.approx(3 / 6)
    assert ngram_coverage(["x", "a cat sat on a hat", "the cat sat on the mat"], "the cat sat on the mat") == 1.0
    assert math.isnan(samia([], "a b")) and math.isnan(samia(["a"], "  ,")) and math.isnan(coverage("a b", "a b", 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_slow_loops(seed):
    import random

    rng = random.Random(seed)
    vocab = ["a", "b", "c", "d", "e"]
    for _ in range(50):
        suffix = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12)))
        samples = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12))) for _ in range(3)]
        assert samia(samples, suffix) == pytest.approx(sum(_slow_rouge1(c, suffix) for c in samples) / 3)
        assert ngram_coverage(samples, suffix, 2) == pytest.approx(max(_slow_coverage(c, suffix, 2) for c in samples))


def test_continuations_split_and_are_seeded(tiny_model, tiny_tokenizer):
    lm = from_objects(tiny_model, tiny_tokenizer)
    texts = ["Alpha beta gamma delta epsilon.", "def f(x):\n    return x + 1\n"]
    a = sample_continuations(lm, texts, n_samples=3, seed=0)
    b = sample_continuations(lm, texts, n_samples=3, seed=0)
    assert [c.samples for c in a] == [c.samples for c in b] and len(a[0].samples) == 3
    assert all(c.prefix + c.suffix == t for c, t in zip(a, texts))
    with pytest.raises(LlmMiaError, match="at least"):
        sample_continuations(lm, ["A"], n_samples=1)


def test_continuations_of_a_text_longer_than_the_context_fit_it(tiny_tokenizer):
    """A text longer than the context was refused ("prompt of N tokens + 1 new tokens exceeds the
    model's context"; seen on the demo's 128-token model); it is now cut to context - 1 tokens first
    (as TokenStats scoring truncates), split there, and flagged."""
    from llm_mia.membership.text_scoring import text_signal_scores
    from llm_mia.models.tokenizer import text_ids
    from tests.conftest import make_tiny_gpt2

    lm = from_objects(make_tiny_gpt2(len(tiny_tokenizer), n_positions=24), tiny_tokenizer)
    long = " ".join(f"word{i} and more" for i in range(40))
    ids = text_ids(tiny_tokenizer, long)
    assert len(ids) > 60
    calls, generate = [], lm.generate
    lm.generate = lambda p, **kw: calls.append((len(p[0]), kw["max_new_tokens"])) or generate(p, **kw)
    (c,) = sample_continuations(lm, [long], n_samples=2, seed=0)
    # by hand: 23 tokens fit after [start]; the prefix is floor(0.5 * 23) = 11 of them, the suffix the other 12
    assert c.truncated and c.prefix == tiny_tokenizer.decode(ids[:11])
    assert c.prefix + c.suffix == tiny_tokenizer.decode(ids[:23])
    assert calls == [(1 + 11, 12)] and len(c.samples) == 2  # [start] + prefix + 12 new tokens = 24, the context
    short = "the cat sat on the mat"
    assert len(text_ids(tiny_tokenizer, short)) < 23
    vals, flags = text_signal_scores(lm, [long, short], ["samia"])
    assert math.isfinite(vals["samia"][0]) and flags[0] == ["truncated"] and "truncated" not in flags[1]


def test_cli_score_text_signals_finite_and_samia_auc(leak_models, tmp_path, capsys):
    d, _ = leak_models
    mem = [r["text"] for r in io.read_jsonl(d / "corpus" / "train.jsonl")][:12]
    non = [r["text"] for r in io.read_jsonl(d / "corpus" / "heldout.jsonl")][:12]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [(t, 1) for t in mem] + [(t, 0) for t in non]))
    code, out, err = run_cli(["score", "--model", d / "leaky", "--input", inp, "--output", tmp_path / "o.jsonl",
                              "--signals", "samia,ngram_coverage,loss", "--metrics", tmp_path / "m.json"], capsys)
    assert code == 0, err
    rows = io.read_jsonl(tmp_path / "o.jsonl")
    assert all(math.isfinite(r["scores"]["samia"]) and math.isfinite(r["scores"]["ngram_coverage"]) for r in rows)
    m = json.loads((tmp_path / "m.json").read_text())
    auc = {k: v.get("auc") for k, v in m.get("signals", m).items() if isinstance(v, dict)}
    assert auc["samia"] >= 0.8 and auc["ngram_coverage"] >= 0.7  # the leaky model memorised its members


def test_score_on_a_chat_endpoint_counts_queries_and_honours_the_budget(tiny_tokenizer, tmp_path, capsys):
    from tests.models.test_endpoint import StepServer

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    texts = ["the cat sat on the mat today", "a dog ran in the park at noon"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    server = StepServer()
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "step", "choices": [
        {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "sat on the mat"}}]}
    try:
        base = ["score", "--model", f"openai:{server.url}", "--model-args", f"tokenizer={tmp_path / 'tok'},api=chat",
                "--input", tmp_path / "in.txt", "--signals", "samia,ngram_coverage"]
        code, _, err = run_cli([*base, "--output", tmp_path / "o1.jsonl", "--max-queries", "9"], capsys)
        assert code == 2 and "10 queries" in err and "\n" not in err.strip()
        assert not [p for p, _ in server.seen if "chat" in p]  # refused before the first query
        server.raw = [(200, "application/json", json.dumps(body).encode())] * 10
        code, _, err = run_cli([*base, "--output", tmp_path / "o2.jsonl", "--max-queries", "10"], capsys)
        assert code == 0, err
        posts = [b for p, b in server.seen if p.endswith("/chat/completions")]
        assert len(posts) == 10 and "the cat sat" in posts[0]["messages"][0]["content"]
        rows = io.read_jsonl(tmp_path / "o2.jsonl")
        for t, r in zip(texts, rows):  # suffix: the text after its first floor(T / 2) tokens
            ids = tiny_tokenizer(t, add_special_tokens=False)["input_ids"]
            suffix = t[len(tiny_tokenizer.decode(ids[:len(ids) // 2])):]
            assert r["scores"]["samia"] == pytest.approx(_slow_rouge1("sat on the mat", suffix))
            assert r["scores"]["ngram_coverage"] == pytest.approx(_slow_coverage("sat on the mat", suffix, 3))
    finally:
        server.close()


def test_score_on_a_text_endpoint_uses_generated_text(tiny_tokenizer, tmp_path, capsys):
    from tests.models.test_endpoint import StepServer

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    text = "the cat sat on the mat today"
    (tmp_path / "in.txt").write_text(text + "\n")
    reply = {"id": "c", "object": "text_completion", "created": 0, "model": "step",
             "choices": [{"index": 0, "text": " on the mat today", "finish_reason": "length", "logprobs": None}]}
    server = StepServer()
    try:
        server.raw = [(200, "application/json", json.dumps(reply).encode())] * 5
        code, _, err = run_cli(["score", "--model", f"openai:{server.url}", "--model-args",
                                f"tokenizer={tmp_path / 'tok'},api=text", "--input", tmp_path / "in.txt",
                                "--output", tmp_path / "o.jsonl", "--signals", "samia", "--max-queries", "5"], capsys)
        assert code == 0, err
        posts = [b for p, b in server.seen if p.endswith("/completions")]
        assert len(posts) == 5 and len({b["seed"] for b in posts}) == 5  # one query per sample, own seed
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        suffix = text[len(tiny_tokenizer.decode(ids[:len(ids) // 2])):]
        assert io.read_jsonl(tmp_path / "o.jsonl")[0]["scores"]["samia"] == pytest.approx(
            _slow_rouge1(" on the mat today", suffix))
    finally:
        server.close()
