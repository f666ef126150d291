"""Chat-model extraction: the chat and divergence strategies (Nasr et al. 2023), local and endpoint."""

from __future__ import annotations

import copy
import json

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.extraction import chat as chat_mod
from llm_mia.extraction.chat import divergence_point, load_chat_prompts, user_turns
from llm_mia.extraction.extract import ExtractConfig, extract, sample, strategy_seed
from llm_mia.models.generation import Generated
from llm_mia.models.hf import from_objects
from llm_mia.models.tokenizer import text_ids
from tests.conftest import run_cli
from tests.models.test_endpoint import StepServer

TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture
def chat_tok(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)  # the session tokenizer is never mutated
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture
def chat_lm(tiny_model, chat_tok):
    return from_objects(tiny_model, chat_tok)


@pytest.mark.parametrize("text,word,want", [
    ("poem poem poem Hello world", "poem", 15),
    ("Poem, POEM. poem! x", "poem", 18),
    ("poems are nice", "poem", 0),
    ("Hello poem", "poem", 0),
    ("poem poem poem", "poem", 14),
    (" poem poemX poem", "poem", 6),
    ("", "poem", 0),
    ("  , ", "poem", 0),
])
def test_divergence_point_hand_cases(text, word, want):
    assert divergence_point(text, word) == want


def test_chat_and_divergence_render_the_template_and_keep_lengths(chat_lm, chat_tok, tmp_path):
    cfg = ExtractConfig(num_samples=3, seed=1, max_new_tokens=8, batch_size=2, strategies=("chat", "divergence"),
                        progress=False)
    rows = sample(chat_lm, cfg, tmp_path / "out")
    prompts = load_chat_prompts()
    assert [(r["strategy"], r["index"]) for r in rows] == [("chat", i) for i in range(3)] + [("divergence", i) for i in range(3)]
    for r in rows:
        seed = strategy_seed(1, r["strategy"], r["index"])
        user, _ = user_turns(r["strategy"], [seed], prompts)[0]
        rendered = f"<user>{user}\n<assistant>"
        head = [chat_lm.bos_id] + text_ids(chat_tok, rendered)
        assert r["prompt_ids"][:len(head)] == head
        reply = r["prompt_ids"][len(head):] + r["token_ids"]
        assert len(reply) == 8  # EOS forbidden: every reply has max_new_tokens
        if r["strategy"] == "chat":
            assert reply == r["token_ids"]
        else:
            assert r["divergence_token"] == len(reply) - len(r["token_ids"])


def test_divergence_verifies_only_what_follows_the_repetition(chat_lm, chat_tok, tmp_path, monkeypatch):
    said = "poem poem poem Hello world again"

    def fake(model, texts, *, max_new_tokens, seeds, top_k):
        ids = text_ids(chat_tok, said)
        assert len(ids) <= max_new_tokens
        return [Generated(prompt=[model.bos_id], new_ids=ids) for _ in texts]

    monkeypatch.setattr(chat_mod, "chat_generate", fake)
    monkeypatch.setattr(chat_mod, "user_turns", lambda strategy, seeds, prompts: [("repeat", "poem")] * len(seeds))
    cfg = ExtractConfig(num_samples=1, seed=0, max_new_tokens=40, strategies=("divergence",), progress=False)
    rows = sample(chat_lm, cfg, tmp_path / "out")
    assert chat_lm.decode(rows[0]["token_ids"]).strip() == "Hello world again"
    assert chat_lm.decode(rows[0]["prompt_ids"][1:]).strip() == "poem poem poem"
    summary = extract(chat_lm, tmp_path / "v", train_texts=["Hello world again and again"], cfg=cfg)
    assert summary is not None  # verified like any other sample


def test_model_without_chat_template_is_refused_before_any_sample(tiny_model, tiny_tokenizer, tmp_path):
    lm = from_objects(tiny_model, tiny_tokenizer)
    for s in ("chat", "divergence"):
        with pytest.raises(LlmMiaError, match="no chat template") as e:
            sample(lm, ExtractConfig(num_samples=2, max_new_tokens=4, strategies=(s,), progress=False), tmp_path / s)
        assert "\n" not in str(e.value)
        assert not (tmp_path / s / "private" / "shards").exists()


def _chat_reply(content: str) -> tuple[int, str, bytes]:
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "step",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    return 200, "application/json", json.dumps(body).encode()


def test_endpoint_chat_api_sends_the_user_turn_and_counts_queries(tiny_tokenizer, tmp_path):
    from llm_mia.models.loading import load_model

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    server = StepServer()
    try:
        m = load_model(f"openai:{server.url}", model_args=f"tokenizer={tmp_path / 'tok'},api=chat,concurrency=1")
        words = [w for _, w in user_turns("divergence", [strategy_seed(0, "divergence", i) for i in range(2)],
                                           load_chat_prompts())]
        server.raw = [_chat_reply(f"{words[0]} {words[0]} Hello there"), _chat_reply(f"{words[1]}, yes")]
        cfg = ExtractConfig(num_samples=2, seed=0, max_new_tokens=40, strategies=("divergence",),
                            progress=False)
        rows = sample(m, cfg, tmp_path / "out")
        posts = [b for p, b in server.seen if p.endswith("/chat/completions")]
        assert len(posts) == 2 and m.usage.queries == 2
        assert all(b["messages"][0]["role"] == "user" and "forever" in b["messages"][0]["content"] for b in posts)
        assert all(b["max_tokens"] == 40 for b in posts)
        assert [m.decode(r["token_ids"]).strip() for r in rows] == ["Hello there", "yes"]
        m.max_queries = 2  # a third query would pass the budget: one line, nothing sent
        with pytest.raises(LlmMiaError, match="--max-queries"):
            sample(m, ExtractConfig(num_samples=1, seed=0, max_new_tokens=40, strategies=("chat",),
                                    progress=False), tmp_path / "out2")
        assert len([p for p, _ in server.seen if p.endswith("/chat/completions")]) == 2
    finally:
        server.close()


def test_extract_help_lists_chat_strategies(capsys):
    code, out, _ = run_cli(["extract", "--help"], capsys)
    assert code == 0 and "chat" in out and "divergence" in out
