"""API output modes: what a restricted API returns of the next-token distribution, and which signals survive it.

The modes are described in :mod:`llm_mia.serving.output_limits`; they live here, in the model layer,
because an endpoint (:mod:`llm_mia.models.endpoint`) declares the mode its API answers in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llm_mia.core.errors import LlmMiaError

#: Signals that read the whole distribution (mu, sigma over the vocabulary).
_NEEDS_FULL_DISTRIBUTION = {"min_k_plus_plus"}


#: MemGuard's default L1 budget of the ``memguard`` mode (:mod:`llm_mia.serving.memguard`).
DEFAULT_EPSILON = 0.5


@dataclass(frozen=True)
class ApiMode:
    """One API output limit: ``kind`` in {"full", "topk", "rounded", "memguard", "label-only"}; ``k`` /
    ``digits`` / ``epsilon`` (MemGuard's L1 budget)."""

    kind: str
    k: int | None = None
    digits: int | None = None
    epsilon: float | None = None

    @property
    def name(self) -> str:
        if self.kind == "memguard":
            return f"memguard:{self.epsilon:g}"
        return {"topk": f"topk:{self.k}", "rounded": f"rounded:{self.digits}"}.get(self.kind, self.kind)


def parse_mode(text: str) -> ApiMode:
    """``"full"``, ``"topk:K"`` (K >= 1), ``"rounded:D"`` (0 <= D <= 12), ``"memguard[:EPS]"``
    (0 < EPS <= 2, default 0.5) or ``"label-only"``.

    Raises:
        LlmMiaError: any other text.
    """

    t = str(text).strip().lower()
    if t in ("full", "label-only"):
        return ApiMode(t)
    kind, _, arg = t.partition(":")
    if kind == "memguard":
        try:
            eps = float(arg) if arg else DEFAULT_EPSILON
        except ValueError:
            eps = math.nan
        if 0 < eps <= 2:
            return ApiMode("memguard", epsilon=eps)
        raise LlmMiaError(f"MemGuard budget must be an L1 distance in (0, 2], got '{text}' (memguard:EPS)")
    try:
        v = int(arg)
    except ValueError:
        v = None
    if kind == "topk" and v is not None and v >= 1:
        return ApiMode("topk", k=v)
    if kind == "rounded" and v is not None and 0 <= v <= 12:
        return ApiMode("rounded", digits=v)
    raise LlmMiaError(f"unknown API mode '{text}' (full | topk:K | rounded:D | memguard:EPS | label-only)")


def limit_logprobs(logprobs: torch.Tensor, mode: ApiMode) -> torch.Tensor:
    """What an attacker can reconstruct from the API's answer, as log-probs of the same shape (..., V).

    ``logprobs`` are normalised natural-log probabilities (log-softmax output). Returns normalised
    log-probs (logsumexp 0 over the last dim) for "full", "topk" and "rounded" (see the module
    docstring for each rule). Raises LlmMiaError for "label-only" (no log-probs at all) and
    "memguard" (it needs the defender's classifier: :class:`ApiView`).
    """
    if mode.kind == "full":
        return logprobs
    V = logprobs.shape[-1]
    if mode.kind == "topk":
        k = min(mode.k, V)
        top, idx = logprobs.topk(k, dim=-1)  # (..., k)
        if k == V:
            return logprobs
        rest = (1.0 - top.exp().sum(-1, keepdim=True)).clamp_min(1e-30)  # (..., 1) hidden mass
        out = torch.log(rest / (V - k)).expand_as(logprobs).clone()  # (..., V)
        return out.scatter(-1, idx, top)
    if mode.kind == "rounded":
        step = 10.0 ** -mode.digits
        p = torch.round(logprobs.double().exp() / step) * step
        p = p.clamp_min(0.5 * step)
        return torch.log(p / p.sum(-1, keepdim=True)).to(logprobs.dtype)
    if mode.kind == "memguard":
        raise LlmMiaError("memguard needs the defender's classifier: build an ApiView with one")
    raise LlmMiaError(f"API mode '{mode.name}' returns no log-probs")


def computable_signals(mode: ApiMode, available: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(computable signal names, {not computable: why}) under ``mode`` among ``available``."""
    if mode.kind == "label-only":
        return ["greedy_match"], {s: "label-only: no log-probs" for s in available}
    if mode.kind == "topk":
        return ([s for s in available if s not in _NEEDS_FULL_DISTRIBUTION],
                {s: "needs mu/sigma over the whole vocabulary" for s in available if s in _NEEDS_FULL_DISTRIBUTION})
    return list(available), {}
