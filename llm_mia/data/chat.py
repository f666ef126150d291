"""Chat rows: render ``messages`` with the tokenizer's chat template and mark the spans to score.

A chat row is rendered with ``tokenizer.apply_chat_template(messages, tokenize=False)``, the text the
model was fine-tuned on. The rendered text is what extraction verification searches; membership
scores only the assistant turns by default (what a chat fine-tune trains on): each message's content
is located in the rendered text, in order, and the scored tokens are those whose character offsets
(a fast tokenizer's ``offset_mapping``) overlap an assistant content span. The template's markup
(role headers, end-of-turn tokens) is never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.tokenizer import tokenizer_adds_bos

SCORE_SPANS = ("assistant", "all")


@dataclass
class Doc:
    """One document to score: its ``text`` and the ``[start, end)`` character ``spans`` scored
    (None: every token of the text)."""

    text: str
    spans: list[tuple[int, int]] | None = None

    @property
    def scored_text(self) -> str:
        """The scored characters (the spans joined by newlines), the text zlib and lowercase signals read."""
        return self.text if self.spans is None else "\n".join(self.text[a:b] for a, b in self.spans)


def check_template(tokenizer, source: str) -> None:
    """Raise LlmMiaError when ``tokenizer`` has no chat template (chat rows cannot be rendered)."""
    if not getattr(tokenizer, "chat_template", None):
        raise LlmMiaError(f"the data has chat rows ('messages') but the tokenizer of '{source}' has no chat "
                          "template; render the conversations to text yourself or use a tokenizer with one")


def render_chat(tokenizer, messages: Sequence[dict], *, score_spans: str = "assistant") -> Doc:
    """The rendered conversation and its scored spans (assistant contents, or None with "all").

    Raises:
        LlmMiaError: no chat template, or a template that does not reproduce a message's content verbatim.
    """
    if score_spans not in SCORE_SPANS:
        raise LlmMiaError(f"--score-spans must be one of {', '.join(SCORE_SPANS)}, got {score_spans!r}")
    check_template(tokenizer, getattr(tokenizer, "name_or_path", "") or "the model")
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    except Exception as e:  # jinja errors (e.g. a template that insists on alternating roles)
        raise LlmMiaError(f"the chat template failed on a conversation: {str(e).splitlines()[0] if str(e) else e!r}") from None
    if score_spans == "all":
        return Doc(text=text)
    spans, cursor = [], 0
    for j, m in enumerate(messages):
        if not m["content"]:
            continue
        pos = text.find(m["content"], cursor)
        if pos < 0:
            raise LlmMiaError(f"the chat template does not reproduce message {j} ({m['role']}) verbatim; "
                              "use --score-spans all")
        cursor = pos + len(m["content"])
        if m["role"] == "assistant":
            spans.append((pos, cursor))
    return Doc(text=text, spans=spans)


def encode_docs(loaded, docs: Sequence[Doc], *, prepend_bos: bool = True) -> tuple[list[list[int]], list[list[bool]]]:
    """Token ids of each document (start-token rule of :func:`llm_mia.models.tokenizer.encode`) and, per id,
    whether it is scored: True for ids whose character offsets overlap one of the document's spans
    (every id of a document without spans), False for a prepended BOS.

    A rendered chat text that already starts with the BOS token's text (Llama-style templates write
    ``<s>``) gets no second BOS. Needs a fast tokenizer (``return_offsets_mapping``).

    Raises:
        LlmMiaError: a slow tokenizer with documents that have spans.
    """

    tok = loaded.tokenizer
    adds = tokenizer_adds_bos(tok)
    bos_text = getattr(tok, "bos_token", None)
    ids_out, keep_out = [], []
    for d in docs:
        if d.spans is not None and not getattr(tok, "is_fast", False):
            raise LlmMiaError("assistant-only scoring needs a fast tokenizer (offsets); use --score-spans all")
        enc = tok(d.text, add_special_tokens=False, return_offsets_mapping=d.spans is not None)
        ids = list(enc["input_ids"])
        if d.spans is None:
            keep = [True] * len(ids)
        else:
            keep = [any(s < b and e > a for a, b in d.spans) for s, e in enc["offset_mapping"]]
        starts_with_bos = bool(bos_text) and d.text.startswith(bos_text)
        if (adds or prepend_bos) and not starts_with_bos:
            ids, keep = [loaded.bos_id] + ids, [False] + keep
        ids_out.append(ids)
        keep_out.append(keep)
    return ids_out, keep_out
