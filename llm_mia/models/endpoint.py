"""An OpenAI-compatible HTTP endpoint as the audited model: ``--model openai:URL``.

The endpoint implements the model contract (:class:`llm_mia.models.contract.LanguageModel`) with the
``openai`` client library, which retries 429, 408, 409, 5xx and connection errors with exponential
backoff (0.5 s x 2^n, at most 8 s, 25 % jitter; a server's ``Retry-After`` up to 2 minutes is obeyed)
and tells how many retries each call took. Which API the endpoint offers decides what the audit can
read (``--model-args api=...``, detected when not given):

* ``completions``: ``/v1/completions`` with ``echo=True, max_tokens=0, logprobs=K`` returns the
  log-prob of every prompt token and the K most likely tokens at each position: prompt log-probs.
  That is the output-limit mode ``topk:K`` (:mod:`llm_mia.serving.output_limits`) with one difference in
  the attacker's favour: the scored token's own log-prob is exact even outside the top K. Every
  signal over token log-probs is computable; Min-K%++ is not (it needs mu and sigma over the whole
  vocabulary, which no API returns), and it is never approximated.
* ``chat``: ``/v1/chat/completions`` with ``logprobs/top_logprobs`` gives the log-probs of the
  tokens it generates, never of a given text: no text can be scored, so membership is label-only.
* ``text``: generated text only: label-only.

Start-token rule: prompts are sent as token ids (the OpenAI completions API accepts a list of
token-id lists), encoded by the local tokenizer of the served model with the rule of
:mod:`llm_mia.models.tokenizer`, so a text is scored exactly as the HF engine scores
``[start token] + ids``: the server answers ``null`` for the first prompt token (it has no
prediction) and the log-prob of every later one, conditioned on all before it.

Generation (``generate``) sends token-id prompts to ``/v1/completions``: greedy and beam-search
prompts batched in one request, sampled prompts one request each with the sample's own ``seed``
(vLLM seeds each request; the samples differ from the HF engine's, whose sampler is ours). Top-k,
a minimum length, beam search, EOS handling and returned token ids use vLLM's extensions of the
API (``top_k``, ``min_tokens``, ``use_beam_search``, ``ignore_eos``, ``stop_token_ids``,
``return_token_ids``), sent only when the server is vLLM (``owned_by: vllm`` in ``/v1/models``);
elsewhere EOS is banned with ``logit_bias`` where a sample must not end early, and the returned text
is re-encoded with the local tokenizer (its ids may differ from the server's), and a server that
stops at EOS where the HF engine would go on (``eos_id=None``) returns a shorter continuation.
Temperature decay changes the temperature at every step, which no HTTP API offers: refused.

Every call is counted (:class:`Usage`: API calls, prompts, retries, tokens, per audit stage) and
bounded by ``max_queries``: the call that would pass it raises :class:`QueryBudgetExceeded` (one
line, exit 2) instead; extraction batches finished before it stay on disk and a rerun resumes them.

The API key comes from the environment (``LLM_MIA_API_KEY``, else ``OPENAI_API_KEY``; none: a
keyless local server) and is never logged, written to a report or put into an error message.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.generation import Generated
from llm_mia.models.hub import ENDPOINT_ARGS, resolve_folder
from llm_mia.models.output_modes import ApiMode, computable_signals
from llm_mia.models.stats import TokenStats, _windows
from llm_mia.models.tokenizer import (
    decode,
    decode_continuation,
    encode,
    eos_ids,
    start_id,
    text_ids,
)

PREFIX = "openai:"
APIS = ("completions", "chat", "text")
KEY_VARS = ("LLM_MIA_API_KEY", "OPENAI_API_KEY")


class QueryBudgetExceeded(LlmMiaError):
    """The next API call would pass ``--max-queries``."""


@dataclass
class Usage:
    """What the endpoint was asked: ``queries`` API calls made (each carries ``prompts`` prompts, a
    batch), ``retries`` HTTP attempts the client repeated after 429 / 5xx / a timeout, tokens as the
    server counted them (``usage``), and the queries of each audit stage (``by_stage``)."""

    queries: int = 0
    prompts: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_stage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"queries": self.queries, "prompts": self.prompts, "retries": self.retries,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "queries_by_stage": dict(self.by_stage)}


def is_endpoint(spec) -> bool:
    """True for a ``--model openai:URL`` spec."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def _api_key() -> str:
    for var in KEY_VARS:
        v = os.environ.get(var, "").strip()
        if v:
            return v
    return "EMPTY"  # a local server started without --api-key accepts any key


