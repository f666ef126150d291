"""Exposure of planted secrets and their extraction (Carlini et al. 2019, "The Secret Sharer").

All exposures are in **bits**, with one sign convention: higher = more exposed (more memorized).

Log-perplexity (Carlini et al. 2019, sec. 3, "Definition 1"): for the secret sentence
s = prefix + r + suffix, tokenized as a whole and conditioned on the model's BOS id,
``Px(s) = sum_t -log2 p(s_t | s_<t)`` over all of its tokens, in bits. It is computed identically for
a planted secret and for every candidate, and candidates are compared by that sum, never by a
per-token mean (a candidate whose random part takes more tokens is not averaged away).

Estimators of one secret's exposure (rank, exact, skew-normal extrapolated) are the pure math of
:mod:`llm_mia.exposure.estimators`; :func:`secret_exposure` computes every one of them per secret.

Extraction of one secret:

- ``greedy_extracted`` / ``beam_extracted``: greedy decoding / beam search from the prefix
  reproduces the secret (sec. 8, extraction by search).
- ``sample_probability``: the probability that one top-k (k = 40) sample continuing the prefix is
  exactly the secret's tokens, the product of the renormalised per-token probabilities, and
  ``samples_for_half``, the number of independent samples that extract it with probability 0.5;
  :func:`~llm_mia.exposure.estimators.queries_to_extract` counts the queries an attacker needs
  (greedy and sampled).

The model is run only by :mod:`llm_mia.models` (``score_shared_prefix``, ``generate``); this module
scores a secret's space, tries to extract it, and runs the pipeline.
"""

from __future__ import annotations

import csv
import io as _io
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_mia.core import io, parallel
from llm_mia.core.errors import LlmMiaError
from llm_mia.core.progress import bar
from llm_mia.data.secrets import (
    Secret,
    index_of,
    iter_space,
    load_secrets,
    partial_recovery,
    sample_candidates,
    space_size,
)
from llm_mia.exposure.estimators import (
    CHANCE_BITS,
    LN2,
    exact_exposure,
    expected_control_bits,
    extrapolated_exposure,
    rank_exposure,
    samples_for_half,
)
from llm_mia.membership.signals import total_nll
from llm_mia.models.hf import LoadedModel
from llm_mia.models.loading import load_model
from llm_mia.models.prefix import score_shared_prefix
from llm_mia.models.tokenizer import text_ids
from llm_mia.report.plots import exposure_plot

DEFAULT_REFERENCES = 10_000
DEFAULT_EXACT_LIMIT = 10**6


# --------------------------------------------------------------------------------- tokenization

@dataclass
class _Sentences:
    ids: list[list[int]]  # BOS-conditioned token ids of each whole sentence
    split: list[int]  # tokens lying wholly inside the prefix (BOS included)
    rand_end: list[int]  # one past the last token overlapping the prefix or the random part


def _tokenize(loaded: LoadedModel, prefix: str, randoms: Sequence[str], suffix: str) -> _Sentences:
    """Whole-sentence token ids (``encode(prepend_bos=True)``, the definition used for every score)
    plus, from the tokenizer's character offsets, the split after the prefix tokens and the end of
    the random part. Without offsets (slow tokenizers) the split is 1: whole-sentence scoring."""
    texts = [prefix + r + suffix for r in randoms]
    ids, _ = loaded.encode(texts, prepend_bos=True)
    plen = len(prefix)
    try:
        enc = loaded.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        offsets = None
    split, rand_end = [], []
    for i, (seq, r) in enumerate(zip(ids, randoms)):
        extra = len(seq) - (len(offsets[i]) if offsets is not None else 0)  # BOS / special tokens in front
        if offsets is None or extra < 0 or extra > 2 or list(enc["input_ids"][i]) != seq[extra:]:
            split.append(1)
            rand_end.append(len(seq))
            continue
        ends = [e for _, e in offsets[i]]
        starts = [s for s, _ in offsets[i]]
        k = 0
        while k < len(ends) and ends[k] <= plen:
            k += 1
        stop = plen + len(r)
        j = k
        while j < len(starts) and starts[j] < stop:
            j += 1
        split.append(max(1, extra + k))
        rand_end.append(max(extra + k, extra + j))
    return _Sentences(ids, split, rand_end)


