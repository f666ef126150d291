"""Score texts (or token-id sequences) for membership with every requested signal.

The pipeline: tokenize each needed view (the text, its lowercase, the reference model's view) once,
compute :class:`~llm_mia.models.stats.TokenStats` once per (model, view), then call each signal,
a pure function of those statistics. Results come back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from llm_mia import signals as S
from llm_mia.models.loading import LoadedModel
from llm_mia.models.stats import TokenStats, compute_token_stats


def tokenizer_adds_bos(tokenizer) -> bool:
    """True if ``tokenizer(text)`` starts with its BOS token (e.g. Llama), False for GPT-2 style."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def encode(loaded: LoadedModel, texts: Sequence[str], *, prepend_bos: bool = False) -> tuple[list[list[int]], int]:
    """Token ids of ``texts`` and the number of leading context tokens not scored.

    Start-token rule: if the tokenizer adds BOS, every token after it is scored; otherwise the first
    token is not scored (the GPT-2 convention) unless ``prepend_bos`` asks to condition on the
    model's BOS (or EOS) id. Either way the context length is 1. Empty texts give ``[]`` or
    ``[BOS]``, i.e. no scored token.
    """
    tok = loaded.tokenizer
    adds = tokenizer_adds_bos(tok)
    ids = [list(tok(t, add_special_tokens=adds)["input_ids"]) if t else [] for t in texts]
    if prepend_bos and not adds:
        ids = [[loaded.bos_id] + x for x in ids]
    return ids, 1


def same_tokenizer(a, b) -> bool:
    """True if two tokenizers map every string to the same ids (same vocabulary and merges)."""
    if a is b:
        return True
    try:
        return a.get_vocab() == b.get_vocab() and type(a.backend_tokenizer.model) is type(b.backend_tokenizer.model) \
            and a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    except AttributeError:
        return False


@dataclass
class ScoreResult:
    """Scores of N texts.

    Attributes:
        rows: one dict per text, in input order: ``id``, ``n_scored_tokens``, ``nll`` (mean,
            nats/token), ``perplexity``, ``zlib_bytes``, ``scores`` (signal -> value, higher =
            member, NaN where undefined), ``flags`` (list of str).
        target: the target model's TokenStats (for further signals without another forward pass).
    """

    rows: list[dict]
    target: TokenStats
    inputs: S.SignalInputs = field(repr=False)


def score(target: LoadedModel, texts: Sequence[str], *, ids: Sequence[Sequence[int]] | None = None,
          context_lens: Sequence[int] | int | None = None, reference: LoadedModel | None = None,
          signals: Sequence[str] | None = None, batch_size: int = 32, prepend_bos: bool = False,
          stride: int | None = None, progress: Callable[[int], None] | None = None) -> ScoreResult:
    """Score ``texts`` under ``target`` (and ``reference``) with the requested signals.

    Args:
        texts: N strings (the text the zlib and lowercase signals read).
        ids / context_lens: token ids already in hand (e.g. generated samples, scored directly with no
            decode/re-encode round trip) and how many leading ids are context; default: encode ``texts``.
        reference: a reference model; its tokenizer may differ (then compared per UTF-8 byte).
        signals: names from :data:`llm_mia.signals.REGISTRY`; default: every signal whose inputs exist.
        batch_size: forward-pass batch size; results do not depend on it.

    Raises:
        LlmMiaError: unknown signal name, or a signal that needs a reference without one.
    """
    texts = list(texts)
    avail = {"text", "lowercase"} | ({"reference"} if reference is not None else set())
    chosen = S.get_signals(list(signals) if signals is not None else None, available=avail)
    needs = set().union(*(s.needs for s in chosen)) if chosen else set()
    if "reference" in needs and reference is None:
        from llm_mia.errors import LlmMiaError

        raise LlmMiaError("the reference signals need a reference model (--reference)")
    if ids is None:
        ids, ctx = encode(target, texts, prepend_bos=prepend_bos)
    else:
        ids = [list(x) for x in ids]
        ctx = 1 if context_lens is None else context_lens

    def run(model: LoadedModel, seqs, c) -> TokenStats:
        return compute_token_stats(model.model, seqs, context_lens=c, batch_size=batch_size, pad_id=model.bos_id,
                                   max_context=model.max_context, stride=stride, progress=progress)

    tstats = run(target, ids, ctx)
    inp = S.SignalInputs(target=tstats, texts=texts)
    if "lowercase" in needs:
        lids, lctx = encode(target, [t.lower() for t in texts], prepend_bos=prepend_bos or _starts_with_bos(target, ids))
        inp.lowercase = run(target, lids, lctx)
    if "reference" in needs:
        if same_tokenizer(reference.tokenizer, target.tokenizer):
            inp.reference = run(reference, ids, ctx)
        else:
            rids, rctx = encode(reference, texts, prepend_bos=True)
            inp.reference = run(reference, rids, rctx)
            inp.reference_per_byte = True
    values = {s.name: s.fn(inp) for s in chosen}
    flags = S.row_flags(inp)
    nll = S.mean_nll(tstats)
    ppl = S.perplexity(nll)
    rows = []
    for i, t in enumerate(texts):
        rows.append({"id": i, "n_scored_tokens": int(tstats.n_scored[i]), "nll": float(nll[i]),
                     "perplexity": float(ppl[i]), "zlib_bytes": S.zlib_bytes(t),
                     "scores": {k: float(v[i]) for k, v in values.items()}, "flags": flags[i]})
    return ScoreResult(rows=rows, target=tstats, inputs=inp)


def _starts_with_bos(target: LoadedModel, ids: Sequence[Sequence[int]]) -> bool:
    """Whether the given id lists start with the BOS id (so the lowercase view should too)."""
    if tokenizer_adds_bos(target.tokenizer):
        return False
    return bool(ids) and all(len(x) > 0 and x[0] == target.bos_id for x in ids)
