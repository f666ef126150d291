"""Extraction: resumable sample shards (case P07) and seeds that do not depend on batching."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from llm_mia.errors import LlmMiaError
from llm_mia.extract import STRATEGIES, ExtractConfig, sample, shard_indices
from llm_mia.models.loading import from_objects


@pytest.fixture
def lm(tiny_model, tiny_tokenizer):
    return from_objects(tiny_model, tiny_tokenizer)


def _lines(path):
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line.decode("utf-8", errors="strict")) for line in data.split(b"\n") if line]


def test_same_seed_same_samples_whatever_the_batch_size(lm, tmp_path):
    a = sample(lm, ExtractConfig(num_samples=5, seed=3, max_new_tokens=6, batch_size=2, progress=False), tmp_path / "a")
    b = sample(lm, ExtractConfig(num_samples=5, seed=3, max_new_tokens=6, batch_size=5, progress=False), tmp_path / "b")
    c = sample(lm, ExtractConfig(num_samples=5, seed=4, max_new_tokens=6, batch_size=5, progress=False), tmp_path / "c")
    assert [r["token_ids"] for r in a] == [r["token_ids"] for r in b]
    assert [r["token_ids"] for r in a] != [r["token_ids"] for r in c]
    assert all(len(r["token_ids"]) == 6 for r in a)


SHARD = "private/shards/top-k.0-of-1.jsonl"


@pytest.mark.parametrize("cut", ["mid_json", "mid_utf8", "no_newline"])
def test_p07_torn_shard_resumes_without_loss_or_duplicates(lm, tmp_path, cut):
    cfg = ExtractConfig(num_samples=5, seed=0, max_new_tokens=6, batch_size=2, progress=False)
    full = sample(lm, cfg, tmp_path / "full")
    d = tmp_path / "torn"
    (d / "private" / "shards").mkdir(parents=True)
    good = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in full[:3])
    if cut == "mid_json":
        tail = b'{"strategy": "top-k", "index": 3, "seed": 0, "text": "Call 555-01'
    elif cut == "mid_utf8":
        tail = b'{"strategy": "top-k", "index": 3, "seed": 0, "text": "caf' + "é😀".encode()[:-2]
    else:  # a complete last record missing only its newline is kept
        good = good[:-1]
        tail = b""
    (d / SHARD).write_bytes(good + tail)
    with pytest.raises(LlmMiaError, match="--resume"):
        sample(lm, cfg, d)
    rows = sample(lm, replace(cfg, resume=True), d)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["token_ids"] for r in rows] == [r["token_ids"] for r in full]  # regenerated with their own seeds
    on_disk = _lines(d / SHARD)
    assert sorted(r["index"] for r in on_disk) == [0, 1, 2, 3, 4]


def test_p07_corrupt_line_in_the_middle_stops_with_the_shard_and_line(lm, tmp_path):
    cfg = ExtractConfig(num_samples=4, seed=0, max_new_tokens=4, batch_size=2, progress=False, resume=True)
    full = sample(lm, cfg, tmp_path / "full")
    lines = [json.dumps(r) for r in full]
    lines[1] = '{"index": 1, "tok'
    (tmp_path / "bad" / "private" / "shards").mkdir(parents=True)
    (tmp_path / "bad" / SHARD).write_text("\n".join(lines) + "\n")
    with pytest.raises(LlmMiaError, match=r"top-k\.0-of-1\.jsonl: line 2"):
        sample(lm, cfg, tmp_path / "bad")


def test_resume_refuses_samples_of_another_run(lm, tmp_path):
    sample(lm, ExtractConfig(num_samples=2, seed=0, max_new_tokens=4, progress=False), tmp_path)
    with pytest.raises(LlmMiaError, match="another run"):
        sample(lm, ExtractConfig(num_samples=2, seed=1, max_new_tokens=4, progress=False, resume=True), tmp_path)


def test_length_longer_than_context_is_an_error(lm, tmp_path):
    with pytest.raises(LlmMiaError, match="context"):
        sample(lm, ExtractConfig(num_samples=1, max_new_tokens=10_000, progress=False), tmp_path)


def test_unknown_strategy_is_an_error(lm, tmp_path):
    with pytest.raises(LlmMiaError, match="unknown strategy nucleus"):
        sample(lm, ExtractConfig(num_samples=1, max_new_tokens=4, strategies=("nucleus",), progress=False), tmp_path)


# ------------------------------------------------------------------------------------ P06

@pytest.mark.parametrize("n", range(0, 21))
@pytest.mark.parametrize("world", range(1, 6))
def test_p06_shards_are_disjoint_and_cover(n, world):
    parts = [shard_indices(n, world, r) for r in range(world)]
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n)) and len(flat) == len(set(flat))
    if (n, world) == (3, 4):
        assert [len(p) for p in parts] == [1, 1, 1, 0]


def test_p06_ranks_together_equal_one_process(lm, tmp_path):
    """Two ranks writing their shards into one folder give samples 0..7 once each, token-identical
    to a one-process run with the same base seed (seeds come from (seed, index), never the rank)."""
    cfg = ExtractConfig(num_samples=8, seed=2, max_new_tokens=5, batch_size=3, progress=False,
                        strategies=("top-k", "temperature-decay"))
    one = sample(lm, cfg, tmp_path / "one")
    sample(lm, cfg, tmp_path / "two", rank=1, world=2)
    both = sample(lm, cfg, tmp_path / "two", rank=0, world=2)
    key = lambda r: (r["strategy"], r["index"], r["token_ids"])  # noqa: E731
    assert [key(r) for r in both] == [key(r) for r in one]
    assert [r["index"] for r in both if r["strategy"] == "top-k"] == list(range(8))
    assert sorted(p.name for p in (tmp_path / "two" / "private" / "shards").iterdir()) == [
        "temperature-decay.0-of-2.jsonl", "temperature-decay.1-of-2.jsonl", "top-k.0-of-2.jsonl", "top-k.1-of-2.jsonl"]
    on_disk = _lines(tmp_path / "two" / "private" / "shards" / "top-k.1-of-2.jsonl")
    assert [r["index"] for r in on_disk] == [1, 3, 5, 7]


def test_strategies_are_real_and_distinct(lm, tmp_path):
    """Same indices, same base seed: the three strategies give different samples; temperature decay
    equals generating with the decay by hand; internet samples carry a 5-10 token prompt span."""
    from llm_mia.extract import TEMPERATURE_DECAY, strategy_seed
    from llm_mia.models.generation import generate

    cfg = ExtractConfig(num_samples=4, seed=0, max_new_tokens=6, progress=False, strategies=STRATEGIES)
    rows = sample(lm, cfg, tmp_path)
    by = {s: [r for r in rows if r["strategy"] == s] for s in STRATEGIES}
    assert all(len(v) == 4 for v in by.values())
    assert [r["token_ids"] for r in by["top-k"]] != [r["token_ids"] for r in by["temperature-decay"]]
    bos = lm.bos_id
    for r in by["temperature-decay"]:
        g = generate(lm.model, [[bos]], max_new_tokens=6, pad_id=bos, seeds=[strategy_seed(0, "temperature-decay", r["index"])],
                     top_k=40, min_new_tokens=6, eos_id=lm.tokenizer.eos_token_id, temperature_decay=TEMPERATURE_DECAY)
        assert g[0].new_ids == r["token_ids"]
    for r in by["internet"]:
        assert r["prompt_ids"][0] == bos and 5 <= len(r["prompt_ids"]) - 1 <= 10
    for r in by["top-k"] + by["temperature-decay"]:
        assert r["prompt_ids"] == [bos]
    assert len({tuple(r["prompt_ids"]) for r in by["internet"]}) > 1


def test_internet_prompts_from_a_user_file_and_spans_are_real(lm, tmp_path):
    doc = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma"
    (tmp_path / "p.txt").write_text(doc + "\n")
    cfg = ExtractConfig(num_samples=3, seed=1, max_new_tokens=4, progress=False, strategies=("internet",),
                        prompt_source=str(tmp_path / "p.txt"))
    doc_ids = lm.tokenizer(doc)["input_ids"]
    for r in sample(lm, cfg, tmp_path / "o"):
        span = r["prompt_ids"][1:]
        assert any(doc_ids[s:s + len(span)] == span for s in range(len(doc_ids)))
    with pytest.raises(LlmMiaError, match="not found"):
        sample(lm, replace(cfg, prompt_source=str(tmp_path / "missing.txt")), tmp_path / "o2")


def test_internet_memorized_span_in_the_prompt_does_not_count(lm, tmp_path):
    """Verification reads the generated tokens only: a prompt copied from the training data is not
    an extraction; the same span generated by the model is. zlib reads the generated text only,
    and the Carlini table counts each strategy's own top list."""
    import zlib

    from llm_mia.extract import _score_rows, _verify_and_rank

    tok = lm.tokenizer
    train = ["the quick brown fox jumps over the lazy dog while the river keeps flowing past the mill " * 3]
    span = tok(train[0])["input_ids"][:12]
    other = tok("zebra quantum violet 42 orbit")["input_ids"]
    bos = lm.bos_id
    gen = [{"strategy": "internet", "index": 0, "prompt_ids": [bos] + span[:8], "token_ids": other},
           {"strategy": "internet", "index": 1, "prompt_ids": [bos] + other[:5], "token_ids": span},
           {"strategy": "top-k", "index": 0, "prompt_ids": [bos], "token_ids": span[:8]}]
    cfg = ExtractConfig(num_samples=2, strategies=("top-k", "internet"), memorized_min_tokens=10, top_n=5, progress=False)
    scored = _score_rows(lm, None, gen, cfg, ["loss", "zlib", "lowercase", "window"], None)
    assert scored[0]["text"] == tok.decode(other)
    assert scored[0]["zlib_bytes"] == len(zlib.compress(tok.decode(other).encode("utf-8")))
    s = _verify_and_rank(lm, gen, scored, tmp_path, train, [], cfg, ["loss", "zlib", "lowercase", "window"])
    rows = [json.loads(line) for line in (tmp_path / "private" / "samples.jsonl").read_text().splitlines()]
    assert [r["memorized"] for r in rows] == [False, True, True]  # the last: the whole 8-token sample is a match
    assert rows[0]["longest_match_tokens"] < 8 and rows[1]["longest_match_tokens"] == 12
    assert rows[1]["prompt"] == tok.decode(other[:5])
    t = s["carlini_table"]
    assert t["internet"]["perplexity"]["memorized"] == 1 and t["internet"]["unique_memorized"] == 1
    assert t["top-k"]["perplexity"]["memorized"] == 1 and t["top-k"]["perplexity"]["top_n"] == 1


