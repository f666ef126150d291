"""Tokenizers: the start/end-token policy every caller uses (encode, decode, EOS ids), and byte-level
BPE tokenizers trained in-process with the `tokenizers` library."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from llm_mia.core.errors import LlmMiaError

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


# ------------------------------------------------------------------ the start/end-token policy, decided once
#
# * auto-BOS tokenizers (Llama, Mistral, SentencePiece): a text is [BOS] + its own tokens, every
#   token after BOS is scored;
# * no-BOS tokenizers (GPT-2, Qwen): a text is its own tokens and the first is context (the GPT-2
#   convention), unless ``prepend_bos`` asks to condition on the model's BOS (else EOS) id;
# * tokens a post-processor appends (an EOS from ``add_eos_token=True`` or a "<s> $A </s>"
#   template) are never part of the text: texts are tokenized with ``add_special_tokens=False`` and
#   only the BOS is put back (T3-03);
# * decoding never cleans up spaces (``clean_up_tokenization_spaces=False``), so the decoded text is
#   what the model produced whatever the transformers version (T2-10); a continuation is decoded in
#   the context of its prompt, so a SentencePiece/Metaspace decoder cannot strip its leading space (T3-08).


def tokenizer_adds_bos(tokenizer) -> bool:
    """True if ``tokenizer(text)`` starts with its BOS token (e.g. Llama), False for GPT-2 style."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def start_id(tokenizer) -> int:
    """The id a generation or a ``prepend_bos`` score starts from: BOS, else EOS.

    Raises:
        LlmMiaError: the tokenizer has neither.
    """
    for tid in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    raise LlmMiaError("the tokenizer has neither a BOS nor an EOS token")


def text_ids(tokenizer, text: str) -> list[int]:
    """The text's own token ids: no special token added (no BOS, no appended EOS)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode(tokenizer, texts, *, prepend_bos: bool = False) -> tuple[list[list[int]], int]:
    """Token ids of ``texts`` and the number of leading context tokens not scored (always 1).

    Start-token rule (module comment above): [BOS] + the text's own tokens if the tokenizer adds BOS
    or ``prepend_bos`` is asked (the BOS is then the one context token), else the text's own tokens
    (the first one is context). An appended EOS is never included (T3-03). Empty texts give ``[]``
    or ``[BOS]``, i.e. no scored token.
    """
    add = prepend_bos or tokenizer_adds_bos(tokenizer)
    bos = start_id(tokenizer) if add else None
    ids = [text_ids(tokenizer, t) for t in texts]
    if add:
        ids = [[bos] + x for x in ids]
    return ids, 1


def decode(tokenizer, ids) -> str:
    """Text of a token-id list, special tokens kept, spaces never cleaned up (T2-10)."""
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


def decode_continuation(tokenizer, prompt_ids, new_ids) -> str:
    """Text of ``new_ids`` as it reads after ``prompt_ids``: decode(prompt + new) minus decode(prompt).

    A SentencePiece/Metaspace decoder strips the dummy-prefix space of the first piece it decodes, so
    ``decode(new_ids)`` alone loses a real leading space (T3-08). Falls back to ``decode(new_ids)``
    when the decoded prompt is not a prefix of the decoded whole (a byte sequence split mid-character).
    """
    if not prompt_ids:
        return decode(tokenizer, new_ids)
    head, whole = decode(tokenizer, prompt_ids), decode(tokenizer, list(prompt_ids) + list(new_ids))
    return whole[len(head):] if whole.startswith(head) else decode(tokenizer, new_ids)


def eos_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's generation-config EOS ids."""
    out: list[int] = []
    cands = [getattr(tokenizer, "eos_token_id", None)]
    gc = getattr(model, "generation_config", None)
    v = getattr(gc, "eos_token_id", None)
    cands += list(v) if isinstance(v, (list, tuple)) else [v]
    for t in cands:
        if t is not None and int(t) not in out:
            out.append(int(t))
    return out


def same_tokenizer(a, b) -> bool:
    """True if two tokenizers map every string to the same ids (same vocabulary and merges)."""
    if a is b:
        return True
    try:
        return a.get_vocab() == b.get_vocab() and type(a.backend_tokenizer.model) is type(b.backend_tokenizer.model) \
            and a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    except AttributeError:
        return False


def tokenizer_sha256(tokenizer) -> str:
    """Hex SHA-256 of a fast tokenizer's vocabulary, merges, normalizer and pre-tokenizer (its
    ``tokenizer.json`` without the padding and truncation settings, keys sorted): two tokenizers with
    the same digest map every string to the same ids (what :func:`same_tokenizer` checks in memory).

    Raises:
        LlmMiaError: a slow tokenizer (no ``backend_tokenizer``), which has no such serialisation.
    """

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise LlmMiaError(f"{type(tokenizer).__name__} is not a fast tokenizer: no digest to compare")
    spec = json.loads(backend.to_str())
    for k in ("padding", "truncation"):
        spec.pop(k, None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