def _int_arg(args: dict, key: str, default: int, lo: int) -> int:
    v = args.get(key, default)
    try:
        v = int(v)
    except (TypeError, ValueError):
        raise LlmMiaError(f"--model-args {key} must be an integer, got '{args[key]}'") from None
    if v < lo:
        raise LlmMiaError(f"--model-args {key} must be >= {lo}, got {v}")
    return v


@dataclass
class EndpointModel:
    """A model behind an OpenAI-compatible endpoint (see the module docstring); build it with
    :func:`load_endpoint`. ``mode`` is the output-limit mode of :mod:`llm_mia.serving.output_limits` the
    API allows; ``usage`` counts every call; ``max_queries`` bounds them (None: no bound)."""

    tokenizer: object
    source: str
    max_context: int | None
    url: str
    name: str
    api: str
    server: str  # "vllm" or "openai" (no extensions)
    top_logprobs: int
    client: object = field(repr=False)
    batch: int = 32
    concurrency: int = 4
    max_queries: int | None = None
    usage: Usage = field(default_factory=Usage)
    stage: str = "other"
    # what a LoadedModel also has, for the pipeline: no local weights
    model = None
    base = None
    adapter = None
    folder = None
    base_folder = None
    weights_sha256 = None
    logprob_transform = None

    def __post_init__(self):
        self._lock = threading.Lock()

    # ---- what the report says
    @property
    def mode(self):

        return ApiMode("topk", k=self.top_logprobs) if self.api == "completions" else ApiMode("label-only")

    @property
    def returns_moments(self) -> bool:
        """mu and sigma over the vocabulary (Min-K%++): never over an API."""
        return False

    @property
    def endpoint_sha256(self) -> str:
        """Digest of (URL, served model name): what identifies the model in shard records."""
        return hashlib.sha256(f"{self.url}|{self.name}".encode()).hexdigest()

    def describe(self, available: Sequence[str]) -> dict:
        """The report's ``provenance.endpoint``: URL, model, API, mode, signals it allows, usage."""

        ok, why = computable_signals(self.mode, list(available))
        if self.api == "completions":
            note = (f"prompt log-probs (echo) with the top {self.top_logprobs} at each position; the scored token's "
                    f"log-prob is exact")
        elif self.api == "chat":
            note = "log-probs of generated tokens only: no given text can be scored (label-only)"
        else:
            note = "generated text only (label-only)"
        return {"url": self.url, "model": self.name, "server": self.server, "api": self.api, "mode": self.mode.name,
                "returns": note, "computable_signals": ok, "not_computable": why, "max_queries": self.max_queries,
                **self.usage.to_dict()}

    # ---- the model contract: tokenizer side (the local tokenizer of the served model)
    @property
    def bos_id(self) -> int:

        return start_id(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_ids(self) -> list[int]:

        return eos_ids(self.tokenizer)

    def encode(self, texts, *, prepend_bos: bool = False):

        return encode(self.tokenizer, texts, prepend_bos=prepend_bos)

    def decode(self, ids) -> str:

        return decode(self.tokenizer, ids)

    def decode_continuation(self, prompt_ids, new_ids) -> str:

        return decode_continuation(self.tokenizer, prompt_ids, new_ids)

    # ---- calls
    def _call(self, create: Callable, n_prompts: int, **kw):
        """One counted API call through ``create`` (a ``with_raw_response`` method); the parsed reply."""
        import openai

        with self._lock:
            if self.max_queries is not None and self.usage.queries >= self.max_queries:
                raise QueryBudgetExceeded(
                    f"--max-queries {self.max_queries} reached after {self.usage.queries} queries to {self.url} "
                    f"(during {self.stage}); raise it, or lower --num-samples / --candidates / --membership-docs "
                    f"(finished extraction batches are kept: the same command resumes them)")
            self.usage.queries += 1
            self.usage.by_stage[self.stage] = self.usage.by_stage.get(self.stage, 0) + 1
        try:
            raw = create(model=self.name, **kw)
        except openai.APIConnectionError as e:
            raise LlmMiaError(f"cannot reach the endpoint {self.url} ({_first_line(e)})") from None
        except openai.AuthenticationError:
            raise LlmMiaError(f"the endpoint {self.url} refused the API key (401): set {KEY_VARS[0]} "
                              f"(or {KEY_VARS[1]})") from None
        except openai.APIStatusError as e:
            more = " after the client's retries with backoff" if e.status_code == 429 or e.status_code >= 500 else ""
            raise LlmMiaError(f"the endpoint {self.url} answered {e.status_code}{more}: {_first_line(e)}") from None
        reply = _parsed(raw, self.url)
        with self._lock:
            self.usage.prompts += n_prompts
            self.usage.retries += int(getattr(raw, "retries_taken", 0) or 0)
            u = getattr(reply, "usage", None)
            if u is not None:
                self.usage.prompt_tokens += int(getattr(u, "prompt_tokens", 0) or 0)
                self.usage.completion_tokens += int(getattr(u, "completion_tokens", 0) or 0)
        return reply

    def _completions(self, prompts: list[list[int]], **kw) -> list:
        """Choices of one /v1/completions call on token-id prompts, in prompt order (n per prompt)."""
        reply = self._call(self.client.completions.with_raw_response.create, len(prompts), prompt=prompts, **kw)
        choices = sorted(reply.choices, key=lambda c: c.index)
        n = kw.get("n", 1)
        if len(choices) != n * len(prompts):
            raise LlmMiaError(f"the endpoint {self.url} answered {len(choices)} choices for {len(prompts)} prompts")
        return choices

    def _need_logprobs(self, what: str) -> None:
        if self.api != "completions":
            raise LlmMiaError(f"{what} needs prompt log-probs, which api={self.api} does not return (label-only): "
                              f"only an endpoint with /v1/completions echo + logprobs (api=completions) can be scored")

    # ---- the model contract: scoring
    def token_stats(self, sequences, *, context_lens=1, batch_size=None, stride=None, moments=True, progress=None):
        """Per-token statistics from the endpoint's prompt log-probs (``echo=True, max_tokens=0``).

        Same shapes and alignment as :func:`llm_mia.models.stats.compute_token_stats`; sequences
        longer than ``max_context - 1`` tokens are scored with its sliding context in windows of
        ``max_context - 1`` tokens (a server counts one output token even with ``max_tokens=0``);
        ``token_is_top1`` is read from the top-``top_logprobs`` answer (vLLM's token ranks when
        given); ``mean_logprob`` / ``std_logprob`` are NaN (no API returns the whole distribution).

        Raises:
            LlmMiaError: ``moments`` asked (Min-K%++), an API without prompt log-probs, or an answer
                whose length does not match the prompt.
        """
        self._need_logprobs("scoring")
        if moments:
            raise LlmMiaError("Min-K%++ needs mu and sigma over the whole vocabulary, which an API does not return")
        n = len(sequences)
        ctx = [context_lens] * n if isinstance(context_lens, int) else list(context_lens)
        if len(ctx) != n:
            raise LlmMiaError(f"context_lens has {len(ctx)} entries for {n} sequences")
        # vLLM refuses a prompt of max_model_len tokens even with max_tokens=0 ("at least 1" output
        # token is counted), so a window is one token shorter than the HF engine's
        mc = self.max_context - 1 if self.max_context else None
        if stride is None:
            stride = max(1, mc // 2) if mc else 1
        jobs, n_scored, truncated = [], torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
        for i, seq in enumerate(sequences):
            w = _windows(len(seq), ctx[i], mc, stride)
            jobs.extend((i, *x) for x in w)
            n_scored[i] = max(0, len(seq) - max(1, ctx[i]))
            truncated[i] = len(w) > 1
        width = int(n_scored.max()) if n else 0
        lp = torch.zeros(n, width, dtype=torch.float32)
        ids = torch.full((n, width), -1, dtype=torch.long)
        top1 = torch.zeros(n, width, dtype=torch.bool)
        step = batch_size or self.batch
        extra = {"extra_body": {"return_token_ids": True}} if self.server == "vllm" else {}
        groups = [jobs[b:b + step] for b in range(0, len(jobs), step)]

        def one(group):
            prompts = [list(sequences[i][s:e]) for i, s, e, _ in group]
            return group, prompts, self._completions(prompts, max_tokens=0, echo=True, logprobs=self.top_logprobs,
                                                      temperature=0.0, **extra)

        for group, prompts, choices in self._map(one, groups):
            for (i, s, e, first), p, ch in zip(group, prompts, choices):
                got = ch.logprobs.token_logprobs if ch.logprobs is not None else None
                if got is None or len(got) < len(p):
                    raise LlmMiaError(f"the endpoint {self.url} returned no prompt log-probs for a prompt of "
                                      f"{len(p)} tokens (does it support echo with logprobs?)")
                ranks = _ranks(ch)
                tops = ch.logprobs.top_logprobs or []
                for a in range(first, e):
                    c, k = a - max(1, ctx[i]), a - s
                    lp[i, c] = _checked_logprob(got[k], self.url, k)
                    ids[i, c] = int(p[k])
                    if ranks is not None:
                        top1[i, c] = ranks[k] == 1
                    elif k < len(tops) and tops[k]:
                        top1[i, c] = float(got[k]) >= max(tops[k].values()) - 1e-6
            if progress is not None:
                progress(len(group))
        nan = torch.full_like(lp, math.nan)
        mask = torch.arange(width)[None, :] < n_scored[:, None]
        return TokenStats(token_logprob=lp.masked_fill(~mask, 0.0), mean_logprob=nan.masked_fill(~mask, 0.0),
                          std_logprob=nan.masked_fill(~mask, 0.0), mask=mask, n_scored=n_scored, truncated=truncated,
                          token_id=ids, token_is_top1=top1)

    def _map(self, fn, items):
        """``fn`` over ``items`` on ``concurrency`` threads; results in input order."""
        if self.concurrency <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    # ---- the model contract: generation
    def generate(self, prompts, *, max_new_tokens: int, seeds=None, top_k: int = 40, temperature=1.0,
                 min_new_tokens: int = 0, eos_id="model", greedy: bool = False, temperature_decay=None,
                 num_beams: int = 1, pad_id=None, vocab_limit=None) -> list[Generated]:
        """Continuations of token-id prompts from ``/v1/completions`` (the module docstring says how).

        Arguments as :func:`llm_mia.models.generation.generate`; ``eos_id`` None means "do not stop at
        EOS" (vLLM ``ignore_eos``); the default, "model", is the model's EOS ids. ``pad_id`` and
        ``vocab_limit`` have no meaning over the API (the server masks nothing it does not serve).

        Raises:
            LlmMiaError: temperature decay (no API sets a per-step temperature), a callable
                temperature, top-k / beams / a minimum length on a server without vLLM's
                extensions, missing seeds for sampling, a prompt that does not fit the context.
        """
        if self.api == "chat":
            raise LlmMiaError("api=chat cannot continue a token prompt (it wraps the prompt in a chat template): "
                              "use an endpoint with /v1/completions")
        if temperature_decay is not None or callable(temperature):
            raise LlmMiaError("temperature decay changes the temperature at every generated token, which an HTTP API "
                              "cannot do: leave the temperature-decay strategy out (--strategy top-k,internet)")
        if num_beams > 1 and not greedy:
            raise LlmMiaError("beam search is deterministic: use it with greedy=True")
        prompts = [list(p) for p in prompts]
        if any(not p for p in prompts):
            raise LlmMiaError("every generation prompt needs at least one token (e.g. the BOS token)")
        if self.max_context is not None and max(map(len, prompts), default=0) + max_new_tokens > self.max_context:
            raise LlmMiaError(f"prompt of {max(map(len, prompts))} tokens + {max_new_tokens} new tokens exceeds the "
                              f"model's context of {self.max_context} tokens")
        if eos_id == "model":
            eos_id = self.eos_ids or None
        eos = [] if eos_id is None else [int(eos_id)] if isinstance(eos_id, int) else [int(e) for e in eos_id]
        stop_at_eos = eos_id is not None
        vllm = self.server == "vllm"
        ext: dict = {}
        if vllm:
            ext["return_token_ids"] = True
            ext["ignore_eos"] = not stop_at_eos
            if stop_at_eos:
                ext["stop_token_ids"] = [int(e) for e in eos]
            if min_new_tokens:
                ext["min_tokens"] = int(min(min_new_tokens, max_new_tokens))
        else:
            if (not greedy and top_k) or num_beams > 1 or (min_new_tokens and min_new_tokens < max_new_tokens):
                raise LlmMiaError("top-k sampling, beam search and a minimum length need vLLM's API extensions; "
                                  f"{self.url} is not a vLLM server")
        kw: dict = {"max_tokens": int(max_new_tokens)}
        if not vllm and min_new_tokens >= max_new_tokens and eos:
            kw["logit_bias"] = {str(e): -100 for e in eos}  # EOS never emitted (the OpenAI API's own way)
        if greedy:
            kw["temperature"] = 0.0
            if num_beams > 1:
                ext.update(use_beam_search=True, length_penalty=0.0)
                kw["n"] = int(num_beams)
            if ext:
                kw["extra_body"] = ext
            groups = [prompts[b:b + self.batch] for b in range(0, len(prompts), self.batch)]
            res = []
            for got in self._map(lambda g: self._completions(g, **kw), groups):
                res.extend(got[::int(num_beams)])  # the best beam of each prompt comes first
            choices = res
        else:
            if seeds is None or len(seeds) != len(prompts):
                raise LlmMiaError("sampling needs one seed per prompt")
            kw["temperature"] = float(temperature)
            if top_k:
                ext["top_k"] = int(top_k)

            def one(job):
                p, s = job  # one request per sample: the seed is per request
                return self._completions([p], seed=int(s) % (2 ** 63), extra_body=ext or None, **kw)[0]

            choices = self._map(one, list(zip(prompts, seeds)))
        out = []
        for p, ch in zip(prompts, choices):
            new = _token_ids(ch, self)
            stop = [k for k, t in enumerate(new) if t in eos] if stop_at_eos else []
            out.append(Generated(prompt=p, new_ids=new[:stop[0]] if stop else new))
        return out

    def chat_generate(self, user_texts, *, max_new_tokens: int, seeds, top_k: int = 40) -> list[str]:
        """Sampled replies (text) to one user turn each through ``/v1/chat/completions``: one counted
        request per sample (the seed is per request); top-k only on a vLLM server.

        Raises:
            LlmMiaError: an endpoint whose api is not chat, a reply without a message.
        """
        if self.api != "chat":
            raise LlmMiaError(f"/v1/chat/completions is used only with api=chat (this endpoint: api={self.api})")
        ext = {"top_k": int(top_k)} if top_k and self.server == "vllm" else None

        def one(job):
            text, s = job
            reply = self._call(self.client.chat.completions.with_raw_response.create, 1,
                               messages=[{"role": "user", "content": text}], max_tokens=int(max_new_tokens),
                               temperature=1.0, seed=int(s) % (2 ** 63), extra_body=ext)
            try:
                return str(reply.choices[0].message.content or "")
            except (AttributeError, IndexError):
                raise LlmMiaError(f"the endpoint {self.url} answered a chat completion without a message") from None

        return self._map(one, list(zip(user_texts, seeds)))


def _parsed(raw, url: str):
    """The parsed reply of a raw API response, or one line saying what the server sent instead (a body
    that is not JSON, truncated JSON, an HTML page)."""
    status = getattr(raw, "status_code", None) or getattr(getattr(raw, "http_response", None), "status_code", "?")
    try:
        reply = raw.parse()
    except ValueError as e:  # json.JSONDecodeError: a truncated or broken JSON body
        raise LlmMiaError(f"the endpoint {url} answered {status} with JSON it cut short or broke "
                          f"({' '.join(str(e).split())[:120]})") from None
    if isinstance(reply, (str, bytes)) or not hasattr(reply, "choices"):
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        kind = "an HTML page" if "<html" in text[:500].lower() or "<!doctype" in text[:500].lower() else "a non-JSON body"
        raise LlmMiaError(f"the endpoint {url} answered {status} with {kind} instead of an OpenAI API reply "
                          f"({' '.join(text.split())[:80]!r}); is the URL the API's /v1 root?")
    return reply


#: A log-prob above 0 by less than this is float rounding on the server (clamped to 0); more is refused.
LOGPROB_SLACK = 1e-5


def _checked_logprob(x, url: str, pos: int) -> float:
    """``x`` as a log-prob: a finite number <= 0 (up to :data:`LOGPROB_SLACK`), else a one-line error
    naming the endpoint and what it returned (null, NaN, infinite or positive)."""
    f = float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None
    if f is None or not math.isfinite(f) or f > LOGPROB_SLACK:
        shown = "null" if x is None else f"{x:+g}" if f is not None else repr(x)
        raise LlmMiaError(f"the endpoint {url} returned log-prob {shown} at prompt position {pos} "
                          "(a log-prob must be a finite number <= 0)")
    return min(f, 0.0)


def _first_line(e: Exception) -> str:
    """The server's message of an API error (its JSON ``message`` when there is one), on one line, the
    API key masked should a server echo it."""
    body = getattr(e, "body", None)
    msg = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = body.get("message") or (err.get("message") if isinstance(err, dict) else err)
    msg = " ".join(str(msg or e).split()) or type(e).__name__
    key = _api_key()
    return (msg.replace(key, "***") if key != "EMPTY" else msg)[:300]


def _ranks(choice) -> list[int] | None:
    """vLLM's rank of each prompt token (``prompt_logprobs``), or None when the server gives none."""
    pl = (getattr(choice, "model_extra", None) or {}).get("prompt_logprobs")
    if not pl:
        return None
    out = []
    ids = (getattr(choice, "model_extra", None) or {}).get("prompt_token_ids")
    for k, d in enumerate(pl):
        if d is None:
            out.append(0)
            continue
        tid = str(ids[k]) if ids else None
        entry = d.get(tid) if tid is not None else None
        if entry is None:
            return None
        out.append(int(entry.get("rank", 0)))
    return out


def _token_ids(choice, m: EndpointModel) -> list[int]:
    """The generated ids: vLLM's ``token_ids``, else the returned text re-encoded locally."""
    ids = (getattr(choice, "model_extra", None) or {}).get("token_ids")
    if ids is not None:
        return [int(t) for t in ids]

    return text_ids(m.tokenizer, choice.text or "")


def _local_tokenizer(spec: str):
    from transformers import AutoTokenizer

    folder = resolve_folder(spec, what="tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(folder)), folder
    except Exception as e:
        raise LlmMiaError(f"could not load the tokenizer '{spec}': {_first_line(e)}") from None


def load_endpoint(spec: str, model_args: dict | None = None) -> EndpointModel:
    """Connect to ``openai:URL`` and check it before any long work.

    ``model_args`` (``--model-args``): ``name`` (the served model; default: the only one in
    ``/v1/models``), ``api`` (completions | chat | text; default: detected with one probe call),
    ``tokenizer`` (the served model's tokenizer, a folder or hub id; default: the served name or its
    ``root`` when that is a local folder), ``top_logprobs`` (K of the completions API, default 1),
    ``batch`` (prompts per request, 32), ``concurrency`` (requests in flight, 4), ``max_retries``
    (of the client's backoff, 5) and ``timeout`` (seconds per request, 120).

    Raises:
        LlmMiaError: one line, exit 2: a URL that is not http(s), an unreachable endpoint, a refused
            key (401), a model name not served (with the served names), no tokenizer to be found, an
            endpoint that offers none of the APIs.
    """
    try:
        import openai
    except ImportError:
        raise LlmMiaError("--model openai:URL needs the openai client: pip install 'llm_mia[api]'") from None

    args = dict(model_args or {})
    bad = sorted(set(args) - set(ENDPOINT_ARGS))
    if bad:
        raise LlmMiaError(f"--model-args {bad[0]} does not apply to an openai: endpoint (keys: {', '.join(ENDPOINT_ARGS)})")
    url = spec[len(PREFIX):].rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LlmMiaError(f"--model {spec}: give the endpoint's base URL, e.g. openai:http://127.0.0.1:8000/v1")
    api = args.get("api")
    if api is not None and api not in APIS:
        raise LlmMiaError(f"--model-args api must be one of {', '.join(APIS)}, got '{api}'")
    k = _int_arg(args, "top_logprobs", 1, 1)
    timeout = float(_int_arg(args, "timeout", 120, 1))
    client = openai.OpenAI(base_url=url, api_key=_api_key(), max_retries=_int_arg(args, "max_retries", 5, 0),
                           timeout=timeout)
    try:
        served = client.with_options(max_retries=1, timeout=min(timeout, 15.0)).models.list().data
    except openai.APIConnectionError as e:
        raise LlmMiaError(f"cannot reach the endpoint {url} ({_first_line(e)})") from None
    except openai.AuthenticationError:
        raise LlmMiaError(f"the endpoint {url} refused the API key (401): set {KEY_VARS[0]} (or {KEY_VARS[1]})") from None
    except openai.APIStatusError as e:
        raise LlmMiaError(f"the endpoint {url} answered {e.status_code} to GET /models: {_first_line(e)}") from None
    names = [m.id for m in served]
    name = args.get("name")
    if name is None:
        if len(names) != 1:
            raise LlmMiaError(f"{url} serves {len(names)} models ({', '.join(names) or 'none'}): choose one with "
                              f"--model-args name=...")
        name = names[0]
    elif name not in names:
        raise LlmMiaError(f"{url} does not serve the model '{name}' (served: {', '.join(names) or 'none'})")
    info = next(m for m in served if m.id == name)
    extra = getattr(info, "model_extra", None) or {}
    server = "vllm" if getattr(info, "owned_by", None) == "vllm" else "openai"
    tok_spec = args.get("tokenizer")
    if tok_spec is None:
        for cand in (name, extra.get("root")):
            if cand and os.path.isdir(os.path.expanduser(str(cand))):
                tok_spec = str(cand)
                break
    if tok_spec is None:
        raise LlmMiaError(f"no local tokenizer for '{name}': pass --model-args tokenizer=FOLDER_OR_HUB_ID (the served "
                          f"model's tokenizer; prompts are sent as its token ids)")
    tokenizer, tok_folder = _local_tokenizer(tok_spec)
    max_context = extra.get("max_model_len")
    if not isinstance(max_context, int) or max_context < 2:
        cfg = tok_folder / "config.json"
        max_context = None
        if cfg.is_file():
            c = json.loads(cfg.read_text(encoding="utf-8"))
            max_context = next((c[k] for k in ("n_positions", "max_position_embeddings") if isinstance(c.get(k), int)), None)
    m = EndpointModel(tokenizer=tokenizer, source=f"{PREFIX}{url} ({name})", max_context=max_context, url=url,
                      name=name, api=api or "completions", server=server, top_logprobs=k, client=client,
                      batch=_int_arg(args, "batch", 32, 1), concurrency=_int_arg(args, "concurrency", 4, 1))
    if api is None:
        m.api = _detect_api(m)
    return m


def _detect_api(m: EndpointModel) -> str:
    """completions (echo + logprobs answered), else chat (logprobs answered), else text: probe calls, counted."""
    import openai

    m.stage = "api detection"
    bos = m.bos_id
    refused = []  # (probe, why) of the probes the server turned down with a 4xx

    def probe(what: str, fn):
        try:
            return fn()
        except (LlmMiaError, openai.OpenAIError) as e:
            if not _is_refusal(e):  # unreachable, bad key, 5xx, 429, HTML, broken JSON: what it is
                raise LlmMiaError(f"{' '.join(str(e).split())} (while probing {what})") from None
            refused.append((what, " ".join(str(e).split())))
            return None

    ch = probe("/v1/completions with echo + logprobs",
               lambda: m._completions([[bos, bos]], max_tokens=0, echo=True, logprobs=1, temperature=0.0))
    got = ch[0].logprobs.token_logprobs if ch and ch[0].logprobs is not None else None
    if got is not None and len(got) >= 2 and got[1] is not None:
        return "completions"
    if probe("/v1/chat/completions with logprobs", lambda: m._call(
            m.client.chat.completions.with_raw_response.create, 1, messages=[{"role": "user", "content": "a"}],
            max_tokens=1, logprobs=True, top_logprobs=1)) is not None:
        return "chat"
    n_before = len(refused)
    probe("/v1/completions (text only)", lambda: m._completions([[bos]], max_tokens=1, temperature=0.0))
    if len(refused) > n_before:  # not even text: no API this tool can use
        raise LlmMiaError(f"the endpoint {m.url} turned down every API probe: "
                          + "; ".join(f"{w}: {why}" for w, why in refused))
    return "text"


def _is_refusal(e: Exception) -> bool:
    """A 4xx answer (other than 401 and 429) to a probe: this API or option is not offered."""
    msg = str(e)
    if "cannot reach" in msg or "refused the API key" in msg:
        return False
    code = getattr(e, "status_code", None)
    if code is None:
        hit = re.search(r"answered (\d{3})[: ]", msg)
        code = int(hit.group(1)) if hit else None
    return code is not None and 400 <= code < 500 and code not in (401, 429)
