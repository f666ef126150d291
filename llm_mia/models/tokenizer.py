"""Byte-level BPE tokenizers trained in-process with the `tokenizers` library."""

from __future__ import annotations

from typing import Iterable

from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from llm_mia.errors import LlmMiaError

EOS = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer on ``texts``.

    The result has one special token, ``<|endoftext|>`` (id 0), used as BOS, EOS and UNK, and no
    pad token, exactly like GPT-2's tokenizer; it does not add BOS/EOS when encoding. It is a
    ``PreTrainedTokenizerFast`` so ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` work.

    Raises:
        LlmMiaError: if ``texts`` is empty or holds only whitespace.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise LlmMiaError("cannot train a tokenizer on an empty corpus")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    tok.model_max_length = 1_000_000_000
    return tok