def test_char_span_of_the_longest_match():
    from llm_mia.extract import _char_span

    assert _char_span("hello brave world", "brave", "hello ") == [6, 11]
    # a boundary inside a character (byte-level BPE): the decoded prefix is off, found by search
    assert _char_span("é brave", "brave", "\ufffd\ufffd\ufffd") == [2, 7]
    assert _char_span("abc", "zzz", "") is None and _char_span("abc", "", "") is None


def test_extract_records_the_match_span_in_samples_and_top(lm, tiny_tokenizer, tmp_path):
    from llm_mia.extract import extract

    cfg = ExtractConfig(num_samples=6, seed=1, max_new_tokens=12, top_n=3, progress=False, resume=True)
    # the corpus is made of the samples' own first halves: every sample has a known match
    gen = sample(lm, cfg, tmp_path / "pre")
    train = [tiny_tokenizer.decode(r["token_ids"][:6]) for r in gen]
    extract(lm, tmp_path / "pre", train_texts=train, cfg=cfg)
    rows = _lines(tmp_path / "pre" / "private" / "samples.jsonl")
    assert any(r["match_span"] for r in rows)
    for r in rows:
        if r["longest_match_tokens"]:
            s, e = r["match_span"]
            assert r["text"][s:e] == r["longest_match_text"]
            assert r["longest_match_tokens"] >= 1
    for t in _lines(tmp_path / "pre" / "private" / "top.jsonl"):
        assert t["match_span"] == next(r["match_span"] for r in rows if r["id"] == t["id"])


def test_length_below_one_and_repeated_strategy_are_errors(lm, tmp_path):
    with pytest.raises(LlmMiaError, match="--length must be an integer >= 1"):
        sample(lm, ExtractConfig(num_samples=1, max_new_tokens=0, progress=False), tmp_path / "a")
    with pytest.raises(LlmMiaError, match="strategy given twice"):
        sample(lm, ExtractConfig(num_samples=1, max_new_tokens=2, strategies=("top-k", "top-k"), progress=False),
               tmp_path / "b")
