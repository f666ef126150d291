"""Held-out loss: the mean next-token loss of a model over a set of documents, stated once.

Training (``recipe.json["heldout_loss"]``, early stopping) and the comparison of defences
(:func:`heldout_perplexity`) both use :func:`heldout_loss`: the documents, in file order, each
followed by EOS, are joined into one stream, cut to its first ``max_tokens`` tokens and into blocks
of the context length (the last block may be shorter); the loss is the mean over every predicted
token (nats/token, fp32 logits). The same stream layout (:func:`token_stream`) is what training cuts
into blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["MAX_EVAL_TOKENS", "block_len", "encode_texts", "heldout_loss", "heldout_perplexity", "token_stream"]

MAX_EVAL_TOKENS = 65_536  # held-out loss is measured on at most this many tokens (a few seconds on CPU)


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added."""
    out: list[list[int]] = []
    for i in range(0, len(texts), 256):
        out.extend(tokenizer(list(texts[i:i + 256]), add_special_tokens=False)["input_ids"])
    return out


def token_stream(docs: Sequence[list[int]], order: Sequence[int], eos_id: int) -> torch.Tensor:
    """The documents in ``order``, each followed by EOS, as one 1-D long tensor."""
    ids: list[int] = []
    for j in order:
        ids.extend(docs[j])
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def block_len(n_tokens: int, n_ctx: int) -> int:
    """Block length: the context, or the whole stream when the corpus is shorter than that."""
    return max(2, min(n_ctx, n_tokens))


@torch.no_grad()
def heldout_loss(model, docs: Sequence[list[int]], *, eos_id: int, n_ctx: int, batch_size: int,
                 device: torch.device, max_tokens: int = MAX_EVAL_TOKENS) -> float | None:
    """Mean next-token loss (nats/token) over the first ``max_tokens`` of the EOS-joined documents, in fp32.

    Returns None when there are no documents (or no block of at least 2 tokens). The model's
    train/eval mode is restored.
    """
    if not docs:
        return None
    stream = token_stream(docs, range(len(docs)), eos_id)[:max_tokens]
    T = block_len(len(stream), n_ctx)
    blocks = [stream[i:i + T] for i in range(0, len(stream), T)]
    blocks = [b for b in blocks if len(b) >= 2]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        chunk = blocks[i:i + batch_size]
        for L in sorted({len(b) for b in chunk}):  # the last block may be shorter: its own batch
            x = torch.stack([b for b in chunk if len(b) == L]).to(device)  # (b, L)
            logits = model(input_ids=x).logits[:, :-1].float()  # (b, L-1, V)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                    reduction="sum")
            total += nll.item()
            count += x[:, 1:].numel()
    model.train(was_training)
    return total / count if count else None


def heldout_perplexity(loaded, texts: Sequence[str], *, max_tokens: int = MAX_EVAL_TOKENS) -> float | None:
    """exp(:func:`heldout_loss`) of a :class:`~llm_mia.models.hf.LoadedModel` over ``texts``, in
    blocks of the model's context (128 when unknown); None for no text."""
    eos = loaded.tokenizer.eos_token_id if loaded.tokenizer.eos_token_id is not None else loaded.bos_id
    docs = encode_texts(loaded.tokenizer, list(texts))
    loss = heldout_loss(loaded.model, docs, eos_id=eos, n_ctx=loaded.max_context or 128, batch_size=16,
                        device=loaded.device, max_tokens=max_tokens)
    return math.exp(loss) if loss is not None else None