def log_perplexity_bits(loaded: LoadedModel, sentences: Sequence[str], *, batch_size: int = 64,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Carlini et al. 2019 (sec. 3) log-perplexity of each sentence, by whole-sentence scoring.

    Sum over all of the sentence's tokens, conditioned on the model's BOS id (so the first token is
    scored too), of ``-log2 p(token | everything before it)``. Returns float64 (N,), bits. The slow,
    obviously-correct path: :func:`secret_exposure` gets the same numbers from the shared-prefix path.
    """

    ids, ctx = loaded.encode(sentences, prepend_bos=True)
    st = loaded.token_stats(ids, context_lens=ctx, batch_size=batch_size, moments=False, progress=progress)
    return total_nll(st).double().numpy() / LN2


@dataclass
class SpaceScores:
    """Scores of sentences ``prefix + r + suffix``: ``logppl`` float64 (N,) bits, and for rows asked
    for, ``sample_logprob`` (natural log of the top-k sample probability of the random part)."""

    logppl: np.ndarray
    sample_logprob: np.ndarray | None


def score_space(loaded: LoadedModel, prefix: str, randoms: Sequence[str], suffix: str, *, batch_size: int = 64,
                top_k: int | None = None, progress: Callable[[int], None] | None = None) -> SpaceScores:
    """Log-perplexity (bits, Carlini et al. 2019 sec. 3) of ``prefix + r + suffix`` for every r, via the
    shared-prefix KV cache. Equal to :func:`log_perplexity_bits` of the same sentences (to ~1e-4 bits);
    a sentence longer than the model's context is scored whole with its sliding context, as there.

    With ``top_k``, also the natural log of the probability that one top-k sample continuing the
    prefix tokens emits exactly the random part's tokens (sum over those tokens of
    ``log(p(token) / sum of the top-k p)``, -inf if one is outside the top k), shape (N,); NaN for a
    sentence longer than the context and for an endpoint (its API returns no top-k renormalisation).
    """
    sents = _tokenize(loaded, prefix, randoms, suffix)
    ctx = loaded.max_context
    fits = [i for i, x in enumerate(sents.ids) if ctx is None or len(x) <= ctx]
    long = [i for i, x in enumerate(sents.ids) if ctx is not None and len(x) > ctx]
    if loaded.model is None:  # an endpoint: no KV cache to share, whole sentences (no sample probability)
        long, fits = long + fits, []
    logppl = np.zeros(len(randoms))
    sample = np.full(len(randoms), np.nan) if top_k is not None else None
    if long:  # sentences longer than the context: whole-sentence scoring with a sliding context

        st = loaded.token_stats([sents.ids[i] for i in long], context_lens=1, batch_size=batch_size, moments=False,
                                progress=progress)
        logppl[long] = total_nll(st).double().numpy() / LN2  # sample probability stays NaN there
    if fits:
        res = score_shared_prefix(loaded.model, [sents.ids[i] for i in fits], [sents.split[i] for i in fits],
                                  batch_size=batch_size, top_k=top_k, max_context=ctx, progress=progress)
        logppl[fits] = -res.total_logprob.numpy() / LN2
        if top_k is not None:
            kk = res.tail_topk_logprob.double().numpy()
            for row, i in enumerate(fits):
                used = int(res.split[row])  # rows scored whole have split 1; their tail starts after BOS
                a, b = sents.split[i] - used, sents.rand_end[i] - used
                sample[i] = float(kk[row, a:b].sum()) if b > a else 0.0
    return SpaceScores(logppl=logppl + 0.0, sample_logprob=sample)


# --------------------------------------------------------------------------------- extraction

#: The contexts a secret's prefix is given in for greedy and beam extraction, in the order tried:
#: "start" ([BOS] + prefix), "none" (the prefix alone, no start token: the secret as it sits mid
#: document in a packed training stream) and "training" ([BOS] + the training document's text up to
#: the secret + the prefix, when the training texts are known). A secret is extracted when any
#: context gives it back; the row names the first one that did.
EXTRACTION_CONTEXTS = ("start", "none", "training")


@dataclass
class _Job:
    secret: int
    context: str
    prompt: list[int]
    target: list[int]  # the secret's tokens in the whole-text tokenization
    want: str  # the text from the end of the prompt's last token to the end of the secret
    budget: int


def _split_at_secret(loaded: LoadedModel, before: str, s: Secret) -> tuple[list[int], list[int], str] | None:
    """Tokenize ``before + s.text`` as a whole: (tokens wholly inside ``before + prefix``, the tokens
    that overlap the secret, the text from the end of the former to the end of the secret). None when
    the tokenizer gives no character offsets."""
    text = before + s.text
    plen, send = len(before) + len(s.prefix), len(before) + len(s.prefix) + len(s.secret)
    try:
        enc = loaded.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return None
    k = 0
    while k < len(offs) and offs[k][1] <= plen:
        k += 1
    j = k
    while j < len(offs) and offs[j][0] < send:
        j += 1
    start = offs[k - 1][1] if k else 0
    return ids[:k], ids[k:j], text[start:send]


def decode_extracted(loaded: LoadedModel, secrets: Sequence[Secret], *, num_beams: int = 1,
                     batch_size: int = 32, train_texts: Sequence[str] | None = None,
                     contexts: Sequence[str] = EXTRACTION_CONTEXTS, samples: int = 0, seed: int = 0) -> list[dict]:
    """Whether greedy decoding (``num_beams=1``) or beam search of each secret's prefix reproduces
    its random part (Carlini et al. 2019, sec. 8), in each of ``contexts`` (:data:`EXTRACTION_CONTEXTS`).

    The prompt and the expected tokens come from one tokenization of the whole text (context +
    prefix + secret + suffix): the prompt is the tokens lying wholly inside context + prefix, the
    expected continuation the tokens that overlap the secret. The secret counts as extracted when
    the generated ids start with those ids, or when the continuation decoded in the context of its
    prompt (:meth:`~llm_mia.models.hf.LoadedModel.decode_continuation`, so a SentencePiece
    decoder cannot strip a leading space, T3-08) starts with the text from the prompt's end to the
    secret's end. A prompt that would not fit the model's context with its continuation keeps its
    last tokens; the "none" context is skipped for a secret whose prefix has no whole token, the
    "training" one when no training text holds the secret.

    Returns:
        one dict per secret, in order: ``extracted`` (bool), ``context`` (the first context that gave
        it back, else None), ``completion`` (the decoded new text of that context, else of the first
        context tried), ``contexts_tried`` (list of names) and ``completions`` (every continuation:
        ``{"context", "text", "want"}``, ``want`` the text from the prompt's end to the secret's end).
        With ``samples`` > 0, each context is continued by that many top-k (k = 40, T = 1) samples
        instead of greedy / beam decoding, each seeded from ``seed``, the secret and the context.

    Raises:
        LlmMiaError: if the model's context is too short for the continuation, or an unknown context.
    """
    bad = [c for c in contexts if c not in EXTRACTION_CONTEXTS]
    if bad or not contexts:
        raise LlmMiaError(f"unknown extraction context {bad[0] if bad else '(none)'!r}; use {EXTRACTION_CONTEXTS}")
    tok = loaded.tokenizer
    jobs: list[_Job] = []
    for i, s in enumerate(secrets):
        before = {"start": "", "none": ""}
        if "training" in contexts and train_texts:
            doc = next((t for t in train_texts if s.text in t), None)
            if doc is not None and doc.index(s.text) > 0:
                before["training"] = doc[:doc.index(s.text)]
        for c in contexts:
            if c not in before:
                continue
            split = _split_at_secret(loaded, before[c], s)
            if split is None:  # no offsets (slow tokenizer): the prefix without its trailing space
                p = s.prefix.rstrip()
                split = (text_ids(tok, before[c] + p), [], s.prefix[len(p):] + s.secret)
            p_ids, target, want = split
            if c != "none":
                p_ids = [loaded.bos_id] + p_ids
            if not p_ids:
                continue
            budget = len(tok(want + s.suffix, add_special_tokens=False)["input_ids"]) + 2
            jobs.append(_Job(i, c, p_ids, target, want, budget))
    results = _run_jobs(loaded, jobs, num_beams=num_beams, batch_size=batch_size, samples=samples, seed=seed)
    out = []
    for i in range(len(secrets)):
        tried = [c for c in contexts if (i, c) in results]
        hit = next((c for c in tried if any(ok for ok, _ in results[(i, c)])), None)
        shown = hit or (tried[0] if tried else None)
        first = next((t for ok, t in results[(i, shown)] if ok), results[(i, shown)][0][1]) if shown else ""
        wants = {j.context: j.want for j in jobs if j.secret == i}
        out.append({"extracted": hit is not None, "context": hit, "completion": first, "contexts_tried": tried,
                    "completions": [{"context": c, "text": t, "want": wants[c]} for c in tried
                                    for _, t in results[(i, c)]]})
    return out


def _run_jobs(loaded: LoadedModel, jobs: list[_Job], *, num_beams: int, batch_size: int, samples: int,
              seed: int) -> dict[tuple[int, str], list[tuple[bool, str]]]:
    """Generate every job's continuation (greedy / beam search, or ``samples`` top-k samples each when
    ``samples > 0``): (secret, context) -> [(reproduces the secret, decoded continuation)]."""
    jobs = sorted(jobs, key=lambda j: len(j.prompt))  # similar lengths together: little left padding
    runs = [(j, r) for j in jobs for r in range(max(samples, 1))]
    ctx = loaded.max_context
    step = max(1, batch_size // num_beams)
    results: dict[tuple[int, str], list[tuple[bool, str]]] = {}
    for b0 in range(0, len(runs), step):
        batch = runs[b0:b0 + step]
        budget = max(j.budget for j, _ in batch)
        prompts = [j.prompt for j, _ in batch]
        if ctx:  # keep the end of a prompt that would not fit with its continuation
            keep = ctx - budget
            if keep < 1:
                raise LlmMiaError(f"model context of {ctx} tokens is too short for these secrets")
            prompts = [p[-keep:] for p in prompts]
        if samples:
            seeds = [seed * 1_000_003 + j.secret * 1009 + EXTRACTION_CONTEXTS.index(j.context) * 101 + r
                     for j, r in batch]
            gens = loaded.generate(prompts, max_new_tokens=budget, seeds=seeds)
        else:
            gens = loaded.generate(prompts, max_new_tokens=budget, greedy=True, num_beams=num_beams)
        for (j, _), p, g in zip(batch, prompts, gens):
            text = loaded.decode_continuation(p, g.new_ids)
            by_ids = bool(j.target) and g.new_ids[:len(j.target)] == j.target
            results.setdefault((j.secret, j.context), []).append((by_ids or text.startswith(j.want), text))
    return results


def greedy_extracted(loaded: LoadedModel, secrets: Sequence[Secret], *, batch_size: int = 32,
                     train_texts: Sequence[str] | None = None) -> list[dict]:
    """Greedy extraction (see :func:`decode_extracted`): dicts with ``greedy_extracted``,
    ``greedy_context``, ``greedy_completion``."""
    return [{"greedy_extracted": d["extracted"], "greedy_context": d["context"], "greedy_completion": d["completion"]}
            for d in decode_extracted(loaded, secrets, num_beams=1, batch_size=batch_size, train_texts=train_texts)]


# --------------------------------------------------------------------------------- pipeline

@dataclass
class ExposureResult:
    """Per-secret exposure records (dicts, in the order of the secrets given), the settings used and
    the controls' summary (see :func:`control_summary`)."""

    rows: list[dict]
    n_references: int
    exact_limit: int
    seed: int
    beams: int
    top_k: int
    controls: dict

    @property
    def n_candidates(self) -> int:  # the name used by earlier reports
        return self.n_references


