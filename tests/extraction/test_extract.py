"""Extraction: resumable sample shards (case P07) and seeds that do not depend on batching."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.extraction.extract import STRATEGIES, ExtractConfig, sample, shard_indices
from llm_mia.models.hf import from_objects


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
    from llm_mia.extraction.extract import TEMPERATURE_DECAY, strategy_seed
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

    from llm_mia.extraction.extract import _score_rows, _verify_and_rank

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
    from llm_mia.extraction.extract import _char_span

    assert _char_span("hello brave world", "brave", "hello ") == [6, 11]
    # a boundary inside a character (byte-level BPE): the decoded prefix is off, found by search
    assert _char_span("é brave", "brave", "\ufffd\ufffd\ufffd") == [2, 7]
    assert _char_span("abc", "zzz", "") is None and _char_span("abc", "", "") is None


def test_extract_records_the_match_span_in_samples_and_top(lm, tiny_tokenizer, tmp_path):
    from llm_mia.extraction.extract import extract

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


# ------------------------------------------------------------------ issue 15 item 9

def test_resume_refuses_a_folder_made_by_another_model_or_tokenizer(lm, tiny_tokenizer, tmp_path):
    """A retrained model (same architecture, other weights) or another tokenizer resuming a folder is
    a one-line error, and the folder's shard is left as it was."""
    import copy

    from conftest import make_tiny_gpt2

    from llm_mia.extraction.extract import model_fingerprint

    cfg = ExtractConfig(num_samples=3, seed=0, max_new_tokens=4, progress=False, resume=True)
    sample(lm, cfg, tmp_path)
    before = (tmp_path / SHARD).read_bytes()
    other = from_objects(make_tiny_gpt2(len(tiny_tokenizer), seed=7), tiny_tokenizer)
    with pytest.raises(LlmMiaError, match="holds samples of another model") as e:
        sample(other, replace(cfg, num_samples=5), tmp_path)
    assert "\n" not in str(e.value) and "use another --out" in str(e.value)
    tok2 = copy.deepcopy(tiny_tokenizer)
    tok2.add_tokens(["zzqqxx"])
    with pytest.raises(LlmMiaError, match="holds samples of another tokenizer"):
        sample(from_objects(lm.model, tok2), replace(cfg, num_samples=5), tmp_path)
    assert (tmp_path / SHARD).read_bytes() == before
    # the same model and tokenizer resume; every record carries the fingerprint
    fp = model_fingerprint(lm)
    assert fp["weights_digest"] == "tensors" and model_fingerprint(from_objects(lm.model, tiny_tokenizer)) == fp
    rows = sample(lm, replace(cfg, num_samples=5), tmp_path)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert all({k: r[k] for k in fp} == fp for r in _lines(tmp_path / SHARD))
    # shards of the old layout (top-level shards/, no model recorded) are refused, not ignored
    (tmp_path / "old" / "shards").mkdir(parents=True)
    (tmp_path / "old" / "shards" / "top-k.0-of-1.jsonl").write_text('{"index": 0, "seed": 0, "token_ids": [1]}\n')
    with pytest.raises(LlmMiaError, match="older llm-mia that did not record the model"):
        sample(lm, cfg, tmp_path / "old")


def test_fingerprint_of_a_model_folder_digests_its_weight_files(tiny_model, tiny_tokenizer, tmp_path):
    from conftest import make_tiny_gpt2

    from llm_mia.extraction.extract import model_fingerprint
    from llm_mia.models.loading import load_model

    tiny_model.save_pretrained(tmp_path / "a")
    tiny_tokenizer.save_pretrained(tmp_path / "a")
    make_tiny_gpt2(len(tiny_tokenizer), seed=7).save_pretrained(tmp_path / "b")
    tiny_tokenizer.save_pretrained(tmp_path / "b")
    fa = model_fingerprint(load_model(str(tmp_path / "a"), device="cpu"))
    fb = model_fingerprint(load_model(str(tmp_path / "b"), device="cpu"))
    assert fa["weights_digest"] == fb["weights_digest"] == "files"
    assert fa["weights_sha256"] != fb["weights_sha256"] and fa["tokenizer_sha256"] == fb["tokenizer_sha256"]
    assert model_fingerprint(load_model(str(tmp_path / "a"), device="cpu")) == fa


