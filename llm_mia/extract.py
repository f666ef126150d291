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
``shards/<strategy>.<rank>-of-<P>.jsonl`` (whole lines, flushed and fsynced). A killed run started
again resumes from every shard on disk (any earlier number of processes): nothing is lost or
generated twice. When all are done the shards are merged into ``generated.jsonl``; scoring is split
over the processes the same way; process 0 dedups, verifies and writes ``samples.jsonl``,
``top.jsonl`` and ``extract.json`` (temporary name, then rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from llm_mia import io
from llm_mia.errors import LlmMiaError
from llm_mia.models.generation import sample_seed
from llm_mia.models.loading import LoadedModel
from llm_mia.progress import bar
from llm_mia.scoring import score

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

#: The prompt set shipped for the ``internet`` strategy.
DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "prompts" / "internet.txt"

#: (start, end, steps) of the temperature-decay strategy (Carlini et al. 2021 sec. 5.1.1).
TEMPERATURE_DECAY = (10.0, 1.0, 20)


@dataclass
class ExtractConfig:
    """Settings of one extraction run (every knob and its default)."""

    num_samples: int = 1000  # per strategy
    strategies: tuple[str, ...] = ("top-k",)
    seed: int = 0
    max_new_tokens: int | None = None  # default: min(256, context - 1 - longest prompt)
    top_k: int = 40
    batch_size: int = 64
    score_batch_size: int | None = None  # None: the scorer's per-device token budget
    top_n: int = 100  # samples kept per (strategy, ranking) in top.jsonl (Carlini: 100)
    memorized_min_tokens: int = 50  # a verbatim match this long (or the whole sample) = memorized
    prompt_source: str | None = None  # internet strategy; None: prompts/internet.txt
    prompt_tokens: tuple[int, int] = (5, 10)  # internet: span length, inclusive bounds
    dedup: bool = True
    resume: bool = False  # continue the samples already in out_dir/shards (else: refuse a used folder)
    progress: bool = True


def strategy_seed(seed: int, strategy: str, index: int) -> int:
    """The seed of sample ``index`` of ``strategy``: :func:`sample_seed` (seed, index) for top-k,
    a SeedSequence of (seed, index, strategy number) for the others, so strategies never share draws.
    Never depends on the process rank or the batch."""
    k = STRATEGIES.index(strategy)
    if k == 0:
        return sample_seed(seed, index)
    return int(np.random.SeedSequence([int(seed), int(index), k]).generate_state(1, dtype=np.uint64)[0] >> 1)


def shard_indices(n: int, world: int, rank: int) -> list[int]:
    """Indices of ``range(n)`` taken by process ``rank`` of ``world``: rank, rank + world, ...

    Disjoint over the ranks and covering ``range(n)`` exactly; a rank may get none (never a padded
    copy). Case P06 of ../shared/cases/pipeline-cases.md.
    """
    if world < 1 or not 0 <= rank < world:
        raise LlmMiaError(f"bad process rank {rank} of {world}")
    return list(range(rank, max(0, n), world))


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


def _shard_path(out_dir: Path, strategy: str, rank: int, world: int) -> Path:
    return out_dir / "shards" / f"{strategy}.{rank}-of-{world}.jsonl"


def _read_shard(path: Path) -> list[dict]:
    """Complete records of a partly written shard; a torn last line is dropped (case P07)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if k == len(lines) - 1:  # torn tail of a killed run: regenerated
                break
            raise LlmMiaError(f"{path}: line {k + 1} is corrupt; delete the file to start over") from None
    return rows


def _done(out_dir: Path, strategy: str, cfg: ExtractConfig, max_new: int) -> dict[int, dict]:
    """Every finished sample of ``strategy`` in any shard on disk, by index."""
    done: dict[int, dict] = {}
    for path in sorted((out_dir / "shards").glob(f"{strategy}.*-of-*.jsonl")):
        for r in _read_shard(path):
            if r.get("seed") != cfg.seed or len(r.get("token_ids", [])) > max_new or r.get("max_new_tokens") != max_new:
                raise LlmMiaError(f"{path} holds samples of another run (seed or length differ); use another --out")
            if r["index"] < cfg.num_samples:
                done.setdefault(r["index"], r)
    return done


class _Prompts:
    """Random 5-10 token spans of a prompt corpus, drawn per sample from its own seed."""

    def __init__(self, target: LoadedModel, source: str | None, bounds: tuple[int, int]):
        from llm_mia.corpus import load_source

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
    room = ctx - 1 - (cfg.prompt_tokens[1] if "internet" in cfg.strategies else 0)
    if cfg.max_new_tokens is not None and cfg.max_new_tokens < 1:
        raise LlmMiaError(f"--length must be >= 1, got {cfg.max_new_tokens}")
    max_new = cfg.max_new_tokens or min(256, room)
    if max_new < 1 or max_new > room:
        raise LlmMiaError(f"--length {max_new} does not fit the model's context of {ctx} tokens"
                          + (f" with prompts of up to {cfg.prompt_tokens[1]} tokens" if "internet" in cfg.strategies else ""))
    return max_new


def sample(target: LoadedModel, cfg: ExtractConfig, out_dir: Path, *, rank: int = 0, world: int = 1) -> list[dict]:
    """Generate this process's share of ``cfg.num_samples`` samples per strategy, resuming from disk.

    Appends every finished batch to ``out_dir/shards/<strategy>.<rank>-of-<world>.jsonl``. Returns
    every sample on disk afterwards (all processes' shards), sorted by (strategy, index): dicts with
    ``strategy``, ``index``, ``seed``, ``max_new_tokens``, ``prompt_ids`` ([BOS] + span for
    internet) and ``token_ids`` (the new tokens, EOS forbidden so each has ``max_new_tokens``).

    Raises:
        LlmMiaError: unknown strategy, a length that does not fit the context, shards of another
            run, a corrupt line inside a shard.
    """
    bad = [s for s in cfg.strategies if s not in STRATEGIES]
    if bad or not cfg.strategies:
        raise LlmMiaError(f"unknown strategy {', '.join(bad) or '(none)'}; use {', '.join(STRATEGIES)}")
    if len(set(cfg.strategies)) != len(cfg.strategies):
        raise LlmMiaError(f"strategy given twice: {', '.join(cfg.strategies)}")
    out_dir = Path(out_dir)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    max_new = _max_new(target, cfg)
    bos = target.bos_id
    prompts = _Prompts(target, cfg.prompt_source, cfg.prompt_tokens) if "internet" in cfg.strategies else None
    total = len(shard_indices(cfg.num_samples, world, rank)) * len(cfg.strategies)  # this process's share
    if world == 1:  # several processes check together before any of them writes (see extract)
        _check_fresh(out_dir, cfg)
    with bar("sampling", total, enabled=cfg.progress and rank == 0) as adv:
        for strategy in cfg.strategies:
            done = _done(out_dir, strategy, cfg, max_new)
            path = _shard_path(out_dir, strategy, rank, world)
            if path.exists():  # drop a torn tail before appending
                io.write_jsonl(path, _read_shard(path))
            mine = shard_indices(cfg.num_samples, world, rank)
            todo = [i for i in mine if i not in done]
            adv(len(mine) - len(todo))
            with open(path, "a", encoding="utf-8") as f:
                for b0 in range(0, len(todo), cfg.batch_size):
                    idx = todo[b0:b0 + cfg.batch_size]
                    seeds = [strategy_seed(cfg.seed, strategy, i) for i in idx]
                    pr = [[bos] + prompts.span(s) for s in seeds] if strategy == "internet" else [[bos]] * len(idx)
                    gens = target.generate(pr, max_new_tokens=max_new, seeds=seeds,
                                           top_k=cfg.top_k, min_new_tokens=max_new,
                                    temperature_decay=TEMPERATURE_DECAY if strategy == "temperature-decay" else None)
                    for i, g in zip(idx, gens):
                        f.write(io.dumps({"strategy": strategy, "index": i, "seed": cfg.seed, "max_new_tokens": max_new,
                                          "prompt_ids": g.prompt, "token_ids": g.new_ids}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    adv(len(idx))
    return _collect(out_dir, cfg, max_new)


def _check_fresh(out_dir: Path, cfg: ExtractConfig) -> None:
    if not cfg.resume and any((Path(out_dir) / "shards").glob("*.jsonl")):
        raise LlmMiaError(f"{out_dir} holds samples of an earlier run: pass --resume to continue it, or use another --out")


def _collect(out_dir: Path, cfg: ExtractConfig, max_new: int) -> list[dict]:
    """Every sample on disk, all processes' shards, sorted by (strategy, index)."""
    rows = []
    for strategy in cfg.strategies:
        done = _done(out_dir, strategy, cfg, max_new)
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


def extract(target: LoadedModel, out_dir: str | os.PathLike, *, reference: LoadedModel | None = None,
            train_texts: Sequence[str] | None = None, secrets: Sequence = (), cfg: ExtractConfig | None = None) -> dict | None:
    """Run the whole extraction and write ``samples.jsonl``, ``top.jsonl`` and ``extract.json`` into ``out_dir``.

    Under ``accelerate launch`` every process runs this function: sampling and scoring are split
    over the processes; process 0 writes the outputs and returns the summary, the others return None.

    Args:
        target: the audited model. reference: optional reference model (the "reference" ranking).
        train_texts: the training documents, to verify verbatim matches and PII; without them no
            sample can be called memorized (``memorized`` is then null).
        secrets: planted secrets (:class:`llm_mia.secrets.Secret`) to look for in samples.

    Returns:
        A summary dict: ``carlini_table`` (strategy -> ranking -> memorized among the top N),
        ``rankings`` (the same over every strategy's samples together), unique totals, secrets surfaced.

    Raises:
        LlmMiaError: see :func:`sample`.
    """
    cfg = cfg or ExtractConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist = _Dist()
    if dist.world > 1:
        _check_fresh(out, cfg)  # every process, before any of them writes a shard
        dist.barrier()
    gen = sample(target, cfg, out, rank=dist.rank, world=dist.world)
    dist.barrier()  # every shard complete
    if dist.world > 1:
        gen = _collect(out, cfg, _max_new(target, cfg))
    if len(gen) != cfg.num_samples * len(cfg.strategies):
        raise LlmMiaError(f"{len(gen)} samples on disk, expected {cfg.num_samples * len(cfg.strategies)}; run again to resume")
    sigs = [s for s in RANKINGS.values() if s != "reference" or reference is not None]
    mine = shard_indices(len(gen), dist.world, dist.rank)
    with bar("scoring", None, enabled=cfg.progress and dist.rank == 0) as adv:
        scored_mine = _score_rows(target, reference, [gen[k] for k in mine], cfg, sigs, adv)
    if dist.world > 1:
        io.write_jsonl(out / "shards" / f"scores.{dist.rank}-of-{dist.world}.jsonl",
                       [{"k": k, **r} for k, r in zip(mine, scored_mine)])
        dist.barrier()
        if dist.rank != 0:
            return None
        scored: list[dict | None] = [None] * len(gen)
        for r in range(dist.world):
            for row in io.read_jsonl(out / "shards" / f"scores.{r}-of-{dist.world}.jsonl"):
                scored[row.pop("k")] = row
        if any(x is None for x in scored):
            raise LlmMiaError("a process's scores are missing; run again to resume")
    else:
        scored = scored_mine
    io.write_jsonl(out / "generated.jsonl", ({"id": k, **g} for k, g in enumerate(gen)))
    return _verify_and_rank(target, gen, scored, out, train_texts, secrets, cfg, sigs)


def _verify_and_rank(target, gen, scored, out: Path, train_texts, secrets, cfg: ExtractConfig, sigs) -> dict:
    from llm_mia.dedup import dedup
    from llm_mia.index import CorpusIndex, text_occurrences
    from llm_mia.pii import find_pii

    tok = target.tokenizer
    index = None
    train_blob = ""
    if train_texts is not None:
        index = CorpusIndex.from_texts(list(train_texts), tok)
        train_blob = "\n\n".join(train_texts)
    protect_vals = [s.secret for s in secrets]

    def protect(text: str) -> set[str]:
        return {v for v in protect_vals if v in text}

    # dedup within each strategy (earlier index wins), so a strategy's table never depends on the others
    dropped: dict[int, int] = {}
    if cfg.dedup:
        for strategy in cfg.strategies:
            ks = [k for k, g in enumerate(gen) if g["strategy"] == strategy]
            dd = dedup([scored[k]["text"] for k in ks], protect=protect)
            dropped.update({ks[a]: ks[b] for a, b in dd.dropped.items()})
    samples = []
    for k, (g, r) in enumerate(zip(gen, scored)):
        ids = g["token_ids"]
        text = r["text"]
        row = {"id": k, "strategy": g["strategy"], "index": g["index"], "prompt": target.decode(g["prompt_ids"][1:]),
               "text": text, "token_ids": ids, "n_tokens": len(ids), "nll": r["nll"], "perplexity": r["perplexity"],
               "zlib_bytes": r["zlib_bytes"], "scores": r["scores"], "flags": r["flags"], "duplicate_of": dropped.get(k)}
        if index is not None:  # generated tokens only: a memorized span in the prompt never counts
            m = index.longest_match(ids)
            row["longest_match_tokens"] = m.length
            row["longest_match_count"] = m.count
            row["longest_match_text"] = target.decode(ids[m.start:m.start + m.length]) if m.length else ""
            row["match_span"] = _char_span(text, row["longest_match_text"], target.decode(ids[:m.start])) if m.length else None
            row["memorized"] = bool(len(ids) > 0 and (m.length >= cfg.memorized_min_tokens or m.length == len(ids)))
        else:
            row["longest_match_tokens"] = row["longest_match_count"] = row["match_span"] = None
            row["memorized"] = None
        row["secrets"] = [s.id for s in secrets if s.secret in text]
        row["pii"] = [{"type": h.type, "value": h.value, "start": h.start, "end": h.end,
                       "train_count": text_occurrences(train_blob, h.value) if train_texts is not None else None}
                      for h in find_pii(text)]
        samples.append(row)
    io.write_jsonl(out / "samples.jsonl", samples)

    def top_of(pool: list[dict], sig: str) -> list[dict]:
        ranked = sorted((s for s in pool if s["scores"][sig] == s["scores"][sig]), key=lambda s: -s["scores"][sig])
        return ranked[: cfg.top_n]

    def cell(top: list[dict], sig: str) -> dict:
        return {"signal": sig, "top_n": len(top), "memorized": sum(bool(s["memorized"]) for s in top),
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
                                 "longest_match_tokens": s["longest_match_tokens"], "match_span": s["match_span"],
                                 "secrets": s["secrets"], "text": s["text"]})
        ids_top = {r["id"] for r in top_rows if r["strategy"] == strategy and r["memorized"]}
        carlini[strategy]["unique_memorized"] = len(ids_top)
    for name, sig in RANKINGS.items():
        if sig in sigs:
            table[name] = cell(top_of(kept, sig), sig)
    io.write_jsonl(out / "top.jsonl", top_rows)
    mem_top = [s for s in samples if s["id"] in {r["id"] for r in top_rows if r["memorized"]}]
    # unique across strategies: memorized samples that are not (near) duplicates of one another
    unique_top = len(mem_top) - len(dedup([s["text"] for s in mem_top], protect=protect).dropped) if mem_top else 0
    mem_ids = {s["id"] for s in kept if s["memorized"]}
    summary = {"num_samples": len(samples), "unique_samples": len(kept), "strategies": list(cfg.strategies),
               "samples_per_strategy": cfg.num_samples, "max_new_tokens": len(gen[0]["token_ids"]) if gen else 0,
               "seed": cfg.seed, "top_n": cfg.top_n, "carlini_table": carlini, "rankings": table,
               "memorized_total": len(mem_ids), "memorized_in_any_top": len({s["id"] for s in mem_top}),
               "memorized_unique_in_any_top": unique_top,
               "secrets_surfaced": sorted({x for s in samples for x in s["secrets"]})}
    io.write_json(out / "extract.json", summary)
    return summary