def control_summary(rows: Sequence[dict], n_references: int) -> dict:
    """How far the never-inserted controls' mean rank exposure sits from chance.

    A control's rank is uniform, so its rank exposure has mean ``expected_control_bits(N)`` (-> 1/ln 2
    = 1.44 bits) and standard deviation about 1/ln 2 bits; ``z`` is the difference in standard
    errors. Returns ``{"n": 0}`` when there are no controls.
    """
    ctrl = [r["exposure_rank"] for r in rows if r["count"] == 0]
    if not ctrl:
        return {"n": 0}
    m = float(np.mean(ctrl))
    exp = expected_control_bits(n_references)
    se = CHANCE_BITS / math.sqrt(len(ctrl))
    return {"n": len(ctrl), "mean_exposure_rank": m, "expected_bits": exp, "chance_bits": CHANCE_BITS,
            "difference_bits": m - exp, "stderr_bits": se, "z": (m - exp) / se}


#: The largest --exact-limit accepted: enumerating 10^9 sentences already takes days on a CPU.
MAX_EXACT_LIMIT = 10**9


def exposure_work(secrets: Sequence[Secret], n_references: int, exact_limit: int) -> int:
    """Sentences :func:`secret_exposure` scores (its ``progress`` total): the secret and its
    ``n_references`` candidates per secret, plus each distinct (format, prefix, suffix) space of at
    most ``exact_limit`` members once."""
    groups = {(s.format, s.prefix, s.suffix) for s in secrets if space_size(s.format) <= exact_limit}
    return len(secrets) * (n_references + 1) + sum(space_size(f) for f, _, _ in groups)


