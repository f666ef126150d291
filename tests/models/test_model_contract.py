"""The model contract and its tokenizer conventions: auto-BOS (Llama/Metaspace), appended EOS,
several EOS ids, padded vocabulary rows, decode without clean-up, extraction compared by ids or text
decoded in context, extraction contexts, and the reference-is-target warning.
Cases T3-03, T3-08, T3-09, T2-10, BUG-21 (a)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llm_mia.core.errors import LlmMiaWarning
from llm_mia.data.secrets import Secret
from llm_mia.membership.scoring import score, score_texts
from llm_mia.models.contract import LanguageModel
from llm_mia.models.hf import from_objects
from llm_mia.models.output_modes import ApiMode
from llm_mia.serving.output_limits import ApiView
from tests.conftest import make_tiny_gpt2

SENTENCES = ["the cat sat on the mat.", "my pin is 4821.", "the dog ate my homework.",
             "a bird in the hand.", "my pin is unknown to the cat."]


def metaspace_tokenizer(template: str = "<s> $A") -> PreTrainedTokenizerFast:
    """G3: BPE over Metaspace(prepend_scheme="first") with its decoder; <unk>, <s>, </s>; the
    post-processor ``template`` ("<s> $A": auto-BOS like Llama; "<s> $A </s>": appends EOS too)."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tk.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(vocab_size=120, min_frequency=1,
                                                              special_tokens=["<unk>", "<s>", "</s>"],
                                                              show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 1), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.model_max_length = 10**9
    return tok


