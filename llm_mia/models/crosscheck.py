"""Score a sample of texts with an engine and with the HF reference; refuse the engine when they differ.

An inference engine is trusted only after it reproduces the reference implementation
(:class:`~llm_mia.models.hf.LoadedModel`, transformers) on the audited model: the same
``[start token] + ids`` of ``n`` texts are scored by both, all texts in one call and each text
alone (an engine whose log-probs depend on its batch is caught), and every per-token log-prob must
agree within a tolerance (1e-4 nats in fp32, 0.05 in bf16/fp16). Faults of this kind seen in vLLM:
a LoRA adapter on ``lm_head`` dropped from ``prompt_logprobs`` (vllm#51594), prompt log-probs that
change with the batch size (vllm#11778), a dropped BOS (vllm#15420). A value the engine does not
return where the reference scores a token counts as an infinite difference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.resources import DEFAULT_PROMPTS

#: texts scored by both engines unless the caller gives others
DEFAULT_N_TEXTS = 16
#: largest per-token |log p difference| accepted, nats, by the weights' dtype
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.05, "float16": 0.05}


def default_texts(n: int = DEFAULT_N_TEXTS) -> list[str]:
    """The first ``n`` paragraphs of 100+ characters of the shipped prompt corpus (``prompts/internet.txt``)."""
    paragraphs = re.split(r"\n[ \t]*\n", DEFAULT_PROMPTS.read_text(encoding="utf-8").replace("\r\n", "\n"))
    return [p.strip() for p in paragraphs if len(p.strip()) >= 100][:n]


def _diffs(want, got) -> torch.Tensor:
    """|log p| differences of every token the reference scores (inf where the engine gives none)."""
    if not torch.equal(got.n_scored, want.n_scored):  # a token scored by one and not the other
        return torch.tensor([math.inf])
    a, b = want.token_logprob[want.mask], got.token_logprob[got.mask]  # row-major: the same tokens
    d = (a - b).abs()
    return torch.where(torch.isnan(d) | (torch.isinf(b) & ~torch.isinf(a)), math.inf, d)


def crosscheck(engine, reference, texts: Sequence[str] | None = None, *, tolerance: float | None = None,
               dtype: str = "float32", max_tokens: int | None = None) -> dict:
    """Compare ``engine``'s per-token log-probs with ``reference``'s on ``texts``; raise if they differ.

    Args:
        engine / reference: implementations of :class:`llm_mia.models.contract.LanguageModel`
            (the reference: the HF engine on the same weights and tokenizer).
        texts: default :func:`default_texts` (16 paragraphs); each scored as ``[start token] + ids``
            (``prepend_bos``, so a dropped start token shows on the first token), cut to
            ``max_tokens`` (default: the reference's context).
        tolerance: nats; default :data:`TOLERANCE` of ``dtype``.

    Returns:
        The figures for the report: ``max_abs_diff`` and ``mean_abs_diff`` (nats, over every scored
        token of both passes), ``max_abs_diff_single`` (the texts scored one at a time),
        ``n_texts``, ``n_tokens``, ``dtype``, ``tolerance``, ``passed`` (True).

    Raises:
        LlmMiaError: one line with the figures when the largest difference exceeds the tolerance, or
            when there is no text to compare.
    """
    tol = TOLERANCE.get(dtype, 0.05) if tolerance is None else float(tolerance)
    texts = list(default_texts() if texts is None else texts)
    ids, ctx = reference.encode(texts, prepend_bos=True)
    limit = max_tokens or reference.max_context
    ids = [x[:limit] if limit else x for x in ids if len(x) > ctx]
    if not ids:
        raise LlmMiaError("engine cross-check: no text with a token to score")
    want = reference.token_stats(ids, context_lens=ctx, moments=False)
    batched = _diffs(want, engine.token_stats(ids, context_lens=ctx, moments=False))
    single = torch.cat([_diffs(want.select([i]), engine.token_stats([x], context_lens=ctx, moments=False))
                        for i, x in enumerate(ids)])
    every = torch.cat([batched, single])
    fig = {"n_texts": len(ids), "n_tokens": int(want.n_scored.sum()), "dtype": dtype, "tolerance": tol,
           "max_abs_diff": float(every.max()), "mean_abs_diff": float(every.mean()),
           "max_abs_diff_single": float(single.max())}
    fig["passed"] = fig["max_abs_diff"] <= tol
    if not fig["passed"]:
        raise LlmMiaError(f"engine cross-check failed: per-token log-probs differ from the HF engine by up to "
                          f"{fig['max_abs_diff']:.3g} nats (mean {fig['mean_abs_diff']:.3g}; one text at a time: "
                          f"{fig['max_abs_diff_single']:.3g}) on {fig['n_texts']} texts in {dtype}, above the "
                          f"tolerance {tol:g}; the engine is not used (run with --engine hf)")
    return fig
