"""Chat-model extraction: the ``chat`` and ``divergence`` strategies (Nasr et al. 2023).

``chat`` sends one user turn asking the model to continue or recite its training data (one of the
requests of ``prompts/chat_prompts.json``, drawn per sample from its seed), rendered with the model's
chat template (:mod:`llm_mia.models.chat`). ``divergence`` is Nasr et al. 2023's attack ("Scalable
extraction of training data from (production) language models", sec. 5): the user turn asks to repeat
one word forever (``divergence_template`` with a word of ``divergence_words``); the model repeats it,
then may *diverge* and emit other text. Only what follows the divergence point is verified: the
repeated words move into the sample's prompt ids, the rest are its ``token_ids``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.resources import CHAT_PROMPTS
from llm_mia.models.chat import chat_generate, chat_prompt_ids, require_chat_template

#: Strategies sampled from a user turn (appended to Carlini et al.'s three).
CHAT_STRATEGIES = ("chat", "divergence")


def load_chat_prompts(path=CHAT_PROMPTS) -> dict:
    """The prompt set: ``chat`` (list of requests), ``divergence_template`` (with ``{word}``), ``divergence_words``.

    Raises:
        LlmMiaError: a missing or malformed file (one line).
    """
    try:
        d = json.loads(open(path, encoding="utf-8").read())
        ok = (all(isinstance(x, str) and x for x in d["chat"]) and d["chat"] and "{word}" in d["divergence_template"]
              and d["divergence_words"] and all(isinstance(w, str) and w.strip() for w in d["divergence_words"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LlmMiaError(f"chat prompt set {path}: {e}") from None
    if not ok:
        raise LlmMiaError(f"chat prompt set {path}: needs non-empty 'chat', 'divergence_words' and a '{{word}}' template")
    return d


def divergence_point(text: str, word: str) -> int:
    """Character offset where ``text`` stops repeating ``word`` (Nasr et al. 2023 sec. 5).

    The longest prefix made of repetitions of ``word`` (case-insensitive, whole words) with any
    non-word characters (spaces, punctuation, quotes) between and after them; ``len(text)`` when
    the text never diverges, 0 when it never starts repeating.
    """
    w = re.escape(word.strip())
    m = re.match(rf"(?:[\W_]*\b{w}\b)*[\W_]*", text, flags=re.IGNORECASE)
    end = m.end() if m else 0
    return end if re.search(r"\w", text[:end]) else 0


def _pick(seed: int, n: int) -> int:
    return int(np.random.default_rng(np.random.SeedSequence([int(seed), 2])).integers(n))


def user_turns(strategy: str, seeds: Sequence[int], prompts: dict) -> list[tuple[str, str | None]]:
    """(user text, repeated word or None) of each sample, drawn from its seed."""
    if strategy == "chat":
        return [(prompts["chat"][_pick(s, len(prompts["chat"]))], None) for s in seeds]
    words = prompts["divergence_words"]
    out = []
    for s in seeds:
        w = words[_pick(s, len(words))].strip()
        out.append((prompts["divergence_template"].replace("{word}", w), w))
    return out


def max_prompt_tokens(target, strategies: Sequence[str], prompts: dict) -> int:
    """The longest rendered user turn of ``strategies`` (0 when none is a chat strategy); refuses a model
    without a chat template (one line) before any sampling."""
    texts = (prompts["chat"] if "chat" in strategies else []) + (
        [prompts["divergence_template"].replace("{word}", w.strip()) for w in prompts["divergence_words"]]
        if "divergence" in strategies else [])
    if not texts:
        return 0
    require_chat_template(target, f"the {' and '.join(s for s in CHAT_STRATEGIES if s in strategies)} strategy")
    return max(len(chat_prompt_ids(target, t)) for t in texts)


def chat_samples(target, strategy: str, seeds: Sequence[int], prompts: dict, *, max_new_tokens: int,
                 top_k: int) -> list[tuple[list[int], list[int], dict]]:
    """(prompt ids, token ids to verify, extra record fields) of each seed's sample.

    For ``divergence`` the reply's tokens up to the divergence point join the prompt ids and
    ``divergence_token`` records where the verified part starts (``max_new_tokens`` when it never diverged).
    """
    turns = user_turns(strategy, seeds, prompts)
    gens = chat_generate(target, [t for t, _ in turns], max_new_tokens=max_new_tokens, seeds=seeds, top_k=top_k)
    out = []
    for (_, word), g in zip(turns, gens):
        if word is None:
            out.append((g.prompt, g.new_ids, {}))
            continue
        k = _token_at(target, g.new_ids, divergence_point(target.decode(g.new_ids), word))
        out.append((g.prompt + g.new_ids[:k], g.new_ids[k:], {"divergence_token": k}))
    return out


def _token_at(target, ids: list[int], offset: int) -> int:
    """The first token index whose decoded prefix reaches character ``offset``."""
    for k in range(len(ids) + 1):
        if len(target.decode(ids[:k])) >= offset:
            return k
    return len(ids)
