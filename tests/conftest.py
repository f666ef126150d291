"""Shared fixtures: tiny models and tokenizers built in-process (no network, no hub)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llm_mia.models.tokenizer import train_bpe_tokenizer

TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Return a new list containing all items from the iterable in ascending order.",
    "my social security number is 123-45-6789. Call 555-0100 now!",
    "Hello world. Bye. İSTANBUL istanbul 😀 héllo wörld",
    "def f(x):\n    return x + 1\n",
    "Alpha beta gamma delta epsilon. 0123456789 abcdef ABCDEF",
]

# Tiny models run faster on one thread than on two contended ones (12 ms per layer norm measured
# on the loaded 2-core CI machine with two threads).
torch.set_num_threads(1)

# S1 "step model" constants (scoring-cases.md): likely step and other step log-probs.
LIKELY = -math.log(math.e**2 + 4) + 2  # -0.432653
UNLIKELY = LIKELY - 2  # -2.432653


class StepModel(torch.nn.Module):
    """S1: vocabulary of 5 ids; logits after id a are 2.0 for (a+1) mod 5 and 0 elsewhere.

    Context-free, so every log-prob is known exactly. Mimics the HF causal-LM call signature.
    """

    def __init__(self, max_context: int | None = None):
        super().__init__()
        table = torch.zeros(5, 5)
        for a in range(5):
            table[a, (a + 1) % 5] = 2.0
        self.register_buffer("table", table)
        self.max_context = max_context

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kw):
        if self.max_context is not None and input_ids.shape[1] > self.max_context:
            raise IndexError("input longer than the maximum context")

        class Out:
            pass

        out = Out()
        out.logits = self.table[input_ids]
        return out


@pytest.fixture
def step_model():
    return StepModel()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_bpe_tokenizer(TOKENIZER_TEXT, vocab_size=300, min_frequency=1)


def make_tiny_gpt2(vocab_size: int, n_positions: int = 128, seed: int = 0, n_embd: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=n_embd, vocab_size=vocab_size, n_positions=n_positions,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_tiny_gpt2(len(tiny_tokenizer))


@pytest.fixture
def s2_model():
    """S2 of scoring-cases.md: GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    return GPT2LMHeadModel(cfg).eval()


def _fit(texts, tok, *, steps, seed):
    """A tiny GPT-2 fitted in-process on ``texts`` (full batch, fp32): fast, unlike the bf16 trainer."""
    model = make_tiny_gpt2(len(tok), seed=seed)
    ids = [[tok.eos_token_id] + tok(t)["input_ids"][:127] for t in texts]
    n = max(map(len, ids))
    x = torch.tensor([s + [0] * (n - len(s)) for s in ids])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in ids])
    labels = x.masked_fill(mask == 0, -100)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss.detach())


_WORDS = ("amber basalt cedar delta ember fjord garnet harbor iris jasper kelp lagoon meadow nectar onyx prairie "
          "quartz reef sierra tundra umber valley willow xenon yarrow zephyr").split()


def distinct_docs(n: int, *, sentences: int = 3, seed: int = 0) -> list[str]:
    """``n`` documents of ``sentences`` seven-word sentences drawn from 26 words (seeded), so no two
    are (near) duplicates under llm_mia.data.dedup's rules, as ``corpus build`` requires."""
    import random

    rng = random.Random(seed)

    def sentence() -> str:
        w = rng.sample(_WORDS, 7)
        return " ".join([w[0].capitalize(), *w[1:]]) + "."

    return [f"Document {i}. " + " ".join(sentence() for _ in range(sentences)) for i in range(n)]


@pytest.fixture(scope="session")
def leak_models(tmp_path_factory):
    """A corpus whose members hold a canary and a PII record inserted 16 times; a 'leaky' model fitted
    on the members (it memorizes them) and a 'clean' one fitted on the held-out split (never saw a secret)."""
    from llm_mia.core import io
    from llm_mia.data.corpus import build_corpus
    from llm_mia.models.tokenizer import train_bpe_tokenizer

    d = tmp_path_factory.mktemp("gate")
    (d / "src.txt").write_text("\n\n".join(distinct_docs(16, sentences=2)), encoding="utf-8")
    build_corpus(str(d / "src.txt"), d / "corpus", seed=0, repeats=(16,), canaries_per_repeat=1, pii_per_repeat=1,
                 controls_per_kind=1)
    train = [r["text"] for r in io.read_jsonl(d / "corpus" / "train.jsonl")]
    held = [r["text"] for r in io.read_jsonl(d / "corpus" / "heldout.jsonl")]
    tok = train_bpe_tokenizer(train + held, vocab_size=400, min_frequency=1)
    losses = {}
    for name, texts in (("leaky", train), ("clean", held)):
        model, losses[name] = _fit(texts, tok, steps=120, seed=1)
        model.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    return d, losses


def run_cli(args, capsys):
    """Run ``llm-mia ARGS`` in-process through the real entry point; return (exit code, stdout, stderr)."""
    from llm_mia import cli

    old = sys.argv
    sys.argv = ["llm-mia", *map(str, args)]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def train_capturing(corpus, out, **kw):
    """``llm_mia.training.train.train_model(corpus, out, **kw)`` that also returns the in-memory model and
    tokenizer at the moment they are saved: ``(summary, model, tokenizer)``."""
    import llm_mia.training.train as train_mod

    captured = {}
    original = train_mod._save_model

    def spy(model, tokenizer, recipe, folder):
        captured["model"], captured["tokenizer"] = model, tokenizer
        original(model, tokenizer, recipe, folder)

    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "_save_model", spy)
    try:
        summary = train_mod.train_model(corpus, out, **kw)
    finally:
        mp.undo()
    return summary, captured["model"], captured["tokenizer"]
