"""Generation from a user turn: prompts rendered with the model's chat template.

A local model (or an endpoint with ``api=completions``) gets the user turn rendered by its tokenizer's
``apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`` and continues those
token ids; an endpoint with ``api=chat`` gets the message itself through ``/v1/chat/completions``
(the server applies its template). Used by the ``chat`` and ``divergence`` extraction strategies
(Nasr et al. 2023, "Scalable extraction of training data from (production) language models").
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.generation import Generated
from llm_mia.models.tokenizer import text_ids


def has_chat_template(model) -> bool:
    """True when ``model`` can take a user turn: an ``api=chat`` endpoint, or a tokenizer with a chat template."""
    return getattr(model, "api", None) == "chat" or bool(getattr(model.tokenizer, "chat_template", None))


def require_chat_template(model, what: str) -> None:
    """Raise a one-line :class:`LlmMiaError` naming ``what`` when ``model`` has no chat template."""
    if not has_chat_template(model):
        raise LlmMiaError(f"{what} needs a chat model: {getattr(model, 'source', 'the model')} has no chat template "
                          f"(tokenizer.chat_template is unset) and is not an api=chat endpoint")


def chat_prompt_ids(model, user_text: str) -> list[int]:
    """Token ids of one user turn as the model sees it: [start id] + the rendered template's own tokens
    (for an ``api=chat`` endpoint, the user text's tokens: the server renders the template)."""
    require_chat_template(model, "a chat prompt")
    if getattr(model, "api", None) == "chat":
        return [model.bos_id] + text_ids(model.tokenizer, user_text)
    rendered = model.tokenizer.apply_chat_template([{"role": "user", "content": user_text}],
                                                   add_generation_prompt=True, tokenize=False)
    return [model.bos_id] + text_ids(model.tokenizer, rendered)


def chat_generate(model, user_texts: Sequence[str], *, max_new_tokens: int, seeds: Sequence[int],
                  top_k: int = 40) -> list[Generated]:
    """Sampled replies to ``user_texts`` (one user turn each), ``max_new_tokens`` tokens each (EOS forbidden
    where the API allows it). ``Generated.prompt`` is :func:`chat_prompt_ids`.

    Raises:
        LlmMiaError: a model without a chat template, or what ``generate`` raises.
    """
    prompts = [chat_prompt_ids(model, t) for t in user_texts]
    if getattr(model, "api", None) == "chat":
        replies = model.chat_generate(list(user_texts), max_new_tokens=max_new_tokens, seeds=seeds, top_k=top_k)
        return [Generated(prompt=p, new_ids=text_ids(model.tokenizer, r)[:max_new_tokens]) for p, r in zip(prompts, replies)]
    return model.generate(prompts, max_new_tokens=max_new_tokens, seeds=list(seeds), top_k=top_k,
                          min_new_tokens=max_new_tokens)