def g1(vocab: int, seed: int = 0, n_positions: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=n_positions, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def fit(model, seqs, steps=150, lr=1e-2):
    n = max(map(len, seqs))
    x = torch.tensor([s + [0] * (n - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss)


def manual_nll(model, ids):
    """Mean NLL (nats) of ids[1:] given the prefix, by one plain forward pass."""
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return float(-sum(lp[i - 1, ids[i]] for i in range(1, len(ids))) / (len(ids) - 1))


def argmax_loop(model, prompt, n):
    """Greedy continuation by a hand-written argmax loop (no generate)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_loaded_model_and_api_view_implement_the_contract(tiny_model, tiny_tokenizer):
    lm = from_objects(tiny_model, tiny_tokenizer)
    assert isinstance(lm, LanguageModel) and isinstance(ApiView.of(lm, ApiMode("topk", k=3)), LanguageModel)


def test_t3_03_appended_eos_not_scored():
    tok = metaspace_tokenizer("<s> $A </s>")
    texts = ["the cat sat on the mat.", "my pin is 4821."]
    full = tok(texts[0])["input_ids"]
    assert full[0] == tok.bos_token_id and full[-1] == tok.eos_token_id  # the template appends </s>
    model = g1(len(tok))
    res = score(from_objects(model, tok), texts, signals=["loss"])
    for t, r in zip(texts, res.rows):
        own = [tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"]  # [BOS] + the text's tokens
        assert r["n_scored_tokens"] == len(own) - 1
        assert r["nll"] == pytest.approx(manual_nll(model, own), abs=1e-5)


def test_llama_metaspace_auto_bos_scores_every_text_token():
    tok = metaspace_tokenizer()
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2)).eval()
    lm = from_objects(llama, tok)
    texts = ["the dog ate my homework.", "a bird"]
    ids, ctx = lm.encode(texts)
    assert ctx == 1 and all(x[0] == 1 and x.count(1) == 1 for x in ids)  # one BOS, never doubled
    assert lm.encode(texts, prepend_bos=True)[0] == ids  # prepend_bos adds nothing to an auto-BOS tokenizer
    res = score(lm, texts, signals=["loss"])
    for t, r in zip(texts, res.rows):
        own = [1] + tok(t, add_special_tokens=False)["input_ids"]
        assert r["n_scored_tokens"] == len(own) - 1
        assert r["nll"] == pytest.approx(manual_nll(llama, own), abs=1e-5)
    # generation stops at any of several EOS ids (</s> and the generation config's extra id)
    llama.generation_config.eos_token_id = [2, 5]
    assert lm.eos_ids == [2, 5]
    free = argmax_loop(llama, [1, 7], 12)
    got = lm.generate([[1, 7]], max_new_tokens=12, greedy=True)[0].new_ids
    stop = next((k for k, t in enumerate(free) if t in (2, 5)), len(free))
    assert got == free[:stop]


@pytest.fixture(scope="module")
def metaspace_pin_model():
    """T3-08: G1 fitted on "my pin is 4821." with the G3 tokenizer (150 Adam steps)."""
    tok = metaspace_tokenizer()
    seq = [1] + tok("my pin is 4821.", add_special_tokens=False)["input_ids"] + [2]
    model, loss = fit(g1(len(tok)), [seq])
    assert loss < 0.05
    return from_objects(model, tok)


PIN = Secret(id="pin", kind="canary", text="my pin is 4821.", prefix="my pin is ", secret="4821", suffix=".",
             format="{d4}", space_size=10_000, count=1)


def test_t3_08_greedy_and_beam_extraction_with_metaspace(metaspace_pin_model):
    from llm_mia.exposure.secrets import decode_extracted

    lm, tok = metaspace_pin_model, metaspace_pin_model.tokenizer
    whole = tok("my pin is 4821.", add_special_tokens=False)["input_ids"]
    prompt = [1] + tok("my pin is", add_special_tokens=False)["input_ids"]
    secret_tok = whole[len(prompt) - 1]
    assert tok.convert_ids_to_tokens(secret_tok).startswith("▁4821")
    new = argmax_loop(lm.model, prompt, 3)
    assert new[0] == secret_tok  # the hand loop: the model gives the secret back
    assert not tok.decode(new).startswith(" ")  # the fault: decode alone strips the space
    for beams in (1, 2):
        d = decode_extracted(lm, [PIN], num_beams=beams, contexts=("start",))[0]
        assert d["extracted"] and d["context"] == "start", d
        assert d["completion"].startswith(" 4821")


def test_extracted_secret_tried_in_each_context_and_named():
    """Issue: extracted secrets under-counted. The secret comes back after its training text but the
    start token followed by the prefix gives another continuation; the row names the context."""
    from llm_mia.exposure.secrets import decode_extracted

    tok = metaspace_tokenizer()
    doc = "the dog ate my homework. my pin is 4821."
    other = "my pin is unknown to the cat."
    seqs = [[1] + tok(t, add_special_tokens=False)["input_ids"] + [2] for t in (doc, other)]
    model, _ = fit(g1(len(tok), seed=1), seqs, steps=200)
    lm = from_objects(model, tok)
    secret = Secret(id="pin", kind="canary", text="my pin is 4821.", prefix="my pin is ", secret="4821", suffix=".",
                    format="{d4}", space_size=10_000, count=1)
    # the expected value, by hand: which contexts give the secret's first token back
    whole = tok(doc, add_special_tokens=False)["input_ids"]
    pin_tok = next(t for t in whole if tok.convert_ids_to_tokens(t).startswith("▁4821"))
    k = whole.index(pin_tok)
    prefix_ids = tok("my pin is", add_special_tokens=False)["input_ids"]
    by_hand = {"start": argmax_loop(model, [1] + prefix_ids, 1)[0] == pin_tok,
               "none": argmax_loop(model, prefix_ids, 1)[0] == pin_tok,
               "training": argmax_loop(model, [1] + whole[:k], 1)[0] == pin_tok}
    assert by_hand["training"] and not by_hand["start"], by_hand
    d = decode_extracted(lm, [secret], train_texts=[other, doc])[0]
    assert d["contexts_tried"] == ["start", "none", "training"]
    assert d["extracted"] and d["context"] == next(c for c in ("start", "none", "training") if by_hand[c])
    assert not decode_extracted(lm, [secret], contexts=("start",))[0]["extracted"]


def fixed_logit_gpt2(row: torch.Tensor, n_embd: int = 16) -> GPT2LMHeadModel:
    """G2: next-token logits exactly ``row`` at every position (ln_f.weight = 0, ln_f.bias = e_0).
    ``n_embd`` 64 for vLLM's CPU attention (it refuses a head size of 8)."""
    cfg = GPT2Config(n_layer=1, n_head=2, n_embd=n_embd, vocab_size=row.shape[0], n_positions=64,
                     tie_word_embeddings=False)
    m = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.zero_()
        m.transformer.ln_f.bias[0] = 1.0
        m.lm_head.weight.zero_()
        m.lm_head.weight[:, 0] = row
    return m


def test_t3_09_padded_vocabulary_rows_never_generated(tiny_tokenizer):
    n_tok = len(tiny_tokenizer)
    V = -(-n_tok // 64) * 64 + (64 if n_tok % 64 == 0 else 0)  # rounded up past the tokenizer
    g = torch.Generator().manual_seed(0)
    row = torch.zeros(V)
    row[:n_tok] = -3 + 2 * torch.rand(n_tok, generator=g)  # trained rows in [-3, -1], padded rows 0
    model = fixed_logit_gpt2(row)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=torch.tensor([[0, 5]])).logits[0, -1], row, atol=1e-5)
    lm = from_objects(model, tiny_tokenizer)
    gens = lm.generate([[0]] * 4, max_new_tokens=10, seeds=[1, 2, 3, 4], top_k=40)
    assert all(len(x.new_ids) == 10 and max(x.new_ids) < n_tok for x in gens)
    greedy = lm.generate([[0]], max_new_tokens=3, greedy=True)[0].new_ids
    assert greedy == [int(row[:n_tok].argmax())] * 3  # not the padded rows' logit 0
    beam = lm.generate([[0]], max_new_tokens=3, greedy=True, num_beams=2)[0].new_ids
    assert max(beam) < n_tok
    # control: without the limit, the sampler does draw padded ids (the test can fail)
    from llm_mia.models.generation import generate

    raw = generate(model, [[0]] * 4, max_new_tokens=10, pad_id=0, seeds=[1, 2, 3, 4], top_k=40)
    assert any(max(x.new_ids) >= n_tok for x in raw)


def test_t2_10_every_decode_passes_clean_up_false(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    from llm_mia.exposure.secrets import decode_extracted
    from llm_mia.extraction.extract import ExtractConfig, extract

    tok = copy.deepcopy(tiny_tokenizer)
    calls = []
    original = tok.decode

    def spy(*a, **k):
        calls.append(k.get("clean_up_tokenization_spaces", "missing"))
        return original(*a, **k)

    monkeypatch.setattr(tok, "decode", spy)
    lm = from_objects(tiny_model, tok)
    cfg = ExtractConfig(num_samples=3, strategies=("top-k",), max_new_tokens=8, top_n=3, progress=False)
    extract(lm, tmp_path / "e", train_texts=["Hello world. Bye. The quick brown fox."], cfg=cfg)
    secret = Secret(id="s", kind="canary", text="Call 555-0100 now!", prefix="Call ", secret="555-0100",
                    suffix=" now!", format="{d3}-{d4}", space_size=10**7, count=1)
    decode_extracted(lm, [secret], train_texts=["x. Call 555-0100 now!"])
    assert calls and all(c is False for c in calls), set(map(str, calls))


def test_bug_21a_reference_is_target_warns_and_is_left_out(tiny_model, tiny_tokenizer, tmp_path, capsys):
    lm = from_objects(tiny_model, tiny_tokenizer)
    texts = ["the cat sat", "a dog", "hello world"]
    for ref in (lm, from_objects(copy.deepcopy(tiny_model), tiny_tokenizer)):  # same object, identical weights
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            df = score_texts(lm, texts, reference=ref)
        assert (df["reference_diff"] == 0).all()
        assert any(issubclass(x.category, LlmMiaWarning) and "reference" in str(x.message) for x in w)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        score_texts(lm, texts, reference=from_objects(make_tiny_gpt2(len(tiny_tokenizer), seed=5), tiny_tokenizer))
    assert not [x for x in w if issubclass(x.category, LlmMiaWarning)]
    # CLI: a stderr line and the metrics file say so; the reference signals get no ROC
    from tests.conftest import run_cli

    tiny_model.save_pretrained(tmp_path / "D")
    tiny_tokenizer.save_pretrained(tmp_path / "D")
    rows = [{"text": t, "label": y} for t, y in zip(["alpha beta", "gamma delta", "the quick fox", "hello there",
                                                      "bye now", "one two"], [1, 1, 1, 0, 0, 0])]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, _, err = run_cli(["score", "--model", tmp_path / "D", "--reference", tmp_path / "D", "--input",
                            tmp_path / "in.jsonl", "--output", tmp_path / "o.jsonl", "--metrics", tmp_path / "m.json"],
                           capsys)
    assert code == 0 and "warning: the reference model is the target" in err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["warnings"] and "excluded" in m["signals"]["reference"] and "auc" in m["signals"]["loss"]
