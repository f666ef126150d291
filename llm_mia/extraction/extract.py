"""Training-data extraction (Carlini et al. 2021, "Extracting Training Data from Large Language Models").

Stages: sample with one or more of the paper's three strategies (sec. 5.1.1) -> score each sample
with the sec. 5.2 metrics (perplexity, zlib, lowercase, reference, window) in batches, directly on
the generated token ids -> dedup -> verify every sample against an index of the training corpus
(longest verbatim match, k-eidetic count), planted secrets and PII -> rank and keep the top K of
each (strategy, ranking): the paper's table.

Strategies:

- ``top-k``: k = 40 sampling from the model's start token.
- ``temperature-decay``: the same, with the temperature falling linearly from 10 to 1 over the first
  20 new tokens (:class:`~llm_mia.models.generation.TemperatureDecay`), then 1.
- ``internet``: each sample continues a random span of 5-10 tokens from a prompt corpus (default
  ``prompts/internet.txt``; any .txt/.jsonl file, folder or ``hf:`` dataset). Prompt tokens are
  context: they are not scored, zlib reads the generated text only, and only the generated tokens
  are matched against the training data, so a memorized span inside the prompt never counts.

Sample ``index`` of a strategy is drawn with its own generator seeded from (seed, index) and the
strategy (:func:`strategy_seed`), so the samples do not depend on the batch size or the number of
processes. Processes (``accelerate launch``) take the indices ``rank, rank + P, ...`` of every
strategy (:func:`shard_indices`) and append each finished batch to their own shard file
``private/shards/<strategy>.<rank>-of-<P>.jsonl`` (whole lines, flushed and fsynced), each record
carrying the model's and tokenizer's SHA-256 (:func:`model_fingerprint`). A killed run started
again resumes from every shard on disk (any earlier number of processes): nothing is lost or
generated twice, and a folder of another model or tokenizer is refused. When all are done the
shards are merged into ``private/generated.jsonl``; scoring is split over the processes the same
way; process 0 dedups, verifies and writes ``samples.jsonl``, ``top.jsonl`` and ``extract.json``
(temporary name, then rename).

Why a private folder: resume and verification are exact only on token ids, and ids decode to the
clear text, so redacting a text field next to its ids would hide nothing. The clear rows (ids,
text, PII values) therefore live in ``private/`` (mode 0700), which the audit's PII pass and the
report renderers read (they redact from clear text, with character offsets); the shareable
``samples.jsonl`` / ``top.jsonl`` are redacted like the reports and hold no ids, unless
``show_secrets``.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from llm_mia.core import io, parallel
from llm_mia.core.errors import LlmMiaError
from llm_mia.core.progress import bar
from llm_mia.core.resources import DEFAULT_PROMPTS
from llm_mia.data.corpus import load_source
from llm_mia.data.dedup import dedup
from llm_mia.extraction.chat import CHAT_STRATEGIES, chat_samples, load_chat_prompts, max_prompt_tokens
from llm_mia.extraction.index import CorpusIndex
from llm_mia.extraction.near_verbatim import check_near_settings, near_match
from llm_mia.extraction.pii_findings import (
    TrainingPii,
    sample_pii,
    tokenizer_normalizer,
    training_pii_index,
)
from llm_mia.membership.scoring import score
from llm_mia.models.endpoint import EndpointModel
from llm_mia.models.generation import sample_seed
from llm_mia.models.hf import LoadedModel
from llm_mia.report.markdown import redact, redact_text

#: Carlini et al. 2021 sec. 5.2 rankings: the membership signal each one sorts by (higher first).
RANKINGS = {
    "perplexity": "loss",
    "zlib": "zlib",
    "lowercase": "lowercase",
    "reference": "reference",
    "window": "window",
}

#: Carlini et al. 2021 sec. 5.1.1 sampling strategies, in the order their rows are merged.
STRATEGIES = ("top-k", "temperature-decay", "internet")
#: Every strategy ``--strategy`` takes: Carlini's, then the chat-model ones (:mod:`llm_mia.extraction.chat`).
ALL_STRATEGIES = STRATEGIES + CHAT_STRATEGIES

#: The prompt set shipped for the ``internet`` strategy.


#: (start, end, steps) of the temperature-decay strategy (Carlini et al. 2021 sec. 5.1.1).
TEMPERATURE_DECAY = (10.0, 1.0, 20)


@dataclass
class ExtractConfig:
    """Settings of one extraction run (every knob and its default), Carlini et al. 2021 sec. 5.

    ``num_samples`` sequences of at most ``max_new_tokens`` tokens are generated per strategy of
    ``strategies`` (top-k sampling with ``top_k``, temperature decay, prompts from real text of
    ``prompt_tokens`` tokens), deduplicated, ranked by every ranking of :data:`RANKINGS` (``top_n`` kept
    each) and verified against the training data: a sample is memorized when it shares
    ``memorized_min_tokens`` tokens verbatim with it (or is wholly inside it). Every option is checked
    when the config is made.

    Raises:
        LlmMiaError: an unknown or repeated strategy, or an option out of range (one line).
    """

    num_samples: int = 1000  # per strategy
    strategies: tuple[str, ...] = ("top-k",)
    seed: int = 0
    max_new_tokens: int | None = None  # default: min(256, context - 1 - longest prompt)
    top_k: int = 40
    batch_size: int = 64
    score_batch_size: int | None = None  # None: the scorer's per-device token budget
    top_n: int = 100  # samples kept per (strategy, ranking) in top.jsonl (Carlini: 100)
    memorized_min_tokens: int = 50  # a verbatim match this long (or the whole sample) = memorized
    near_similarity: float = 0.9  # near-memorized: token edit similarity >= this over near_window tokens
    near_window: int = 50  # window (tokens) of the near-verbatim match (Ippolito et al. 2023)
    prompt_source: str | None = None  # internet strategy; None: prompts/internet.txt
    prompt_tokens: tuple[int, int] = (5, 10)  # internet: span length, inclusive bounds
    dedup: bool = True
    resume: bool = False  # continue the samples already in out_dir/private/shards (else: refuse a used folder)
    pii_regions: tuple[str, ...] | None = None  # phone regions of the PII pass; None: llm_mia.data.pii.DEFAULT_REGIONS
    pii_presidio: bool = True  # Presidio's names / locations in the PII pass when installed
    progress: bool = True
    show_secrets: bool = False  # samples.jsonl / top.jsonl in clear text (default: redacted like the reports)

    def __post_init__(self) -> None:
        """Validate every option before any work (one-line :class:`LlmMiaError`)."""
        self.strategies = tuple(self.strategies)
        bad = [s for s in self.strategies if s not in ALL_STRATEGIES]
        if bad or not self.strategies:
            raise LlmMiaError(f"unknown strategy {', '.join(bad) or '(none)'}; use {', '.join(ALL_STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise LlmMiaError(f"strategy given twice: {', '.join(self.strategies)}")
        for name, lo in (("num_samples", 1), ("seed", 0), ("top_k", 1), ("batch_size", 1), ("top_n", 1),
                         ("memorized_min_tokens", 1)):
            _check_int(name, getattr(self, name), lo)
        check_near_settings(self.near_window, self.near_similarity)
        if self.max_new_tokens is not None:
            _check_int("--length", self.max_new_tokens, 1)
        if self.score_batch_size is not None:
            _check_int("score_batch_size", self.score_batch_size, 1)
        lo, hi = (tuple(self.prompt_tokens) + (None, None))[:2]
        if len(tuple(self.prompt_tokens)) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)) \
                or not 1 <= lo <= hi:
            raise LlmMiaError(f"prompt span bounds must satisfy 1 <= min <= max, got {self.prompt_tokens}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LlmMiaError(f"{name} must be an integer >= {minimum}, got {value!r}")


def strategy_seed(seed: int, strategy: str, index: int) -> int:
    """The seed of sample ``index`` of ``strategy``: :func:`sample_seed` (seed, index) for top-k,
    a SeedSequence of (seed, index, strategy number) for the others, so strategies never share draws.
    Never depends on the process rank or the batch."""
    k = ALL_STRATEGIES.index(strategy)
    if k == 0:
        return sample_seed(seed, index)
    return int(np.random.SeedSequence([int(seed), int(index), k]).generate_state(1, dtype=np.uint64)[0] >> 1)


def shard_indices(n: int, world: int, rank: int) -> range:
    """Indices of ``range(n)`` taken by process ``rank`` of ``world``: rank, rank + world, ...

    Disjoint over the ranks and covering ``range(n)`` exactly; a rank may get none (never a padded
    copy). A lazy ``range``, so a huge ``n`` costs no memory. Case P06.
    """
    if world < 1 or not 0 <= rank < world:
        raise LlmMiaError(f"bad process rank {rank} of {world}")
    return range(rank, max(0, n), world)


def dist_state():
    """accelerate's PartialState when launched with several processes (``accelerate launch``,
    torchrun), else None. Without an accelerator the processes talk over gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


