"""The vLLM engine on a tiny Llama with an auto-BOS (Metaspace) tokenizer: the start-token rule of
the HF path holds (one BOS, every text token scored) and the scores match the HF engine."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vLLM engine tests run in the vLLM environment (.ci/vllm-env)")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from llm_mia.membership.scoring import score  # noqa: E402
from llm_mia.models.loading import load_model  # noqa: E402
from tests.models.test_model_contract import SENTENCES, metaspace_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    tok = metaspace_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2)).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    eng = load_model(str(d), engine="vllm", crosscheck_texts=SENTENCES)
    yield eng
    eng.close()


def test_llama_auto_bos_scores_match_hf(llama):
    assert llama.crosscheck["passed"] and llama.crosscheck["n_texts"] == len(SENTENCES)
    ids, ctx = llama.encode(SENTENCES)
    assert ctx == 1 and all(x[0] == 1 and x.count(1) == 1 for x in ids)  # one BOS, never doubled
    got = score(llama, SENTENCES, signals=["loss", "zlib"])
    want = score(llama.hf, SENTENCES, signals=["loss", "zlib"])
    for a, b in zip(got.rows, want.rows):
        assert a["n_scored_tokens"] == b["n_scored_tokens"] == len(llama.tokenizer(SENTENCES[a["id"]])["input_ids"]) - 1
        assert a["nll"] == pytest.approx(b["nll"], abs=1e-4)


def test_llama_generation_stops_at_eos_and_is_seeded(llama):
    a = llama.generate([[1]] * 4, max_new_tokens=12, seeds=[5, 6, 7, 8])
    b = llama.generate([[1]] * 4, max_new_tokens=12, seeds=[5, 6, 7, 8])
    assert [g.new_ids for g in a] == [g.new_ids for g in b]
    assert all(2 not in g.new_ids and len(g.new_ids) <= 12 for g in a)  # new ids stop before the EOS
