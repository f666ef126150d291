"""Training-data extraction (Carlini et al. 2021, "Extracting Training Data from Large Language Models").

Stages: sample with top-k (k = 40) from the model's start token -> score each sample with the
sec. 5.2 metrics (perplexity, zlib, lowercase, reference, window) in batches, directly on the
generated token ids -> dedup -> verify every sample against an index of the training corpus
(longest verbatim match, k-eidetic count), planted secrets and PII -> rank and keep the top K of
each ranking.

Samples are appended to ``generated.jsonl`` batch by batch as they are produced (one whole line
per sample, flushed), so a killed run resumes where it stopped; the final ``samples.jsonl`` and
``top.jsonl`` are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llm_mia import io
from llm_mia.errors import LlmMiaError
from llm_mia.models.generation import generate, sample_seed
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


@dataclass
class ExtractConfig:
    """Settings of one extraction run (every knob and its default)."""

    num_samples: int = 1000
    seed: int = 0
    max_new_tokens: int | None = None  # default: min(256, context - 1)
    top_k: int = 40
    batch_size: int = 64
    score_batch_size: int = 64
    top_n: int = 100  # samples kept per ranking in top.jsonl (Carlini: 100)
    memorized_min_tokens: int = 50  # a verbatim match this long (or the whole sample) = memorized
    dedup: bool = True
    progress: bool = True


def _read_generated(path: Path) -> list[dict]:
    """Complete records of a partly written ``generated.jsonl``; a torn last line is dropped."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if k == len(lines) - 1:  # torn tail of a killed run: regenerate it
                break
            raise LlmMiaError(f"{path}: line {k + 1} is corrupt; delete the file to start over") from None
    # keep the complete prefix 0..n-1 only
    rows.sort(key=lambda r: r["id"])
    good = []
    for r in rows:
        if r["id"] != len(good):
            break
        good.append(r)
    return good


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


def sample(target: LoadedModel, cfg: ExtractConfig, out_dir: Path) -> list[dict]:
    """Generate ``cfg.num_samples`` samples (resuming ``out_dir/generated.jsonl`` if present).

    Sample i is drawn with its own generator seeded from (cfg.seed, i). Returns dicts with ``id``,
    ``prompt_ids`` ([BOS]) and ``token_ids`` (the new tokens).
    """
    ctx = target.max_context or 1024
    max_new = cfg.max_new_tokens or min(256, ctx - 1)
    if max_new > ctx - 1:
        raise LlmMiaError(f"--length {max_new} does not fit the model's context of {ctx} tokens")
    path = out_dir / "generated.jsonl"
    rows = _read_generated(path)
    if rows and (rows[0].get("seed") != cfg.seed or len(rows[0]["token_ids"]) != max_new):
        raise LlmMiaError(f"{path} holds samples of another run (seed or length differ); use another --out")
    rows = rows[: cfg.num_samples]
    io.write_jsonl(path, rows)  # rewrite without any torn tail before appending
    bos = target.bos_id
    eos = target.tokenizer.eos_token_id
    with open(path, "a", encoding="utf-8") as f, bar("sampling", cfg.num_samples, enabled=cfg.progress) as adv:
        adv(len(rows))
        for b0 in range(len(rows), cfg.num_samples, cfg.batch_size):
            idx = list(range(b0, min(b0 + cfg.batch_size, cfg.num_samples)))
            gens = generate(target.model, [[bos]] * len(idx), max_new_tokens=max_new, pad_id=bos,
                            seeds=[sample_seed(cfg.seed, i) for i in idx], top_k=cfg.top_k,
                            min_new_tokens=max_new, eos_id=eos)
            for i, g in zip(idx, gens):
                row = {"id": i, "seed": cfg.seed, "prompt_ids": g.prompt, "token_ids": g.new_ids}
                f.write(io.dumps(row) + "\n")
                rows.append(row)
            f.flush()
            os.fsync(f.fileno())
            adv(len(idx))
    return rows