class _Dist:
    """Rank, world size and a barrier: :func:`dist_state` under a multi-process launch, else 1 process."""

    def __init__(self):
        self.rank, self.world, self._state = 0, 1, dist_state()
        if self._state is not None:
            self.rank, self.world = self._state.process_index, self._state.num_processes

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()


PRIVATE = "private"  # the folder of clear-text working files (owner-only permissions)


def private_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir/private``: the shards (token ids, which resume needs exactly), ``generated.jsonl``
    and the clear-text ``samples.jsonl`` / ``top.jsonl`` the audit's PII pass and report read.
    Created with mode 0700 (its files are written 0666 & ~umask inside it)."""
    p = Path(out_dir) / PRIVATE
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(p, 0o700)
    return p


def _shard_path(out_dir: Path, strategy: str, rank: int, world: int) -> Path:
    return out_dir / PRIVATE / "shards" / f"{strategy}.{rank}-of-{world}.jsonl"


#: model -> (what its tensors were when hashed: names, storage and in-place version counters, digest)
_TENSOR_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensors_sha256(model) -> str:
    """:func:`_hash_tensors`, computed again only when a tensor of ``model`` was replaced or changed in
    place since the last call (its storage or version counter differs): no repeated weight hashing."""
    state = tuple((name, t.data_ptr(), t._version) for name, t in model.state_dict().items())
    got = _TENSOR_DIGESTS.get(model)
    if got is None or got[0] != state:
        got = (state, _hash_tensors(model))
        _TENSOR_DIGESTS[model] = got
    return got[1]


def _hash_tensors(model) -> str:
    """SHA-256 over the state_dict (names, dtypes, shapes, bytes), for models not loaded from files."""

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(target: LoadedModel) -> dict:
    """What every shard record carries so ``--resume`` never mixes two models' samples.

    ``weights_sha256``: :func:`llm_mia.core.io.weights_sha256` of the model folder (every weight file,
    sharded ones included) when the model was loaded from a folder; otherwise (a hub id, an
    in-memory model) the SHA-256 of its state_dict tensors, so a retrained or edited model differs;
    for an endpoint, the SHA-256 of its URL and served model name ("endpoint").
    ``weights_digest`` says which ("files" or "tensors"), so the two never compare equal by accident.
    ``engine``: only for an engine other than HF (``"vllm"``: its sampler gives other samples).
    ``tokenizer_sha256``: SHA-256 of the tokenizer's ``tokenizer.json`` serialisation (vocabulary,
    merges, normalizer, special tokens), or of its sorted vocabulary for a slow tokenizer.
    """

    digest = target.weights_sha256  # every weight file of the folder (adapter + base included)
    kind = "files" if digest else "tensors"

    if isinstance(target, EndpointModel):  # no weights in hand: the URL and the served name
        digest, kind = target.endpoint_sha256, "endpoint"
    digest = digest or _tensors_sha256(target.model)
    tok = target.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    tok_text = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    fp = {"weights_sha256": digest, "weights_digest": kind,
          "tokenizer_sha256": hashlib.sha256(tok_text.encode("utf-8")).hexdigest()}
    if getattr(target, "engine", "hf") != "hf":  # another sampler: other samples for the same seed
        fp["engine"] = target.engine
    return fp


def _scan_shard(path: Path, *, repair: bool = False) -> Iterator[dict]:
    """Stream the complete records of a partly written shard; a torn last line is dropped (case P07).

    A line that does not parse is fine only as the last one (a killed run); anywhere else it is an
    error. ``repair`` truncates the file after its last complete record (and ends it with a newline)
    so that new records can be appended. Reads one line at a time: memory does not grow with the file.
    """
    good_end, bad = 0, None
    with open(path, "rb") as f:
        pos = 0
        for k, line in enumerate(f, 1):
            if bad is not None:
                raise LlmMiaError(f"{path}: line {bad} is corrupt; delete the file to start over")
            pos += len(line)
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                bad = k
                continue
            if not isinstance(rec, dict) or isinstance(rec.get("index"), bool) or not isinstance(rec.get("index"), int) \
                    or rec["index"] < 0 or not isinstance(rec.get("token_ids"), list):
                raise LlmMiaError(f"{path}: line {k} is not a sample record; delete the file to start over")
            good_end = pos
            yield rec
    if repair:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            if good_end:
                f.seek(good_end - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")


def _records(out_dir: Path, strategy: str, cfg: ExtractConfig, max_new: int, fp: dict) -> Iterator[dict]:
    """Every finished sample of ``strategy`` (index < num_samples) in any shard on disk, streamed.

    Raises :class:`LlmMiaError` for a record of another model or tokenizer, or of another seed or length.
    """
    for path in sorted((out_dir / PRIVATE / "shards").glob(f"{strategy}.*-of-*.jsonl")):
        for r in _scan_shard(path):
            if r.get("engine", "hf") != fp.get("engine", "hf"):
                raise LlmMiaError(f"{path} holds samples of --engine {r.get('engine', 'hf')} (another sampler: other "
                                  f"samples for the same seed): resume with that engine, or use another --out")
            got = {k: r.get(k) for k in fp}
            if got != fp:
                which = "tokenizer" if got["weights_sha256"] == fp["weights_sha256"] else "model"
                raise LlmMiaError(f"{path} holds samples of another {which} (weights sha256 "
                                  f"{str(got['weights_sha256'])[:12]}, tokenizer {str(got['tokenizer_sha256'])[:12]}; "
                                  f"this one: {fp['weights_sha256'][:12]}, {fp['tokenizer_sha256'][:12]}): use another --out")
            if r.get("seed") != cfg.seed or len(r["token_ids"]) > max_new or r.get("max_new_tokens") != max_new:
                raise LlmMiaError(f"{path} holds samples of another run (seed or length differ); use another --out")
            if r["index"] < cfg.num_samples:
                yield r


class _Prompts:
    """Random 5-10 token spans of a prompt corpus, drawn per sample from its own seed."""

    def __init__(self, target: LoadedModel, source: str | None, bounds: tuple[int, int]):

        lo, hi = bounds
        if not 1 <= lo <= hi:
            raise LlmMiaError(f"prompt span bounds must satisfy 1 <= min <= max, got {bounds}")
        try:
            docs = load_source(str(source or DEFAULT_PROMPTS))
        except LlmMiaError as e:
            raise LlmMiaError(f"prompts of the internet strategy: {e}") from None
        tok = target.tokenizer
        self.docs = [ids for ids in (tok(d, add_special_tokens=False)["input_ids"] for d in docs) if len(ids) >= hi]
        if not self.docs:
            raise LlmMiaError(f"prompt corpus {source or DEFAULT_PROMPTS} has no document of {hi} tokens or more")
        self.lo, self.hi = lo, hi

    def span(self, seed: int) -> list[int]:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        d = self.docs[int(rng.integers(len(self.docs)))]
        n = int(rng.integers(self.lo, self.hi + 1))
        s = int(rng.integers(0, len(d) - n + 1))
        return list(d[s:s + n])


def _char_span(text: str, match_text: str, before: str) -> list[int] | None:
    """[start, end) character offsets of the longest verbatim match in the decoded sample.

    ``before`` is the decoding of the tokens ahead of the match: its length is the offset when the
    match text sits there (a byte-level BPE may split a character across the boundary; then the
    first occurrence of the match text is taken). None when the text is not found at all.
    """
    if not match_text:
        return None
    start = len(before)
    if text[start:start + len(match_text)] != match_text:
        start = text.find(match_text)
        if start < 0:
            return None
    return [start, start + len(match_text)]


def _max_new(target: LoadedModel, cfg: ExtractConfig) -> int:
    ctx = target.max_context or 1024
    chat = max_prompt_tokens(target, cfg.strategies, load_chat_prompts())  # refuses a model without a template
    room = ctx - 1 - max(cfg.prompt_tokens[1] if "internet" in cfg.strategies else 0, chat)
    max_new = cfg.max_new_tokens or min(256, room)
    if max_new < 1 or max_new > room:
        raise LlmMiaError(f"--length {max_new} does not fit the model's context of {ctx} tokens"
                          + (f" with prompts of up to {cfg.prompt_tokens[1]} tokens" if "internet" in cfg.strategies else ""))
    return max_new


def sample(target: LoadedModel, cfg: ExtractConfig, out_dir: Path, *, rank: int = 0, world: int = 1) -> list[dict]:
    """Generate this process's share of ``cfg.num_samples`` samples per strategy, resuming from disk.

    Appends every finished batch to ``out_dir/private/shards/<strategy>.<rank>-of-<world>.jsonl``.
    Returns every sample on disk afterwards (all processes' shards), sorted by (strategy, index):
    dicts with ``strategy``, ``index``, ``seed``, ``max_new_tokens``, the model's
    :func:`model_fingerprint` (``weights_sha256``, ``weights_digest``, ``tokenizer_sha256``),
    ``prompt_ids`` ([BOS] + span for internet) and ``token_ids`` (the new tokens, EOS forbidden so
    each has ``max_new_tokens``). The sampling itself holds one batch and a bitset of the finished
    indices (num_samples / 8 bytes), however large ``num_samples`` is; the returned list holds them all.

    Raises:
        LlmMiaError: a length that does not fit the context, shards of another model, tokenizer or
            run, a corrupt line inside a shard (options are checked by :class:`ExtractConfig`).
    """

    out_dir = Path(out_dir)
    io.check_output_dir(out_dir)
    max_new = _max_new(target, cfg)
    prompts = _Prompts(target, cfg.prompt_source, cfg.prompt_tokens) if "internet" in cfg.strategies else None
    fp = model_fingerprint(target)
    if world == 1:  # several processes check together before any of them writes (see extract)
        _check_fresh(out_dir, cfg)
    (private_dir(out_dir) / "shards").mkdir(exist_ok=True)
    mine = shard_indices(cfg.num_samples, world, rank)
    with bar("sampling", len(mine) * len(cfg.strategies), enabled=cfg.progress and rank == 0) as adv:
        for strategy in cfg.strategies:
            done, n_mine = bytearray((cfg.num_samples + 7) // 8), 0
            is_done = lambda i: done[i >> 3] >> (i & 7) & 1  # noqa: E731, B023  (used within this iteration)
            for r in _records(out_dir, strategy, cfg, max_new, fp):
                i = r["index"]
                n_mine += not is_done(i) and i % world == rank
                done[i >> 3] |= 1 << (i & 7)
            path = _shard_path(out_dir, strategy, rank, world)
            if path.exists():  # drop a torn tail before appending
                for _ in _scan_shard(path, repair=True):
                    pass
            adv(n_mine)
            todo = (i for i in mine if not is_done(i))
            with open(path, "a", encoding="utf-8") as f:
                for idx in iter(lambda: list(islice(todo, cfg.batch_size)), []):  # noqa: B023  (consumed within this iteration)
                    seeds = [strategy_seed(cfg.seed, strategy, i) for i in idx]
                    for i, (p, t, more) in zip(idx, _generate(target, strategy, seeds, prompts, cfg, max_new)):
                        f.write(io.dumps({"strategy": strategy, "index": i, "seed": cfg.seed, "max_new_tokens": max_new,
                                          **fp, "prompt_ids": p, "token_ids": t, **more}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    adv(len(idx))
    return _collect(out_dir, cfg, max_new, fp)


def _generate(target: LoadedModel, strategy: str, seeds: list[int], prompts, cfg: ExtractConfig,
              max_new: int) -> list[tuple[list[int], list[int], dict]]:
    """(prompt ids, token ids, extra record fields) of one batch of ``strategy``."""
    if strategy in CHAT_STRATEGIES:
        return chat_samples(target, strategy, seeds, load_chat_prompts(), max_new_tokens=max_new, top_k=cfg.top_k)
    bos = target.bos_id
    pr = [[bos] + prompts.span(s) for s in seeds] if strategy == "internet" else [[bos]] * len(seeds)
    # the HF engine keeps each sample's log-probs from generation: the target's scoring pass reads them
    keep = {"keep_logprobs": True} if getattr(target, "keeps_logprobs", False) else {}
    gens = target.generate(pr, max_new_tokens=max_new, seeds=seeds, top_k=cfg.top_k, min_new_tokens=max_new,
                           temperature_decay=TEMPERATURE_DECAY if strategy == "temperature-decay" else None, **keep)
    return [(g.prompt, g.new_ids, {}) for g in gens]


def _check_fresh(out_dir: Path, cfg: ExtractConfig) -> None:
    if any((Path(out_dir) / "shards").glob("*.jsonl")):
        raise LlmMiaError(f"{out_dir}/shards holds samples of an older llm-mia that did not record the model; "
                          "use another --out")
    if not cfg.resume and any((Path(out_dir) / PRIVATE / "shards").glob("*.jsonl")):
        raise LlmMiaError(f"{out_dir} holds samples of an earlier run: pass --resume to continue it, or use another --out")


def _collect(out_dir: Path, cfg: ExtractConfig, max_new: int, fp: dict) -> list[dict]:
    """Every sample on disk, all processes' shards, sorted by (strategy, index)."""
    rows = []
    for strategy in cfg.strategies:
        done: dict[int, dict] = {}
        for r in _records(out_dir, strategy, cfg, max_new, fp):
            done.setdefault(r["index"], r)
        rows.extend(done[i] for i in sorted(done))
    return rows


def _score_rows(target: LoadedModel, reference: LoadedModel | None, rows: list[dict], cfg: ExtractConfig,
                sigs: list[str], progress: Callable[[int], None] | None) -> list[dict]:
    """Score samples on their own ids: the prompt is context, zlib and lowercase read the generated text."""
    # whole-id-list decode (never per token), read after the prompt's text (never a stripped first piece)
    texts = [target.decode_continuation(r["prompt_ids"][1:], r["token_ids"]) for r in rows]
    has_prompt = any(len(r["prompt_ids"]) > 1 for r in rows)
    prompts = [target.decode(r["prompt_ids"][1:]) for r in rows] if has_prompt else None
    res = score(target, texts, ids=[r["prompt_ids"] + r["token_ids"] for r in rows],
                context_lens=[len(r["prompt_ids"]) for r in rows], reference=reference, signals=sigs,
                batch_size=cfg.score_batch_size, prompts=prompts, progress=progress)
    return [{"text": t, "nll": x["nll"], "perplexity": x["perplexity"], "zlib_bytes": x["zlib_bytes"],
             "scores": x["scores"], "flags": x["flags"]} for t, x in zip(texts, res.rows)]


@parallel.local_only  # divides sampling and scoring by rank itself (below)
def extract(target: LoadedModel, out_dir: str | os.PathLike, *, reference: LoadedModel | None = None,
            train_texts: Sequence[str] | None = None, secrets: Sequence = (), cfg: ExtractConfig | None = None) -> dict | None:
    """Run the whole extraction and write ``samples.jsonl``, ``top.jsonl`` and ``extract.json`` into ``out_dir``.

    Under ``accelerate launch`` every process runs this function: sampling and scoring are split
    over the processes; process 0 writes the outputs and returns the summary, the others return None.

    Args:
        target: the audited model. reference: optional reference model (the "reference" ranking).
        train_texts: the training documents, to verify verbatim matches and PII; without them no
            sample can be called memorized (``memorized`` is then null).
        secrets: planted secrets (:class:`llm_mia.data.secrets.Secret`) to look for in samples.

    Returns:
        A summary dict: ``carlini_table`` (strategy -> ranking -> memorized among the top N),
        ``rankings`` (the same over every strategy's samples together), unique totals, secrets surfaced.

    Raises:
        LlmMiaError: see :func:`sample`.
    """
    cfg = cfg or ExtractConfig()
    out = Path(out_dir)
    io.check_output_dir(out)
    dist = _Dist()
    if dist.world > 1:
        _check_fresh(out, cfg)  # every process, before any of them writes a shard
        dist.barrier()
    gen = sample(target, cfg, out, rank=dist.rank, world=dist.world)
    dist.barrier()  # every shard complete
    if dist.world > 1:
        gen = _collect(out, cfg, _max_new(target, cfg), model_fingerprint(target))
    if len(gen) != cfg.num_samples * len(cfg.strategies):
        raise LlmMiaError(f"{len(gen)} samples on disk, expected {cfg.num_samples * len(cfg.strategies)}; run again to resume")
    sigs = [s for s in RANKINGS.values() if s != "reference" or reference is not None]
    mine = shard_indices(len(gen), dist.world, dist.rank)
    with bar("scoring", None, enabled=cfg.progress and dist.rank == 0) as adv:
        scored_mine = _score_rows(target, reference, [gen[k] for k in mine], cfg, sigs, adv)
    if hasattr(target, "forget_generations"):  # samples another process scored: free their log-probs
        target.forget_generations()
    if dist.world > 1:
        io.write_jsonl(out / PRIVATE / "shards" / f"scores.{dist.rank}-of-{dist.world}.jsonl",
                       [{"k": k, **r} for k, r in zip(mine, scored_mine)])
        dist.barrier()
        if dist.rank != 0:
            return None
        scored: list[dict | None] = [None] * len(gen)
        for r in range(dist.world):
            for row in io.read_jsonl(out / PRIVATE / "shards" / f"scores.{r}-of-{dist.world}.jsonl"):
                scored[row.pop("k")] = row
        if any(x is None for x in scored):
            raise LlmMiaError("a process's scores are missing; run again to resume")
    else:
        scored = scored_mine
    io.write_jsonl(private_dir(out) / "generated.jsonl", ({"id": k, **g} for k, g in enumerate(gen)))
    return _verify_and_rank(target, gen, scored, out, train_texts, secrets, cfg, sigs,
                            engine=getattr(target, "engine_info", None))


#: A sample shorter than ``memorized_min_tokens`` counts as memorized only when all of it is a
#: verbatim training match AND it has at least this many tokens: one or two common tokens found in
#: the training text are no evidence of memorization.
WHOLE_SAMPLE_MIN_TOKENS = 8


def is_memorized(match_tokens: int, n_tokens: int, min_tokens: int) -> bool:
    """Carlini et al. 2021 sec. 6 (verbatim training-data match): a longest verbatim match of at
    least ``min_tokens`` tokens, or a whole sample of at least :data:`WHOLE_SAMPLE_MIN_TOKENS`
    tokens that is all training text (samples shorter than ``min_tokens``)."""
    return match_tokens >= min_tokens or (match_tokens == n_tokens >= WHOLE_SAMPLE_MIN_TOKENS)


#: Keys of sample rows that hold (or encode) the model's clear-text output.
_TEXT_KEYS = ("text", "prompt", "longest_match_text")
_ID_KEYS = ("token_ids", "prompt_ids")


def redact_row(row: dict, secrets: Sequence) -> dict:
    """A copy of a samples.jsonl / top.jsonl row as the shareable files hold it by default: text
    fields redacted like the reports (:func:`llm_mia.report.markdown.redact_text`: planted values,
    detected PII, 6+ digit runs), PII values replaced by :func:`~llm_mia.report.markdown.redact`,
    token ids left out (they decode to the clear text). ``match_span`` still indexes the clear text."""

    out = {k: v for k, v in row.items() if k not in _ID_KEYS}
    for k in _TEXT_KEYS:
        if isinstance(out.get(k), str):
            out[k] = redact_text(out[k], secrets)
    if isinstance(out.get("pii"), list):
        out["pii"] = [{k: (redact(v) if k != "type" and isinstance(v, str) else v) for k, v in h.items()}
                      for h in out["pii"]]
    return out


def _write_samples(out: Path, name: str, rows: list[dict], secrets: Sequence, show_secrets: bool) -> None:
    """The clear rows to ``private/<name>`` (what resume, the audit's PII pass and the report's own
    redaction read); the shareable ``<name>`` redacted unless ``show_secrets``."""
    io.write_jsonl(private_dir(out) / name, rows)
    io.write_jsonl(out / name, rows if show_secrets else (redact_row(r, secrets) for r in rows))


def read_clear(out_dir: str | os.PathLike, name: str) -> list[dict]:
    """Rows of ``out_dir/private/<name>`` (``samples.jsonl`` or ``top.jsonl``) in clear text; [] if absent."""
    path = Path(out_dir) / PRIVATE / name
    return io.read_jsonl(path) if path.exists() else []


def _strategy_duplicates(gen: list[dict], scored: list[dict], cfg: ExtractConfig,
                         protect: Callable[[str], set[str]]) -> dict[int, int]:
    """Near and exact duplicates within each strategy (earlier index wins; :func:`llm_mia.data.dedup.dedup`),
    so a strategy's table never depends on the others: sample id -> id of the sample it duplicates.
    Empty when ``cfg.dedup`` is off."""
    dropped: dict[int, int] = {}
    if cfg.dedup:
        for strategy in cfg.strategies:
            ks = [k for k, g in enumerate(gen) if g["strategy"] == strategy]
            dd = dedup([scored[k]["text"] for k in ks], protect=protect)
            dropped.update({ks[a]: ks[b] for a, b in dd.dropped.items()})
    return dropped


def _sample_row(target: LoadedModel, k: int, g: dict, r: dict, duplicate_of: int | None, index: CorpusIndex | None,
                pii_index: TrainingPii | None, secrets: Sequence, cfg: ExtractConfig) -> dict:
    """Row ``k`` of samples.jsonl (clear text): the generated record ``g`` and its scores ``r``, verified
    against the training corpus ``index`` (longest verbatim match of the generated tokens only, so a
    memorized span in the prompt never counts; all None without an index), planted ``secrets`` and
    PII (the one PII pass, counted in ``pii_index``)."""
    ids = g["token_ids"]
    text = r["text"]
    row = {"id": k, "strategy": g["strategy"], "index": g["index"], "prompt": target.decode(g["prompt_ids"][1:]),
           "text": text, "token_ids": ids, "n_tokens": len(ids), "nll": r["nll"], "perplexity": r["perplexity"],
           "zlib_bytes": r["zlib_bytes"], "scores": r["scores"], "flags": r["flags"], "duplicate_of": duplicate_of}
    if index is not None:
        m = index.longest_match(ids)
        row["longest_match_tokens"] = m.length
        row["longest_match_count"] = m.count
        row["longest_match_text"] = target.decode(ids[m.start:m.start + m.length]) if m.length else ""
        row["match_span"] = _char_span(text, row["longest_match_text"], target.decode(ids[:m.start])) if m.length else None
        row["memorized"] = is_memorized(m.length, len(ids), cfg.memorized_min_tokens)
        near = near_match(index, ids, window=cfg.near_window, threshold=cfg.near_similarity)
        row["near_similarity"] = None if near.similarity != near.similarity else near.similarity
        # verbatim implies near-verbatim (similarity 1, or a short sample wholly in the training data)
        row["near_memorized"] = row["memorized"] or near.similarity >= cfg.near_similarity
    else:
        row["longest_match_tokens"] = row["longest_match_count"] = row["match_span"] = None
        row["memorized"] = row["near_similarity"] = row["near_memorized"] = None
    row["secrets"] = [s.id for s in secrets if s.secret in text]
    row["pii"] = sample_pii(text, pii_index, regions=cfg.pii_regions, presidio=cfg.pii_presidio)
    return row


@dataclass
class _Ranked:
    """The top samples of each (strategy, ranking) among the samples that are no duplicate.

    Attributes:
        top_rows: the rows of top.jsonl, ``{"strategy", "ranking", "rank" (1-based), "id", "score",
            "memorized", "longest_match_tokens", "match_span", "secrets", "text"}``, by strategy, ranking, rank.
        carlini: strategy -> ranking -> cell (``{"signal", "top_n", "memorized", "secrets", "pii_hits"}``),
            plus ``"unique_memorized"`` (memorized samples among any of the strategy's tops) and
            ``"unique_near_memorized"`` (near-verbatim ones, :mod:`~llm_mia.extraction.near_verbatim`; a superset).
        table: ranking -> cell, over every strategy's samples together.
    """

    top_rows: list[dict]
    carlini: dict[str, dict]
    table: dict[str, dict]


def _rank(samples: list[dict], cfg: ExtractConfig, sigs: list[str]) -> _Ranked:
    """The top ``cfg.top_n`` samples (no duplicates, NaN scores left out) of each ranking of :data:`RANKINGS`
    whose signal is in ``sigs``, highest score first, per strategy and over all (Carlini et al. 2021 sec. 5.2)."""

    def top_of(pool: list[dict], sig: str) -> list[dict]:
        ranked = sorted((s for s in pool if s["scores"][sig] == s["scores"][sig]), key=lambda s: -s["scores"][sig])
        return ranked[: cfg.top_n]

    def cell(top: list[dict], sig: str) -> dict:
        return {"signal": sig, "top_n": len(top), "memorized": sum(bool(s["memorized"]) for s in top),
                "near_memorized": sum(bool(s["near_memorized"]) for s in top),
                "secrets": sorted({x for s in top for x in s["secrets"]}), "pii_hits": sum(len(s["pii"]) for s in top)}

    kept = [s for s in samples if s["duplicate_of"] is None]
    top_rows, table, carlini = [], {}, {}
    for strategy in cfg.strategies:
        pool = [s for s in kept if s["strategy"] == strategy]
        carlini[strategy] = {}
        for name, sig in RANKINGS.items():
            if sig not in sigs:
                continue
            top = top_of(pool, sig)
            carlini[strategy][name] = cell(top, sig)
            for rank, s in enumerate(top, 1):
                top_rows.append({"strategy": strategy, "ranking": name, "rank": rank, "id": s["id"],
                                 "score": s["scores"][sig], "memorized": s["memorized"],
                                 "near_memorized": s["near_memorized"], "near_similarity": s["near_similarity"],
                                 "longest_match_tokens": s["longest_match_tokens"], "match_span": s["match_span"],
                                 "secrets": s["secrets"], "text": s["text"]})
        ids_top = {r["id"] for r in top_rows if r["strategy"] == strategy and r["memorized"]}
        carlini[strategy]["unique_memorized"] = len(ids_top)
        carlini[strategy]["unique_near_memorized"] = len({r["id"] for r in top_rows
                                                          if r["strategy"] == strategy and r["near_memorized"]})
    for name, sig in RANKINGS.items():
        if sig in sigs:
            table[name] = cell(top_of(kept, sig), sig)
    return _Ranked(top_rows=top_rows, carlini=carlini, table=table)


def _verify_and_rank(target, gen, scored, out: Path, train_texts, secrets, cfg: ExtractConfig, sigs, engine=None) -> dict:
    """Process 0's last stage of :func:`extract`: dedup, verify and rank the samples ``gen`` with their
    scores ``scored`` (same order); writes ``samples.jsonl``, ``top.jsonl`` and ``extract.json`` into
    ``out`` and returns the summary (see :func:`extract`)."""
    tok = target.tokenizer
    index = pii_index = None
    if train_texts is not None:
        index = CorpusIndex.from_texts(list(train_texts), tok)
        pii_index = training_pii_index(train_texts, normalizer=tokenizer_normalizer(tok), regions=cfg.pii_regions)
    protect_vals = [s.secret for s in secrets]

    def protect(text: str) -> set[str]:
        return {v for v in protect_vals if v in text}

    dropped = _strategy_duplicates(gen, scored, cfg, protect)
    samples = [_sample_row(target, k, g, r, dropped.get(k), index, pii_index, secrets, cfg)
               for k, (g, r) in enumerate(zip(gen, scored))]
    _write_samples(out, "samples.jsonl", samples, secrets, cfg.show_secrets)
    ranked = _rank(samples, cfg, sigs)
    top_rows = ranked.top_rows
    _write_samples(out, "top.jsonl", top_rows, secrets, cfg.show_secrets)
    kept = [s for s in samples if s["duplicate_of"] is None]
    mem_top = [s for s in samples if s["id"] in {r["id"] for r in top_rows if r["memorized"]}]
    # unique across strategies: memorized samples that are not (near) duplicates of one another
    unique_top = len(mem_top) - len(dedup([s["text"] for s in mem_top], protect=protect).dropped) if mem_top else 0
    mem_ids = {s["id"] for s in kept if s["memorized"]}
    summary = {"num_samples": len(samples), "unique_samples": len(kept), "strategies": list(cfg.strategies),
               "samples_per_strategy": cfg.num_samples, "max_new_tokens": len(gen[0]["token_ids"]) if gen else 0,
               "seed": cfg.seed, "top_n": cfg.top_n, "carlini_table": ranked.carlini, "rankings": ranked.table,
               "memorized_total": len(mem_ids),
               "near_memorized_total": sum(bool(s["near_memorized"]) for s in kept),
               "near_similarity": cfg.near_similarity, "near_window": cfg.near_window,
               "memorized_in_any_top": len({s["id"] for s in mem_top}),
               "memorized_unique_in_any_top": unique_top,
               "secrets_surfaced": sorted({x for s in samples for x in s["secrets"]}), "engine": engine,
               "num_processes": parallel.world_size()}  # of an `accelerate launch` (1: one process)
    io.write_json(out / "extract.json", summary)
    return summary
