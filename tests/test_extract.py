"""Extraction: resumable sample shards (case P07) and seeds that do not depend on batching."""

from __future__ import annotations

import json

import pytest

from llm_mia.errors import LlmMiaError
from llm_mia.extract import ExtractConfig, sample
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


@pytest.mark.parametrize("cut", ["mid_json", "mid_utf8", "no_newline"])
def test_p07_torn_shard_resumes_without_loss_or_duplicates(lm, tmp_path, cut):
    cfg = ExtractConfig(num_samples=5, seed=0, max_new_tokens=6, batch_size=2, progress=False)
    full = sample(lm, cfg, tmp_path / "full")
    d = tmp_path / "torn"
    d.mkdir()
    good = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in full[:3])
    if cut == "mid_json":
        tail = b'{"id": 3, "seed": 0, "text": "Call 555-01'
    elif cut == "mid_utf8":
        tail = b'{"id": 3, "seed": 0, "text": "caf' + "é😀".encode()[:-2]
    else:  # a complete last record missing only its newline is kept
        good = good[:-1]
        tail = b""
    (d / "generated.jsonl").write_bytes(good + tail)
    rows = sample(lm, cfg, d)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["token_ids"] for r in rows] == [r["token_ids"] for r in full]  # regenerated with their own seeds
    on_disk = _lines(d / "generated.jsonl")
    assert [r["id"] for r in on_disk] == [0, 1, 2, 3, 4]


def test_p07_corrupt_line_in_the_middle_stops_with_the_line_number(lm, tmp_path):
    cfg = ExtractConfig(num_samples=4, seed=0, max_new_tokens=4, batch_size=2, progress=False)
    full = sample(lm, cfg, tmp_path / "full")
    lines = [json.dumps(r) for r in full]
    lines[1] = '{"id": 1, "tok'
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "generated.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(LlmMiaError, match="line 2"):
        sample(lm, cfg, tmp_path / "bad")


def test_resume_refuses_samples_of_another_run(lm, tmp_path):
    sample(lm, ExtractConfig(num_samples=2, seed=0, max_new_tokens=4, progress=False), tmp_path)
    with pytest.raises(LlmMiaError, match="another run"):
        sample(lm, ExtractConfig(num_samples=2, seed=1, max_new_tokens=4, progress=False), tmp_path)


def test_length_longer_than_context_is_an_error(lm, tmp_path):
    with pytest.raises(LlmMiaError, match="context"):
        sample(lm, ExtractConfig(num_samples=1, max_new_tokens=10_000, progress=False), tmp_path)


def test_char_span_of_the_longest_match():
    from llm_mia.extract import _char_span

    assert _char_span("hello brave world", "brave", "hello ") == [6, 11]
    # a boundary inside a character (byte-level BPE): the decoded prefix is off, found by search
    assert _char_span("é brave", "brave", "\ufffd\ufffd\ufffd") == [2, 7]
    assert _char_span("abc", "zzz", "") is None and _char_span("abc", "", "") is None


def test_extract_records_the_match_span_in_samples_and_top(lm, tiny_tokenizer, tmp_path):
    from llm_mia.extract import extract

    cfg = ExtractConfig(num_samples=6, seed=1, max_new_tokens=12, top_n=3, progress=False)
    # the corpus is made of the samples' own first halves: every sample has a known match
    gen = sample(lm, cfg, tmp_path / "pre")
    train = [tiny_tokenizer.decode(r["token_ids"][:6]) for r in gen]
    extract(lm, tmp_path / "pre", train_texts=train, cfg=cfg)
    rows = _lines(tmp_path / "pre" / "samples.jsonl")
    assert any(r["match_span"] for r in rows)
    for r in rows:
        if r["longest_match_tokens"]:
            s, e = r["match_span"]
            assert r["text"][s:e] == r["longest_match_text"]
            assert r["longest_match_tokens"] >= 1
    for t in _lines(tmp_path / "pre" / "top.jsonl"):
        assert t["match_span"] == next(r["match_span"] for r in rows if r["id"] == t["id"])
