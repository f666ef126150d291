"""The signal registry: every membership signal by name, with what it reads and where it comes from.

A signal is a pure function ``fn(inputs: SignalInputs) -> Tensor (N,)``, higher = more likely a member.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.stats import TokenStats


@dataclass
class SignalInputs:
    """Everything a signal may read, for N texts.

    Attributes:
        target: TokenStats of the texts under the target model.
        texts: the N texts (decoded strings).
        lowercase: TokenStats of ``text.lower()`` under the target model, tokenized on its own
            (no 1:1 alignment with ``target`` is assumed; only whole-text NLLs are compared).
        reference: TokenStats of the texts under a reference model.
        reference_per_byte: True when the reference model's tokenizer differs from the target's;
            the reference signals then compare NLL per UTF-8 byte, never per token.
        target_all_bytes: TokenStats of the texts under the target model with every token scored
            (conditioned on BOS), for the per-byte comparison when ``target`` leaves the first token
            unscored (the GPT-2 convention); None when ``target`` already scores every token.
        recall: TokenStats of the texts conditioned on a non-member prefix (ReCaLL); only the
            text's own tokens are scored.
        token_freq: float (V,), Laplace-smoothed token frequencies in a reference corpus (DC-PDD).
        population: the same inputs (``target``, ``reference``, ...) for a population of non-member
            texts, scored once per call under both models (RMIA compares each text with them).
        shadow: the texts' statistics under K shadow models (:class:`llm_mia.membership.signals.shadow.ShadowInputs`)
            for LiRA, RMIA with K references and the Shokri attack.
    """

    target: TokenStats
    texts: list[str]
    lowercase: TokenStats | None = None
    reference: TokenStats | None = None
    reference_per_byte: bool = False
    target_all_bytes: TokenStats | None = None
    recall: TokenStats | None = None
    token_freq: torch.Tensor | None = None
    population: SignalInputs | None = None
    shadow: object | None = None


@dataclass(frozen=True)
class Signal:
    name: str
    fn: Callable[[SignalInputs], torch.Tensor]
    needs: frozenset = field(default_factory=frozenset)
    source: str = ""
    description: str = ""


REGISTRY: dict[str, Signal] = {}


def register(name: str, *, needs: tuple[str, ...] = (), source: str, description: str):
    """Decorator adding ``fn(inputs) -> Tensor (N,)`` to :data:`REGISTRY` under ``name``.

    ``needs`` names what ``fn`` reads beyond ``inputs.target``'s log-probs: ``text``, ``lowercase``,
    ``reference``, ``recall``, ``token_freq``, ``population``, ``shadow`` (fields of :class:`SignalInputs`),
    ``moments`` (the target view's mu and sigma over the vocabulary, computed only when a chosen
    signal needs them) and ``aligned_reference`` (the reference scored the target's own token ids:
    same tokenizer, so the two models can be compared token by token).
    """

    def deco(fn):
        REGISTRY[name] = Signal(name, fn, frozenset(needs), source, description)
        return fn

    return deco


def get_signals(names: list[str] | None = None, *, available: set[str] | None = None) -> list[Signal]:
    """Signals by name (all whose needs are in ``available`` when ``names`` is None).

    Raises:
        LlmMiaError: for an unknown name, with a "did you mean" suggestion.
    """
    if names is None:
        avail = available if available is not None else set()
        return [s for s in REGISTRY.values() if s.needs <= avail]
    out = []
    for n in names:
        if n not in REGISTRY:
            close = difflib.get_close_matches(n, list(REGISTRY), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(REGISTRY)}"
            raise LlmMiaError(f"unknown signal '{n}'{hint}")
        out.append(REGISTRY[n])
    return out