def extract(target: LoadedModel, out_dir: str | os.PathLike, *, reference: LoadedModel | None = None,
            train_texts: Sequence[str] | None = None, secrets: Sequence = (), cfg: ExtractConfig | None = None) -> dict:
    """Run the whole extraction and write ``samples.jsonl`` and ``top.jsonl`` into ``out_dir``.

    Args:
        target: the audited model. reference: optional reference model (the "reference" ranking).
        train_texts: the training documents, to verify verbatim matches and PII; without them no
            sample can be called memorized (``memorized`` is then null).
        secrets: planted secrets (:class:`llm_mia.secrets.Secret`) to look for in samples.

    Returns:
        A summary dict: counts per ranking of memorized samples and surfaced secrets among the top N.
    """
    from llm_mia.dedup import dedup
    from llm_mia.index import CorpusIndex, text_occurrences
    from llm_mia.pii import find_pii

    cfg = cfg or ExtractConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = sample(target, cfg, out)
    tok = target.tokenizer
    texts = [tok.decode(r["token_ids"]) for r in gen]  # whole-id-list decode (never per token)
    sigs = [s for s in RANKINGS.values() if s != "reference" or reference is not None]
    with bar("scoring", None, enabled=cfg.progress) as adv:
        res = score(target, texts, ids=[r["prompt_ids"] + r["token_ids"] for r in gen],
                    context_lens=[len(r["prompt_ids"]) for r in gen], reference=reference, signals=sigs,
                    batch_size=cfg.score_batch_size, progress=adv)
    index = None
    train_blob = ""
    if train_texts is not None:
        index = CorpusIndex.from_texts(list(train_texts), tok)
        train_blob = "\n\n".join(train_texts)
    protect_vals = [s.secret for s in secrets]

    def protect(text: str) -> set[str]:
        return {v for v in protect_vals if v in text}

    dd = dedup(texts, protect=protect) if cfg.dedup else None
    samples = []
    for i, (g, r, text) in enumerate(zip(gen, res.rows, texts)):
        ids = g["token_ids"]
        row = {"id": i, "text": text, "token_ids": ids, "n_tokens": len(ids), "nll": r["nll"],
               "perplexity": r["perplexity"], "zlib_bytes": r["zlib_bytes"], "scores": r["scores"],
               "flags": r["flags"], "duplicate_of": dd.dropped.get(i) if dd else None}
        if index is not None:
            m = index.longest_match(ids)
            row["longest_match_tokens"] = m.length
            row["longest_match_count"] = m.count
            row["longest_match_text"] = tok.decode(ids[m.start:m.start + m.length]) if m.length else ""
            row["match_span"] = _char_span(text, row["longest_match_text"], tok.decode(ids[:m.start])) if m.length else None
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

    top_rows, table = [], {}
    kept = [s for s in samples if s["duplicate_of"] is None]
    for name, sig in RANKINGS.items():
        if sig not in sigs:
            continue
        ranked = sorted((s for s in kept if s["scores"][sig] == s["scores"][sig]), key=lambda s: -s["scores"][sig])
        top = ranked[: cfg.top_n]
        for rank, s in enumerate(top, 1):
            top_rows.append({"ranking": name, "rank": rank, "id": s["id"], "score": s["scores"][sig],
                             "memorized": s["memorized"], "longest_match_tokens": s["longest_match_tokens"],
                             "match_span": s["match_span"], "secrets": s["secrets"], "text": s["text"]})
        table[name] = {"signal": sig, "top_n": len(top),
                       "memorized": sum(bool(s["memorized"]) for s in top),
                       "secrets": sorted({x for s in top for x in s["secrets"]}),
                       "pii_hits": sum(len(s["pii"]) for s in top)}
    io.write_jsonl(out / "top.jsonl", top_rows)
    mem_ids = {s["id"] for s in kept if s["memorized"]}
    top_mem = {r["id"] for r in top_rows if r["memorized"]}
    summary = {"num_samples": len(samples), "unique_samples": len(kept), "max_new_tokens": len(gen[0]["token_ids"]) if gen else 0,
               "seed": cfg.seed, "top_n": cfg.top_n, "rankings": table,
               "memorized_total": len(mem_ids), "memorized_in_any_top": len(top_mem),
               "secrets_surfaced": sorted({x for s in samples for x in s["secrets"]})}
    io.write_json(out / "extract.json", summary)
    return summary