def _check_exposure_args(n_references: int, exact_limit: int, beams: int, top_k: int) -> None:
    """:func:`secret_exposure`'s settings checked. Raises LlmMiaError: a non-int, n_references < 1,
    exact_limit < 0 or above :data:`MAX_EXACT_LIMIT`, beams < 1, top_k < 1."""
    for name, v, lo in (("number of references", n_references, 1), ("exact limit", exact_limit, 0),
                        ("beams", beams, 1), ("top-k", top_k, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise LlmMiaError(f"{name} must be an int >= {lo}, got {v!r}")
    if exact_limit > MAX_EXACT_LIMIT:
        raise LlmMiaError(f"exact limit {exact_limit} would enumerate spaces of up to that many sentences; "
                          f"use at most {MAX_EXACT_LIMIT:.0e} (10^6 takes ~13 min per secret on a 2-core CPU)")


def _sampled_row(loaded: LoadedModel, s: Secret, candidates: list[str], *, top_k: int, batch_size: int,
                 progress: Callable[[int], None] | None) -> dict:
    """One secret's exposure record from its ``candidates`` (N random parts of its space): the
    log-perplexity (bits), rank and extrapolated exposure (bits), the top-k sample probability and
    samples for a 1/2 chance, and flags; ``exposure_exact`` NaN (filled in by :func:`_exact_exposures`)."""
    n_references = len(candidates)
    sc = score_space(loaded, s.prefix, [s.secret] + candidates, s.suffix, batch_size=batch_size, top_k=top_k,
                     progress=progress)
    lp, ref = float(sc.logppl[0]), sc.logppl[1:]
    flags: list[str] = []
    nonfinite = int((~np.isfinite(ref)).sum())
    ext = extrapolated_exposure(lp, ref)
    flags += ext.flags
    slp = float(sc.sample_logprob[0])
    if math.isnan(slp):
        p, half = float("nan"), float("nan")
        flags.append("sentence_longer_than_context" if loaded.model is not None
                     else "sample_probability_needs_the_top_k_distribution")
    else:
        p = min(max(math.exp(slp), 0.0), 1.0)
        half = samples_for_half(p)
    return {"id": s.id, "kind": s.kind, "count": s.count, "format": s.format, "space_size": s.space_size,
            "log_perplexity_bits": lp, "n_references": n_references,
            "n_references_nonfinite": nonfinite,
            "exposure_rank": float(rank_exposure(lp, ref)), "max_exposure_rank": math.log2(n_references),
            "exposure_exact": float("nan"), "exposure_extrapolated": ext.bits,
            "skewnorm": list(ext.params) if ext.params else None,
            "sample_probability": p, "sample_log2_probability": float(sc.sample_logprob[0]) / LN2,
            "samples_for_half": half, "flags": flags}


def _exact_exposures(loaded: LoadedModel, secrets: Sequence[Secret], logppl: Sequence[float], *, exact_limit: int,
                     batch_size: int, progress: Callable[[int], None] | None) -> dict[int, float]:
    """Exact exposure (bits, :func:`~llm_mia.exposure.estimators.exact_exposure`) of each secret whose
    space has at most ``exact_limit`` members, by index into ``secrets``; ``logppl`` (S,) their
    log-perplexities in bits. One enumeration per (format, prefix, suffix), counts for every secret
    sharing it; secrets with larger spaces are left out of the dict."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, s in enumerate(secrets):
        if space_size(s.format) <= exact_limit:
            groups.setdefault((s.format, s.prefix, s.suffix), []).append(i)
    out: dict[int, float] = {}
    for (fmt, prefix, suffix), members in groups.items():
        own = {i: index_of(fmt, secrets[i].secret) for i in members}
        lps = {i: logppl[i] for i in members}
        counts = dict.fromkeys(members, 0)
        offset = 0
        for chunk in iter_space(fmt, chunk=max(batch_size, 4096)):
            v = score_space(loaded, prefix, chunk, suffix, batch_size=batch_size, progress=progress).logppl
            for i in members:
                le = v <= lps[i]
                j = own[i] - offset
                if 0 <= j < len(chunk):
                    le[j] = False  # the secret itself is not counted against itself
                counts[i] += int(le.sum())
            offset += len(chunk)
        for i in members:
            out[i] = exact_exposure(space_size(fmt), counts[i])
    return out


def best_recovery(s: Secret, completions: dict[str, Sequence[dict]]) -> dict:
    """The completion that reproduces most of ``s``'s random part in place (partial extraction).

    Args:
        s: the secret.
        completions: source (``"greedy"``, ``"beam"``, ``"sampled"``) -> continuations of its prefix
            (``{"context", "text", "want"}`` of :func:`decode_extracted`). A continuation is aligned
            with the secret where it would sit: at ``len(want) - len(s.secret)`` characters.

    Returns:
        ``recovered_chars`` and ``remaining_guess_bits`` (:func:`llm_mia.data.secrets.partial_recovery`:
        random characters reproduced in place; log2 of the members of the space agreeing with them,
        bits) of the best continuation (most characters; the first in source, context, sample order
        on a tie), with its ``recovery_source`` and ``recovery_context`` (None with no continuation,
        which recovers 0 characters and leaves log2 |R| bits).
    """
    best = {"recovered_chars": 0, "remaining_guess_bits": math.log2(space_size(s.format)),
            "recovery_source": None, "recovery_context": None}
    for source, comps in completions.items():
        for c in comps:
            off = len(c["want"]) - len(s.secret)
            guess = c["text"][off:off + len(s.secret)] if off >= 0 else ""
            got, bits = partial_recovery(s.format, s.secret, guess)
            if got > best["recovered_chars"]:
                best = {"recovered_chars": got, "remaining_guess_bits": bits, "recovery_source": source,
                        "recovery_context": c["context"]}
    return best


def _extraction_fields(loaded: LoadedModel, secrets: Sequence[Secret], *, beams: int,
                       train_texts: Sequence[str] | None, recovery_samples: int = 0, seed: int = 0) -> list[dict]:
    """Greedy and beam extraction of each secret (:func:`decode_extracted`), one dict of row fields per
    secret: ``greedy_/beam_extracted``, ``greedy_/beam_context``, ``greedy_/beam_completion``,
    ``extraction_contexts``, and the partial recovery (:func:`best_recovery`) over the greedy, beam
    and ``recovery_samples`` sampled continuations of each context."""
    greedy = decode_extracted(loaded, secrets, num_beams=1, train_texts=train_texts)
    beam = decode_extracted(loaded, secrets, num_beams=beams, train_texts=train_texts)
    sampled = (decode_extracted(loaded, secrets, train_texts=train_texts, samples=recovery_samples, seed=seed)
               if recovery_samples else [{"completions": []}] * len(secrets))
    return [{"greedy_extracted": g["extracted"], "greedy_context": g["context"],
             "greedy_completion": g["completion"], "beam_extracted": b["extracted"],
             "beam_context": b["context"], "beam_completion": b["completion"],
             "extraction_contexts": g["contexts_tried"],
             **best_recovery(s, {"greedy": g["completions"], "beam": b["completions"], "sampled": x["completions"]})}
            for s, g, b, x in zip(secrets, greedy, beam, sampled)]


def secret_exposure(loaded: LoadedModel, secrets: Sequence[Secret], *, n_references: int = DEFAULT_REFERENCES,
                    exact_limit: int = DEFAULT_EXACT_LIMIT, seed: int = 0, beams: int = 5, top_k: int = 40,
                    batch_size: int = 64, progress: Callable[[int], None] | None = None,
                    n_candidates: int | None = None, train_texts: Sequence[str] | None = None,
                    recovery_samples: int = 4) -> ExposureResult:
    """Every estimator of exposure and extraction for each secret (controls with ``count`` 0 included).

    Args:
        loaded: the model under audit.
        secrets: from ``secrets.json`` (:func:`llm_mia.data.secrets.load_secrets`).
        n_references: N, candidates drawn uniformly (with replacement) from each secret's space with
            ``random.Random(seed * 1_000_003 + i)`` for the i-th secret, placed between its prefix and suffix.
        exact_limit: spaces of at most this many members are enumerated whole for ``exposure_exact``
            (one enumeration per distinct format + prefix + suffix); larger ones get NaN.
        beams: beams of ``beam_extracted``; top_k: k of ``sample_probability``.
        batch_size: tail rows per forward pass of the shared-prefix scorer.
        progress: called with the number of sentences scored.
        n_candidates: old name of ``n_references``.
        train_texts: the training documents, for the "training" extraction context (the text that
            precedes the secret in its document; :data:`EXTRACTION_CONTEXTS`).
        recovery_samples: top-k samples per context, beside greedy and beam, for the partial recovery
            (``recovered_chars``, ``remaining_guess_bits``: :func:`best_recovery`); 0: none.

    Returns:
        :class:`ExposureResult`; each row has ``id, kind, count, format, space_size,
        log_perplexity_bits, exposure_rank, max_exposure_rank (log2 N), exposure_exact,
        exposure_extrapolated, skewnorm (a, loc, scale), greedy_extracted, greedy_context,
        greedy_completion, beam_extracted, beam_context, beam_completion, extraction_contexts
        (the contexts tried, :data:`EXTRACTION_CONTEXTS`), sample_probability, samples_for_half,
        recovered_chars, remaining_guess_bits, recovery_source, recovery_context, flags``. Bits; higher =
        more exposed (``remaining_guess_bits``: lower = more exposed); NaN + a flag where undefined.

    Raises:
        LlmMiaError: n_references < 1, exact_limit < 0, beams < 1, top_k < 1, a sentence longer than
            the model's context.
    """
    if n_candidates is not None:
        n_references = n_candidates
    _check_exposure_args(n_references, exact_limit, beams, top_k)
    if isinstance(recovery_samples, bool) or not isinstance(recovery_samples, int) or recovery_samples < 0:
        raise LlmMiaError(f"recovery samples must be a non-negative int, got {recovery_samples!r}")
    secrets = list(secrets)
    rows = [_sampled_row(loaded, s, sample_candidates(s.format, n_references, random.Random(seed * 1_000_003 + i)),
                         top_k=top_k, batch_size=batch_size, progress=progress) for i, s in enumerate(secrets)]
    exact = _exact_exposures(loaded, secrets, [r["log_perplexity_bits"] for r in rows], exact_limit=exact_limit,
                             batch_size=batch_size, progress=progress)
    for i, r in enumerate(rows):
        if i in exact:
            r["exposure_exact"] = exact[i]
        else:
            r["flags"].append("exact_skipped_space_above_limit")
    for r, x in zip(rows, _extraction_fields(loaded, secrets, beams=beams, train_texts=train_texts,
                                             recovery_samples=recovery_samples, seed=seed)):
        r.update(x)
    return ExposureResult(rows=rows, n_references=n_references, exact_limit=exact_limit, seed=seed, beams=beams,
                          top_k=top_k, controls=control_summary(rows, n_references))


def exposure_by_count(rows: Sequence[dict]) -> list[dict]:
    """Per (insertion count, kind): number of secrets, mean rank / exact / extrapolated exposure (bits;
    exact and extrapolated over the secrets where defined and finite, with how many), and how many
    were extracted by greedy decoding, by beam search, and (if known) surfaced in samples."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["count"], r["kind"]), []).append(r)
    out = []
    for (count, kind), rs in sorted(groups.items()):
        ex = [r["exposure_exact"] for r in rs if np.isfinite(r.get("exposure_exact", np.nan))]
        xt = [r["exposure_extrapolated"] for r in rs if np.isfinite(r.get("exposure_extrapolated", np.nan))]
        out.append({"count": count, "kind": kind, "n": len(rs),
                    "mean_exposure_rank": float(np.mean([r["exposure_rank"] for r in rs])),
                    "mean_exposure_exact": float(np.mean(ex)) if ex else float("nan"), "n_exact": len(ex),
                    "mean_exposure_extrapolated": float(np.mean(xt)) if xt else float("nan"),
                    "n_extrapolated_finite": len(xt),
                    "n_extrapolated_inf": sum(r.get("exposure_extrapolated") == math.inf for r in rs),
                    "greedy_extracted": sum(bool(r["greedy_extracted"]) for r in rs),
                    "beam_extracted": sum(bool(r.get("beam_extracted")) for r in rs),
                    "min_remaining_guess_bits": min((r["remaining_guess_bits"] for r in rs
                                                     if r.get("remaining_guess_bits") is not None), default=None),
                    "surfaced_in_samples": sum(r.get("surfaced_in_samples", 0) > 0 for r in rs)})
    return out


CSV_COLUMNS = ["id", "kind", "count", "format", "space_size", "log_perplexity_bits", "n_references",
               "exposure_rank", "max_exposure_rank", "exposure_exact", "exposure_extrapolated",
               "greedy_extracted", "greedy_context", "beam_extracted", "beam_context", "sample_probability", "samples_for_half",
               "recovered_chars", "remaining_guess_bits", "flags"]


def rows_to_csv(rows: Sequence[dict]) -> str:
    """The per-secret rows as CSV text (columns :data:`CSV_COLUMNS`; flags joined by ``;``)."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([";".join(r[c]) if c == "flags" else r.get(c) for c in CSV_COLUMNS])
    return buf.getvalue()


def run_exposure(model: str, secrets_path: str | Path, out_dir: str | Path, *,
                 n_references: int = DEFAULT_REFERENCES, exact_limit: int = DEFAULT_EXACT_LIMIT, seed: int = 0,
                 beams: int = 5, batch_size: int = 64, device: str | None = None,
                 progress: bool = True, model_args: str | None = None, engine: str = "hf") -> ExposureResult:
    """``llm-mia exposure``: every secret of ``secrets_path`` against ``model``; writes
    ``out_dir/exposure.json``, ``exposure.csv`` and ``exposure.png`` (exposure against insertion count).

    Inputs are validated before the model runs; files are written atomically only at the end, so a
    failure leaves no partial output.

    Raises:
        LlmMiaError: missing/corrupt secrets file, unknown format field, unknown model, bad settings.
    """

    secrets = load_secrets(secrets_path)
    if not secrets:
        raise LlmMiaError(f"{secrets_path}: holds no secrets")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LlmMiaError(f"--out {out} exists and is not a folder")
    loaded = load_model(model, device=parallel.process_device(device), model_args=model_args, engine=engine)
    with bar("exposure", exposure_work(secrets, n_references, exact_limit),
             enabled=progress and parallel.is_main()) as adv:
        res = secret_exposure(loaded, secrets, n_references=n_references, exact_limit=exact_limit, seed=seed,
                              beams=beams, batch_size=batch_size, progress=adv)
    record = {"model": loaded.source, "model_weights_sha256": loaded.weights_sha256,
              "engine": getattr(loaded, "engine_info", None),
              "secrets": str(secrets_path),
              "settings": {"n_references": n_references, "exact_limit": exact_limit, "seed": seed, "beams": beams,
                           "top_k": res.top_k},
              "controls": res.controls, "by_count": exposure_by_count(res.rows), "rows": res.rows,
              "num_processes": parallel.world_size()}
    if not parallel.is_main():  # under `accelerate launch` process 0 writes
        return res
    out.mkdir(parents=True, exist_ok=True)
    exposure_plot(out / "exposure.png", res.rows, n_references=n_references)
    io.write_text(out / "exposure.csv", rows_to_csv(res.rows))
    io.write_json(out / "exposure.json", record)
    return res
