"""Designed canaries for a privacy audit from one training run: make, plant, audit.

1. :func:`make_canaries` draws m canaries of one kind (each ``{"id", "text", "kind"}``):
   ``random`` (the secret formats of :mod:`llm_mia.data.secrets`, Carlini et al. 2019), ``new-token``
   (tokens the tokenizer has but the training data never uses, Panda et al. 2025, ICLR, "Privacy
   auditing of large language models"), ``rare-bigram`` (tokens of the training data in pairs that
   never occur there) and ``synthetic`` (in-distribution text sampled from a model at temperature
   >= 0.8, given prompts from the user's data).
2. :func:`plant_canaries` includes each canary independently with probability 1/2 (Poisson
   inclusion), R times, at uniformly random positions of the user's training file, and writes the
   inclusion record ``inclusion.json`` apart from the planted file, which is what the model trains on.
3. :func:`audit_canaries` scores every canary with one membership signal and turns included versus
   excluded into TPR at low FPR and three epsilon lower bounds (:mod:`llm_mia.privacy.bounds`).

Planting, by file type: ``.txt`` (one document a line): each copy is a line of its own; ``.jsonl``
rows with ``text``: each copy is a row ``{"text": canary}``; ``.jsonl`` chat rows with ``messages``:
each copy is a row of its own, ``[{"role": "user", "content": CHAT_PROMPT}, {"role": "assistant",
"content": canary}]``, so the canary sits where chat fine-tuning computes its loss (the audit scores
the canary text alone, without the chat template).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.corpus import load_templates
from llm_mia.data.secrets import make_canary
from llm_mia.data.texts import read_texts
from llm_mia.models.generation import generate

KINDS = ("random", "new-token", "rare-bigram", "synthetic")
#: The user turn of a planted chat row (see the module docstring).
CHAT_PROMPT = "Write down the note."
#: Fewest included and excluded canaries the audit accepts: the split bounds need 2 + 2 per half.
MIN_PER_CLASS = 4


# ----------------------------------------------------------------------------------------------
# The canaries file


def load_canaries(path: str | Path) -> list[dict]:
    """Read a canaries JSONL file: rows with a unique string ``id``, a non-empty unique ``text`` and a
    ``kind`` of :data:`KINDS`. Raises LlmMiaError (one line) naming the line at fault."""
    rows, ids, texts = [], {}, {}
    for line, r in io.jsonl_records(path):
        cid, text, kind = r.get("id"), r.get("text"), r.get("kind")
        if not isinstance(cid, str) or not cid:
            raise LlmMiaError(f"{path}: line {line}: a canary needs a string 'id'")
        if not isinstance(text, str) or not text.strip():
            raise LlmMiaError(f"{path}: line {line}: canary {cid!r} has no text")
        if kind not in KINDS:
            raise LlmMiaError(f"{path}: line {line}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if cid in ids:
            raise LlmMiaError(f"{path}: line {line}: duplicate canary id {cid!r} (first on line {ids[cid]})")
        if text in texts:
            raise LlmMiaError(f"{path}: line {line}: duplicate canary text (same as line {texts[text]})")
        ids[cid], texts[text] = line, line
        rows.append({"id": cid, "text": text, "kind": kind})
    if not rows:
        raise LlmMiaError(f"{path}: no canaries")
    return rows


def _unique(rows: list[dict]) -> list[dict]:
    texts = [r["text"] for r in rows]
    if len(set(texts)) != len(texts):
        raise LlmMiaError("duplicate canaries drawn; use a larger space or fewer canaries")
    return rows


# ----------------------------------------------------------------------------------------------
# Making canaries


def _token_ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _round_trip_tokens(tok, ids) -> list[int]:
    """Ids that are not special, decode to non-blank text without U+FFFD and re-encode to themselves."""
    special = set(tok.all_special_ids)
    out = []
    for i in ids:
        if i in special or not 0 <= i < len(tok):
            continue
        s = tok.decode([i])
        if s.strip() and "\ufffd" not in s and _token_ids(tok, s) == [i]:
            out.append(i)
    return out


def _sequences(tok, pool: list[int], n: int, length: int, rng: random.Random, ok=lambda ids: True) -> list[str]:
    """n distinct texts, each the decoding of ``length`` ids drawn from ``pool`` that re-encodes to
    exactly those ids and passes ``ok``."""
    out, seen = [], set()
    for _ in range(200 * n):
        if len(out) == n:
            break
        ids = [pool[rng.randrange(len(pool))] for _ in range(length)]
        if not ok(ids):
            continue
        text = tok.decode(ids)
        if text not in seen and _token_ids(tok, text) == ids:
            seen.add(text)
            out.append(text)
    if len(out) < n:
        raise LlmMiaError(f"could draw only {len(out)} of {n} distinct canaries from {len(pool)} tokens")
    return out


def new_tokens(tok, train_texts: Sequence[str]) -> list[int]:
    """Token ids the tokenizer has (``< len(tokenizer)``, no special token, round-trip exact) that no
    training text uses."""
    used = set()
    for t in train_texts:
        used.update(_token_ids(tok, t))
    return _round_trip_tokens(tok, (i for i in range(len(tok)) if i not in used))


def make_canaries(kind: str, n: int = 1000, *, seed: int = 0, tokenizer=None, model=None,
                  train_texts: Sequence[str] | None = None, length: int = 8, temperature: float = 1.0,
                  max_new_tokens: int = 32, prompt_tokens: int = 8) -> list[dict]:
    """``n`` distinct canaries of ``kind`` (see the module docstring), ids ``{kind}-{i}``.

    Args:
        tokenizer: needed by ``new-token`` and ``rare-bigram`` (or taken from ``model``).
        model: a :class:`~llm_mia.models.hf.LoadedModel`, needed by ``synthetic``.
        train_texts: the user's training texts: which tokens / bigrams they use, the synthetic
            prompts (their first ``prompt_tokens`` tokens); canaries occurring in them are redrawn.
        length: tokens per ``new-token`` / ``rare-bigram`` canary.
        temperature: ``synthetic`` sampling temperature (>= 0.8, full distribution).
        max_new_tokens: tokens per ``synthetic`` canary.

    Raises:
        LlmMiaError: unknown kind, n < 1, a missing input, too few usable tokens, temperature < 0.8.
    """
    if kind not in KINDS:
        raise LlmMiaError(f"unknown canary kind '{kind}' (known: {', '.join(KINDS)})")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LlmMiaError(f"--n must be a positive number of canaries, got {n!r}")
    rng = random.Random(f"{seed}:canaries:{kind}")
    tok = tokenizer if tokenizer is not None else (model.tokenizer if model is not None else None)
    if kind != "random" and (tok is None or train_texts is None):
        raise LlmMiaError(f"{kind} canaries need the tokenizer (--tokenizer or --model) and the training file (--train)")
    if kind == "random":
        texts = _random_texts(n, seed)
    elif kind == "new-token":
        pool = new_tokens(tok, train_texts)
        if len(pool) < 2:
            raise LlmMiaError(f"the tokenizer has only {len(pool)} usable tokens that the training data never uses")
        texts = _sequences(tok, pool, n, length, rng)
    elif kind == "rare-bigram":
        freq, bigrams = Counter(), set()
        for t in train_texts:
            ids = _token_ids(tok, t)
            freq.update(ids)
            bigrams.update(zip(ids, ids[1:]))
        pool = _round_trip_tokens(tok, [i for i, _ in freq.most_common(2000)])
        if len(pool) < 2:
            raise LlmMiaError("the training data has fewer than 2 usable tokens for rare-bigram canaries")
        texts = _sequences(tok, pool, n, length, rng, ok=lambda ids: not any(b in bigrams for b in zip(ids, ids[1:])))
    else:
        texts = _synthetic_texts(model, train_texts, n, seed=seed, temperature=temperature,
                                 max_new_tokens=max_new_tokens, prompt_tokens=prompt_tokens)
    if train_texts:
        joined = "\n".join(train_texts)
        texts = [t for t in texts if t not in joined]
        if len(texts) < n:
            raise LlmMiaError(f"only {len(texts)} of {n} {kind} canaries are absent from the training data")
    return _unique([{"id": f"{kind}-{i}", "text": t, "kind": kind} for i, t in enumerate(texts)])


def _random_texts(n: int, seed: int) -> list[str]:
    """Sentences of the canary templates (prompts/canary_templates.json) with Faker names and
    uniformly drawn secrets (:func:`llm_mia.data.secrets.make_canary`), in template rotation."""
    from faker import Faker

    templates = load_templates()
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(f"{seed}:canaries:random")
    out, seen = [], set()
    for i in range(50 * n):
        if len(out) == n:
            break
        s = make_canary(f"c{i}", templates[len(out) % len(templates)], f"{fake.first_name()} {fake.last_name()}",
                        rng, count=1)
        if s.text not in seen:
            seen.add(s.text)
            out.append(s.text)
    return out


def one_line(text: str) -> str:
    """``text`` with every line break (those ``str.splitlines`` splits at) turned into a space: a canary
    must be one document in a line-based training file."""
    return " ".join(text.splitlines()) if len(text.splitlines()) > 1 or text.endswith(("\n", "\r")) else text


def _synthetic_texts(model, train_texts, n, *, seed, temperature, max_new_tokens, prompt_tokens) -> list[str]:

    if model is None:
        raise LlmMiaError("synthetic canaries need a model to sample from (--model)")
    if not temperature >= 0.8:
        raise LlmMiaError(f"synthetic canaries are sampled at temperature >= 0.8, got {temperature}")
    tok = model.tokenizer
    prompts = [ids[:prompt_tokens] for ids in (_token_ids(tok, t) for t in train_texts) if ids]
    if not prompts:
        raise LlmMiaError("the training file has no text to prompt the synthetic canaries with")
    rng = random.Random(f"{seed}:canaries:synthetic")
    out, seen, tries = [], set(), 0
    while len(out) < n and tries < 20:
        tries += 1
        batch = [[model.bos_id] + prompts[rng.randrange(len(prompts))] for _ in range(n - len(out))]
        seeds = [rng.randrange(2**31) for _ in batch]
        for b in range(0, len(batch), 64):
            gens = generate(model.model, batch[b:b + 64], max_new_tokens=max_new_tokens, pad_id=model.bos_id,
                            seeds=seeds[b:b + 64], top_k=0, temperature=temperature,
                            min_new_tokens=max_new_tokens, eos_id=tok.eos_token_id)
            for g in gens:
                text = one_line(tok.decode(g.new_ids, skip_special_tokens=True)).strip()
                if text and text not in seen:
                    seen.add(text)
                    out.append(text)
    if len(out) < n:
        raise LlmMiaError(f"sampled only {len(out)} distinct synthetic canaries of {n}")
    return out[:n]


# ----------------------------------------------------------------------------------------------
# Planting


def _read_train(path: Path) -> tuple[list, str]:
    """(rows, format): ``.txt`` lines ("txt"), or ``.jsonl`` objects ("text" or "chat")."""

    ext = path.suffix.lower()
    if ext == ".txt":
        return read_texts(path).texts, "txt"
    if ext != ".jsonl":
        raise LlmMiaError(f"{path}: the training file must be .txt (one document a line) or .jsonl")
    rows = io.read_jsonl(path)
    if not rows:
        return [], "text"
    if all(isinstance(r.get("messages"), list) for r in rows):
        return rows, "chat"
    if all(isinstance(r.get("text"), str) for r in rows):
        return rows, "text"
    raise LlmMiaError(f"{path}: every row needs a 'text' string, or every row a 'messages' list")


def _row_text(row, fmt: str) -> str:
    if fmt == "txt":
        return row
    if fmt == "text":
        return row["text"]
    return "\n".join(str(m.get("content", "")) for m in row["messages"] if isinstance(m, dict))


def _canary_row(text: str, fmt: str):
    if fmt == "txt":
        return text
    if fmt == "text":
        return {"text": text}
    return {"messages": [{"role": "user", "content": CHAT_PROMPT}, {"role": "assistant", "content": text}]}


def training_text(train_path: str | Path) -> str:
    """Every document of a training file (.txt, .jsonl text or chat) as one string, one per line: what
    a canary is looked up in (planting refuses a canary already there; an audit checks its flags)."""
    rows, fmt = _read_train(Path(train_path))
    return "\n".join(_row_text(r, fmt) for r in rows)


def plant_canaries(train_path: str | Path, canaries_path: str | Path, out_dir: str | Path, *,
                   repeats: int = 1, seed: int = 0) -> dict:
    """Plant canaries into a copy of the user's training file; returns the inclusion record.

    Each canary is included independently with probability 1/2 (the Poisson sampling the one-run
    bound of Steinke et al. 2023 assumes), ``repeats`` times, each copy at a uniformly random position
    between the file's rows. Writes ``out_dir/train.<ext>`` (what the model trains on) and
    ``out_dir/inclusion.json`` (never train on it): canary ids and included flags, seed, repeats and
    the SHA-256 of the canaries file, the original and the planted training file.

    Raises:
        LlmMiaError: a bad file or format, repeats < 1, a canary already in the training file, or an
            output folder that already holds a planting.
    """
    train_path, out = Path(train_path), Path(out_dir)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise LlmMiaError(f"--repeats must be a positive int, got {repeats!r}")
    io.check_output_dir(out)
    canaries = load_canaries(canaries_path)
    rows, fmt = _read_train(train_path)
    if not any(_row_text(r, fmt).strip() for r in rows):
        raise LlmMiaError(f"{train_path} holds no documents")
    planted_path = out / f"train{train_path.suffix.lower()}"
    for p in (planted_path, out / "inclusion.json"):
        if p.exists():
            raise LlmMiaError(f"{p} exists: plant into a new folder")
    joined = "\n".join(_row_text(r, fmt) for r in rows)
    broken = [c["id"] for c in canaries if one_line(c["text"]) != c["text"]]
    if fmt == "txt" and broken:
        raise LlmMiaError(f"canary {broken[0]!r} ({len(broken)} in all) holds a line break: planted into a .txt file "
                          "it would become two documents; plant into a .jsonl training file")
    for c in canaries:
        if c["text"] in joined:
            raise LlmMiaError(f"canary {c['id']!r} already occurs in {train_path}: it would count as included")
    rng = random.Random(f"{seed}:plant")
    included = [rng.random() < 0.5 for _ in canaries]
    copies = [c["text"] for c, inc in zip(canaries, included) if inc for _ in range(repeats)]
    rng.shuffle(copies)
    gaps = sorted(rng.randrange(len(rows) + 1) for _ in copies)  # copy j goes before original row gaps[j]
    merged, j = [], 0
    for i in range(len(rows) + 1):
        while j < len(gaps) and gaps[j] == i:
            merged.append(_canary_row(copies[j], fmt))
            j += 1
        if i < len(rows):
            merged.append(rows[i])
    if fmt == "txt":
        io.write_text(planted_path, "".join(x + "\n" for x in merged))
    else:
        io.write_jsonl(planted_path, merged)
    record = {"kind": "llm-mia canary inclusion", "version": 1, "seed": seed, "repeats": repeats,
              "inclusion_probability": 0.5, "format": fmt, "chat_prompt": CHAT_PROMPT if fmt == "chat" else None,
              "canaries_file": str(canaries_path), "canaries_sha256": io.sha256_file(canaries_path),
              "train_file": str(train_path), "train_sha256": io.sha256_file(train_path),
              "planted_file": planted_path.name, "planted_sha256": io.sha256_file(planted_path),
              "n_canaries": len(canaries), "n_included": sum(included),
              "canaries": [{"id": c["id"], "included": inc} for c, inc in zip(canaries, included)]}
    io.write_json(out / "inclusion.json", record)
    return record


# ----------------------------------------------------------------------------------------------
# Auditing


