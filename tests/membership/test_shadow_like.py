"""Shadows like the target (llm_mia.membership.shadow, ``like=``): a LoRA target's shadows are LoRA adapters
of the same base with the same rank and targets and the target's steps; a defence's shadows train with it."""

from __future__ import annotations

import pytest

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.shadow import recipe_like, train_shadows
from llm_mia.models.tokenizer import train_bpe_tokenizer
from llm_mia.training.config import LoraSpec
from llm_mia.training.train import train_model
from tests.conftest import distinct_docs, make_tiny_gpt2


@pytest.fixture(scope="module")
def lora_case(tmp_path_factory):
    """A tiny base, a LoRA target of it (r 4, c_attn only, 3 steps) and a population."""
    d = tmp_path_factory.mktemp("like")
    docs = distinct_docs(12, sentences=2, seed=3)
    tok = train_bpe_tokenizer(docs, vocab_size=300, min_frequency=1)
    make_tiny_gpt2(len(tok), seed=0).save_pretrained(d / "base")
    tok.save_pretrained(d / "base")
    io.write_jsonl(d / "corpus" / "train.jsonl", [{"text": t} for t in docs[:6]])
    io.write_jsonl(d / "corpus" / "heldout.jsonl", [{"text": t} for t in docs[6:]])
    train_model(d / "corpus", d / "target", base=str(d / "base"), preset="tiny", max_steps=3, progress=False,
                lora=LoraSpec(r=4, alpha=8.0, target_modules=("c_attn",)))
    io.write_jsonl(d / "pop.jsonl", [{"text": t} for t in docs])
    return d


def test_lora_target_gives_lora_shadows_of_the_same_base(lora_case):
    d = lora_case
    r = recipe_like(d / "target")
    assert r["base"] == str(d / "base") and r["tokenizer_from"] is None and r["max_steps"] == 3
    assert r["lora"] == LoraSpec(r=4, alpha=8.0, dropout=0.0, target_modules=("c_attn",))
    train_shadows(d / "pop.jsonl", d / "sh", n_models=2, like=d / "target", progress=False,
                  train_options={"defense": "goldfish"})
    meta = io.read_json(d / "sh" / "membership.json")
    assert meta["recipe"]["lora"]["r"] == 4 and meta["recipe"]["train_options"] == {"defense": "goldfish"}
    for k in ("model-00", "model-01"):
        rec = io.read_json(d / "sh" / k / "recipe.json")
        assert rec["base"] == str(d / "base") and rec["steps"] == 3 and rec["defense"] == "goldfish"
        assert rec["lora"]["r"] == 4 and rec["lora"]["target_modules"] == ["c_attn"]
        assert (d / "sh" / k / "adapter_config.json").is_file()


def test_like_refuses_a_second_recipe_and_a_foreign_model(lora_case, tmp_path):
    d = lora_case
    with pytest.raises(LlmMiaError, match="--like TARGET takes"):
        train_shadows(d / "pop.jsonl", tmp_path / "a", n_models=2, like=d / "target", base=str(d / "base"))
    with pytest.raises(LlmMiaError, match="no recipe.json"):
        train_shadows(d / "pop.jsonl", tmp_path / "b", n_models=2, like=d / "base")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