@pytest.mark.parametrize("kw, match", [
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size"),
    ({"top_k": 0}, "top_k"),
    ({"top_n": 0}, "top_n"),
    ({"memorized_min_tokens": 0}, "memorized_min_tokens"),
    ({"num_samples": 2.5}, "num_samples"),
    ({"prompt_tokens": (0, 3)}, "prompt span bounds"),
    ({"strategies": ("nucleus",)}, "unknown strategy nucleus"),
])
def test_options_are_checked_before_any_folder(lm, tmp_path, kw, match):
    from llm_mia.extraction.extract import extract

    with pytest.raises(LlmMiaError, match=match):
        extract(lm, tmp_path / "x", cfg=ExtractConfig(progress=False, **kw))
    assert not (tmp_path / "x").exists()


def test_sampling_memory_stays_bounded_for_a_huge_num_samples(lm, tmp_path, monkeypatch):
    """--num-samples 10^8 used to build index lists of several GB before the first batch: now the
    first batch starts with a bitset of the finished indices (12.5 MB) and lazy index ranges."""
    import tracemalloc

    class FirstBatch(Exception):
        pass

    def stop(*a, **k):
        raise FirstBatch

    monkeypatch.setattr(type(lm), "generate", stop)  # the model contract's generate: the first batch
    tracemalloc.start()
    try:
        with pytest.raises(FirstBatch):
            sample(lm, ExtractConfig(num_samples=10**8, max_new_tokens=4, progress=False), tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak  # a list of 10^8 indices alone is 800 MB


def test_one_token_sample_found_in_training_is_not_memorized(lm, tmp_path):
    from llm_mia.extraction.extract import (
        WHOLE_SAMPLE_MIN_TOKENS,
        _score_rows,
        _verify_and_rank,
        is_memorized,
    )

    assert WHOLE_SAMPLE_MIN_TOKENS == 8
    assert not is_memorized(1, 1, 50) and not is_memorized(7, 7, 50) and is_memorized(8, 8, 50)
    assert is_memorized(50, 256, 50) and not is_memorized(49, 256, 50) and is_memorized(3, 3, 2)
    tok = lm.tokenizer
    train = ["the quick brown fox jumps over the lazy dog while the river keeps flowing past the mill"]
    ids = tok(train[0])["input_ids"]
    gen = [{"strategy": "top-k", "index": 0, "prompt_ids": [lm.bos_id], "token_ids": ids[:1]},
           {"strategy": "top-k", "index": 1, "prompt_ids": [lm.bos_id], "token_ids": ids[2:12]}]
    cfg = ExtractConfig(num_samples=2, top_n=5, progress=False)
    sigs = ["loss", "zlib"]
    _verify_and_rank(lm, gen, _score_rows(lm, None, gen, cfg, sigs, None), tmp_path, train, [], cfg, sigs)
    rows = _lines(tmp_path / "private" / "samples.jsonl")
    assert [(r["longest_match_tokens"], r["memorized"]) for r in rows] == [(1, False), (10, True)]


def test_samples_and_top_are_redacted_unless_show_secrets(lm, tmp_path):
    """A sample holding a planted secret and a phone number: the shareable files hide both (the
    reports' redaction), keep no token ids, and name the secret by id; private/ holds the clear rows."""
    from llm_mia.data.secrets import Secret
    from llm_mia.extraction.extract import _score_rows, _verify_and_rank
    from llm_mia.report.markdown import redact

    sec = Secret(id="canary-r4-0", kind="canary", text="The PIN of Ann Lee is 4821.", prefix="The PIN of Ann Lee is ",
                 secret="4821", suffix=".", format="{d4}", space_size=10**4, count=4)
    tok = lm.tokenizer
    text = "The PIN of Ann Lee is 4821. Call (415) 555-0142 today"
    gen = [{"strategy": "top-k", "index": 0, "prompt_ids": [lm.bos_id], "token_ids": tok(text)["input_ids"]}]
    sigs = ["loss"]
    for show in (False, True):
        cfg = ExtractConfig(num_samples=1, top_n=1, progress=False, show_secrets=show)
        out = tmp_path / str(show)
        _verify_and_rank(lm, gen, _score_rows(lm, None, gen, cfg, sigs, None), out, [text], [sec], cfg, sigs)
        clear, shown = _lines(out / "private" / "samples.jsonl")[0], _lines(out / "samples.jsonl")[0]
        top = _lines(out / "top.jsonl")[0]
        assert tok.decode(clear["token_ids"]) == clear["text"] and "4821" in clear["text"]
        assert shown["secrets"] == ["canary-r4-0"]
        if show:
            assert shown == clear and top["text"] == clear["text"]
            continue
        assert "4821" not in shown["text"] and "555-0142" not in shown["text"] and redact("4821") in shown["text"]
        assert "4821" not in top["text"] and "token_ids" not in shown
        assert all(h["value"] == redact(c["value"]) for h, c in zip(shown["pii"], clear["pii"]))


def test_near_verbatim_samples_counted_beside_verbatim(lm, tmp_path):
    """A sample one substitution away from a 20-token training window is near-verbatim (similarity
    19 / 20 by hand) but not verbatim; a verbatim one is both; near_memorized_total counts both."""
    from llm_mia.extraction.extract import _score_rows, _verify_and_rank
    from llm_mia.report.markdown import _mem_cell

    tok = lm.tokenizer
    train = ["the quick brown fox jumps over the lazy dog while the river keeps flowing past the old mill " * 2]
    span = tok(train[0])["input_ids"][:20]
    near = list(span)
    near[10] = tok("zebra")["input_ids"][0]
    assert near[10] not in span
    other = tok("zebra quantum violet 42 orbit nebula copper lantern whisper 7 meadow granite echo")["input_ids"]
    bos = lm.bos_id
    gen = [{"strategy": "top-k", "index": i, "prompt_ids": [bos], "token_ids": t} for i, t in enumerate([span, near, other])]
    cfg = ExtractConfig(num_samples=3, memorized_min_tokens=20, near_window=20, near_similarity=0.9, top_n=5,
                        dedup=False, progress=False)
    sigs = ["loss", "zlib", "lowercase", "window"]
    s = _verify_and_rank(lm, gen, _score_rows(lm, None, gen, cfg, sigs, None), tmp_path, train, [], cfg, sigs)
    rows = [json.loads(line) for line in (tmp_path / "private" / "samples.jsonl").read_text().splitlines()]
    assert [r["memorized"] for r in rows] == [True, False, False]
    assert [r["near_memorized"] for r in rows] == [True, True, False]
    assert rows[0]["near_similarity"] == 1.0 and rows[1]["near_similarity"] == pytest.approx(19 / 20)
    assert rows[2]["near_similarity"] < 0.9  # unrelated text
    assert s["memorized_total"] == 1 and s["near_memorized_total"] == 2
    cell = s["carlini_table"]["top-k"]["perplexity"]
    assert (cell["memorized"], cell["near_memorized"]) == (1, 2)
    assert _mem_cell(cell) == "1 / 2" and _mem_cell({"memorized": 3}) == 3
    with pytest.raises(LlmMiaError, match="similarity threshold"):
        ExtractConfig(near_similarity=0.0)


def test_near_verbatim_findings_are_redacted_like_verbatim_ones():
    """A near-memorized top sample holding a planted value: the shareable row and the report's
    extraction section hide the value, as for a verbatim one, and keep the near-verbatim tag."""
    from llm_mia.data.secrets import Secret
    from llm_mia.extraction.extract import redact_row
    from llm_mia.report.markdown import _extraction_section, redact_text

    s = Secret(id="c", kind="canary", text="the locker combination of Edna Pike is 73-19-55", secret="73-19-55",
               prefix="the locker combination of Edna Pike is ", suffix="", format="{d2}-{d2}-{d2}",
               space_size=10**6, count=30)
    text = "notes: the locker combination of Edna Pike is 73-19-55 and the door code"
    rows = [{"ranking": "perplexity", "rank": 1, "id": k, "score": 1.0 - k, "text": text, "memorized": mem,
             "near_memorized": True, "near_similarity": sim, "longest_match_tokens": 30, "match_span": None,
             "secrets": ["c"], "token_ids": [1, 2]} for k, (mem, sim) in enumerate(((True, 1.0), (False, 0.93)))]
    for r in rows:
        shared = redact_row(r, [s])
        assert "73-19-55" not in shared["text"] and "token_ids" not in shared
        assert shared["near_memorized"] is True and shared["near_similarity"] == r["near_similarity"]
    ext = {"num_samples": 2, "max_new_tokens": 24, "seed": 0, "unique_samples": 2, "memorized_total": 1,
           "near_memorized_total": 2, "near_similarity": 0.9, "near_window": 50, "top_n": 2, "rankings": {
               "perplexity": {"signal": "loss", "top_n": 2, "memorized": 1, "near_memorized": 2, "secrets": ["c"],
                              "pii_hits": 0}}}
    md = "\n".join(_extraction_section(ext, {"settings": {"memorized_min_tokens": 50}}, rows,
                                       lambda t: redact_text(t, [s])))
    assert "73-19-55" not in md and "(memorized," in md and "(near-verbatim," in md
    assert "1 unique samples hold a verbatim training span of at least 50 tokens, 2 a near-verbatim one" in md


def test_extraction_scores_each_sample_once_and_matches_two_passes(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """The target's scoring pass reads the generation pass's log-probs (no forward pass over the
    samples), the lowercase view runs only on samples whose lowercase ids differ, and every ranking
    score equals today's two-pass values (a fresh model, every view run: score_mask disables reuse), 1e-4."""
    import numpy as np

    from llm_mia.extraction.extract import RANKINGS, _score_rows
    from llm_mia.membership.scoring import score
    from llm_mia.models.hf import LoadedModel

    lm = from_objects(tiny_model, tiny_tokenizer)
    cfg = ExtractConfig(num_samples=6, seed=2, max_new_tokens=10, batch_size=3, progress=False,
                        strategies=("top-k", "temperature-decay"))
    gen = sample(lm, cfg, tmp_path / "x")
    assert len(lm._gen_cache) == len(gen) == 12
    scored_seqs = []
    orig = LoadedModel._compute

    def spy(self, sequences, *a):
        scored_seqs.extend(list(s) for s in sequences)
        return orig(self, sequences, *a)

    monkeypatch.setattr(LoadedModel, "_compute", spy)
    sigs = [s for s in RANKINGS.values() if s != "reference"]
    once = _score_rows(lm, None, gen, cfg, sigs, None)
    assert lm.gen_reused == 12 and not lm._gen_cache
    lm.generate([[lm.bos_id]], max_new_tokens=3, seeds=[1], keep_logprobs=True)
    assert len(lm._gen_cache) == 1
    lm.forget_generations()
    assert not lm._gen_cache
    bos = lm.bos_id
    texts = [r["text"] for r in once]
    changed = [[bos] + tiny_tokenizer(t.lower())["input_ids"] for t, g in zip(texts, gen)
               if [bos] + tiny_tokenizer(t.lower())["input_ids"] != g["prompt_ids"] + g["token_ids"]]
    assert sorted(scored_seqs) == sorted(changed)  # only the lowercase views that differ ran (here: all)
    monkeypatch.setattr(LoadedModel, "_compute", orig)
    fresh = from_objects(tiny_model, tiny_tokenizer)
    ids = [g["prompt_ids"] + g["token_ids"] for g in gen]
    two = score(fresh, texts, ids=ids, context_lens=[len(g["prompt_ids"]) for g in gen], signals=sigs,
                score_mask=[[True] * len(x) for x in ids]).rows
    assert fresh.gen_reused == 0
    for a, b in zip(once, two):
        for s in sigs:
            np.testing.assert_allclose(a["scores"][s], b["scores"][s], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a["perplexity"], b["perplexity"], rtol=1e-4)


def test_tensor_digest_computed_once_until_a_weight_changes(tiny_tokenizer, monkeypatch):
    """An in-memory model's weights are hashed once, not at every extract() call; a weight changed in
    place or replaced gives a new digest (each checked against the uncached hash of the tensors as they are)."""
    import torch
    from conftest import make_tiny_gpt2

    import llm_mia.extraction.extract as ex

    model = make_tiny_gpt2(len(tiny_tokenizer))
    fresh = ex._hash_tensors
    assert fresh(model) == fresh(make_tiny_gpt2(len(tiny_tokenizer))) != fresh(make_tiny_gpt2(len(tiny_tokenizer), seed=1))
    calls = []
    monkeypatch.setattr(ex, "_hash_tensors", lambda m: calls.append(1) or fresh(m))
    first = ex._tensors_sha256(model)
    assert ex._tensors_sha256(model) == first == fresh(model) and len(calls) == 1
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # in place: same storage, new version
    second = ex._tensors_sha256(model)
    assert second != first and second == fresh(model) and len(calls) == 2
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 2)  # replaced
    third = ex._tensors_sha256(model)
    assert third not in (first, second) and third == fresh(model) and len(calls) == 3

