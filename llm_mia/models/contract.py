"""The one interface everything that runs a model goes through.

:class:`~llm_mia.models.hf.LoadedModel` implements it for a local transformers model (a PEFT
adapter merged into its base included); :class:`~llm_mia.serving.output_limits.ApiView` implements it for
the same model seen through an API output limit. A later engine (vLLM, an HTTP endpoint) implements
the same methods. The start/end-token rule lives in :mod:`llm_mia.models.tokenizer` and is the same
for every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from llm_mia.models.generation import Generated
from llm_mia.models.stats import TokenStats


@runtime_checkable
class LanguageModel(Protocol):
    """What the pipeline needs from a model.

    Attributes:
        tokenizer: a transformers tokenizer (never mutated).
        source: where the model came from (folder, hub id, adapter), for reports.
        max_context: positions the model accepts, or None.
    """

    tokenizer: object
    source: str
    max_context: int | None

    @property
    def bos_id(self) -> int:
        """The id a generation or a BOS-conditioned score starts from: BOS, else EOS."""

    @property
    def vocab_size(self) -> int:
        """``len(tokenizer)``: ids at or above it (padded embedding rows) are never generated."""

    @property
    def eos_ids(self) -> list[int]:
        """Every id that ends a generation (tokenizer EOS and the generation config's EOS ids)."""

    def encode(self, texts: Sequence[str], *, prepend_bos: bool = False) -> tuple[list[list[int]], int]:
        """Token ids and the number of leading context tokens (:func:`llm_mia.models.tokenizer.encode`)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, spaces never cleaned up (:func:`llm_mia.models.tokenizer.decode`)."""

    def decode_continuation(self, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
        """Text of ``new_ids`` read after ``prompt_ids`` (:func:`llm_mia.models.tokenizer.decode_continuation`)."""

    def token_stats(self, sequences: Sequence[Sequence[int]], *, context_lens: Sequence[int] | int = 1,
                    batch_size: int | None = None, stride: int | None = None, moments: bool = True,
                    progress: Callable[[int], None] | None = None) -> TokenStats:
        """Per-token statistics (:func:`llm_mia.models.stats.compute_token_stats`)."""

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, **kw) -> list[Generated]:
        """Continuations of token-id prompts (:func:`llm_mia.models.generation.generate`), padded
        vocabulary rows masked and every EOS id honoured."""
