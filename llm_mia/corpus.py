"""Corpus sources, the member / held-out split, and planting secrets into the members.

``build_corpus`` writes four files into one folder:

- ``train.jsonl``   member documents (``{"id", "text"}`` per line), secrets inserted;
- ``heldout.jsonl`` non-member documents from the same source, never touched by a secret;
- ``secrets.json``  the planted secrets and never-inserted controls (:class:`llm_mia.secrets.Secret`);
- ``corpus.json``   the settings, counts and sha256 of the other three files; written last, so a
  folder without it (or with hashes that do not match) is an interrupted build.

Each planted secret has its own prefix (a Faker name in a template): a model trained on twelve
secrets behind one shared prefix has no single greedy continuation to give (docs design.md,
"Corpus and secrets: what was measured here"). Source of the canary method: Carlini et al. 2019,
"The Secret Sharer" (USENIX Security).
"""

from __future__ import annotations

import ast
import difflib
import importlib.metadata
import os
import platform
import random
import re
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from llm_mia.errors import LlmMiaError
from llm_mia.io import read_json, read_jsonl, read_text, sha256_file, write_json, write_jsonl
from llm_mia.secrets import Secret, check_template, make_canary, make_pii, save_secrets

PYTHON_DOCS = "python-docs"
PYTHON_DOCS_MAX_CHARS = 1_200_000  # ~300k BPE tokens: the demo model's budget (design.md)
CHUNK_CHARS = 2_000  # long python-docs documents are split at paragraph boundaries near this size
MIN_DOC_CHARS = 200  # shorter python-docs documents are dropped (mostly one-line docstrings)
TEMPLATES_PATH = Path(__file__).resolve().parents[1] / "prompts" / "canary_templates.json"
# Stdlib folders that are tests, tools, generated tables or third-party code, not documentation.
_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "turtledemo", "encodings",
              "pydoc_data", "ensurepip", "__pycache__"}
_LOCAL_SUFFIXES = (".txt", ".jsonl")


# ---------------------------------------------------------------------------------------- sources

def load_source(source: str, *, max_chars: int | None = None) -> list[str]:
    """Load a corpus source as a list of non-empty document strings, in a deterministic order.

    Sources: ``"python-docs"`` (embedded: the stdlib's pydoc topics, then one document per stdlib
    module made of its docstrings, read with ``ast``, never imported; long documents split into
    ~2,000-char chunks at paragraph boundaries; documents under 200 chars dropped); a ``.txt`` file
    (documents separated by blank lines); a ``.jsonl`` file (string field ``"text"`` per line); a
    folder holding such files (recursively, sorted by path); ``"hf:NAME[:CONFIG]"`` (split
    ``train`` of a Hugging Face dataset, field ``"text"``).

    ``max_chars`` caps the total size in characters: documents are taken in order while they fit.
    Default: 1,200,000 for python-docs, no cap otherwise.
    Raises :class:`LlmMiaError` for an unknown source, a missing or unreadable file, a malformed
    line, a dataset that cannot be loaded, or an empty result.
    """
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int)
                                  or max_chars <= 0):
        raise LlmMiaError(f"max_chars must be a positive int, got {max_chars!r}")
    if not isinstance(source, str) or not source:
        raise LlmMiaError(f"corpus source must be a non-empty string, got {source!r}")
    if source == PYTHON_DOCS:
        docs: Iterable[str] = _python_docs()
        max_chars = PYTHON_DOCS_MAX_CHARS if max_chars is None else max_chars
    elif source.startswith("hf:"):
        docs = _hf_docs(source)
    elif Path(source).exists():
        docs = _local_docs(Path(source))
    elif source.endswith(_LOCAL_SUFFIXES) or os.sep in source or "/" in source:
        raise LlmMiaError(f"corpus file not found: {source}")
    else:
        near = difflib.get_close_matches(source, [PYTHON_DOCS], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise LlmMiaError(f"unknown corpus source {source!r}: expected {PYTHON_DOCS!r}, "
                          f"hf:NAME[:CONFIG], a .txt or .jsonl file, or a folder of them{hint}")
    out, total = [], 0
    for doc in docs:
        if max_chars is not None and total + len(doc) > max_chars:
            break
        out.append(doc)
        total += len(doc)
    if not out:
        cap = f" within max_chars={max_chars}" if max_chars is not None else ""
        raise LlmMiaError(f"corpus source {source} gave no documents{cap}")
    return out


def _tidy(text: str) -> str:
    """Tabs to spaces, no trailing spaces, at most one blank line in a row, stripped."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").expandtabs(4).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Greedily pack paragraphs into chunks of <= ``size`` chars; a longer paragraph stays whole,
    and a chunk under MIN_DOC_CHARS always takes the next paragraph (or joins the one before)."""
    chunks: list[str] = []
    for para in text.split("\n\n"):
        if chunks and (len(chunks[-1]) + 2 + len(para) <= size or len(chunks[-1]) < MIN_DOC_CHARS):
            chunks[-1] += "\n\n" + para
        else:
            chunks.append(para)
    if len(chunks) > 1 and len(chunks[-1]) < MIN_DOC_CHARS:
        last = chunks.pop()
        chunks[-1] += "\n\n" + last
    return chunks


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith(("config-", "_")) for p in parts[:-1]):
            continue
        if path.stem.startswith("_") and path.stem != "__init__":
            continue
        files.append(path)
    return files


def _module_docstrings(path: Path) -> list[str]:
    """The module docstring, then public class / function / method docstrings in source order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old stdlib files
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []
    found = []

    def visit(node: ast.AST) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            found.append(doc)
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and not child.name.startswith("_"):
                # Functions: only their own docstring; nested helpers are implementation detail.
                if isinstance(child, ast.ClassDef):
                    visit(child)
                elif (d := ast.get_docstring(child, clean=True)):
                    found.append(d)

    visit(tree)
    return found


def _python_docs() -> Iterator[str]:
    """Yield python-docs documents lazily (so a small max_chars never parses the whole stdlib).

    Pydoc topics first (sorted by topic name), then stdlib modules (sorted by path). A docstring or
    chunk already seen earlier is skipped, so repeated boilerplate is not a hidden duplicate that
    blurs the member / held-out line.
    """
    from pydoc_data.topics import topics

    seen: set[str] = set()  # docstrings / topics
    seen_chunks: set[str] = set()

    def emit(pieces: list[str]) -> Iterator[str]:
        fresh = []
        for piece in map(_tidy, pieces):
            if piece and piece not in seen:
                seen.add(piece)
                fresh.append(piece)
        for chunk in _chunks("\n\n".join(fresh)):
            chunk = chunk.strip()
            if len(chunk) >= MIN_DOC_CHARS and chunk not in seen_chunks:
                seen_chunks.add(chunk)
                yield chunk

    for key in sorted(topics):
        yield from emit([topics[key]])
    for path in _stdlib_files():
        yield from emit(_module_docstrings(path))


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _LOCAL_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise LlmMiaError(f"folder {path} holds no .txt or .jsonl files")
        return files
    if path.suffix not in _LOCAL_SUFFIXES:
        raise LlmMiaError(f"unsupported corpus file type {path.suffix or '(none)'!r}: {path}; "
                          "expected .txt or .jsonl")
    return [path]


def _local_docs(path: Path) -> Iterator[str]:
    for file in _local_files(path):
        if file.suffix == ".txt":
            docs = re.split(r"\n[ \t]*\n", read_text(file).replace("\r\n", "\n"))
        else:
            docs = []
            for i, row in enumerate(read_jsonl(file)):
                if not isinstance(row.get("text"), str):
                    raise LlmMiaError(f"{file}: record {i} has no string field 'text'")
                docs.append(row["text"])
        yield from (d.strip() for d in docs if d.strip())


def _hf_docs(source: str) -> list[str]:
    name, _, config = source[3:].partition(":")
    if not name:
        raise LlmMiaError(f"corpus source {source!r}: expected hf:NAME[:CONFIG]")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split="train")
        if "text" not in ds.column_names:
            raise LlmMiaError(f"has no 'text' field (fields: {', '.join(ds.column_names)})")
        return [t.strip() for t in ds["text"] if isinstance(t, str) and t.strip()]
    except Exception as e:  # network, missing dataset, bad config: all one user-facing error
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LlmMiaError(f"could not load Hugging Face dataset {name}: {msg}") from None


# ------------------------------------------------------------------------------------ the corpus

@dataclass
class CorpusSummary:
    """What :func:`build_corpus` wrote: file paths, document counts and train size in chars."""

    out_dir: Path
    train_path: Path
    heldout_path: Path
    secrets_path: Path
    meta_path: Path
    n_train: int
    n_heldout: int
    n_secrets: int
    train_chars: int

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def load_templates(templates: str | os.PathLike | Sequence[dict] | None = None) -> list[dict]:
    """Canary templates: ``None`` -> ``prompts/canary_templates.json``; a path; or a list of dicts.

    Each template is ``{"prefix_template": "... {name} ...", "format": "{d6}", "suffix": "."}``.
    Raises :class:`LlmMiaError` for a missing/corrupt file, an empty list or a malformed template.
    """
    if templates is None or isinstance(templates, (str, os.PathLike)):
        path = TEMPLATES_PATH if templates is None else Path(templates)
        templates = read_json(path)
    if not isinstance(templates, (list, tuple)) or not templates:
        raise LlmMiaError("canary templates must be a non-empty list")
    for t in templates:
        check_template(t)
    return [dict(t) for t in templates]


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LlmMiaError(f"{name} must be an int >= {minimum}, got {value!r}")


def _make_secrets(*, seed: int, repeats: Sequence[int], canaries_per_repeat: int,
                  pii_per_repeat: int, controls_per_kind: int, templates: list[dict],
                  avoid_text: str) -> list[Secret]:
    """Planted secrets for each repeat count, then controls (count 0) for each kind.

    Every secret gets a fresh name, and a random part that occurs nowhere in the source text nor
    in any other secret's sentence (redrawn otherwise), so occurrence counts are exact.
    """
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(f"{seed}:secrets")
    secrets: list[Secret] = []
    names: set[str] = set()
    n_canaries = 0

    def fresh(make) -> Secret:
        for _ in range(1000):
            name = f"{fake.first_name()} {fake.last_name()}"
            s = make(name)
            if (name not in names and s.secret not in avoid_text
                    and all(s.secret not in o.text and o.secret not in s.text for o in secrets)):
                names.add(name)
                return s
        raise LlmMiaError(f"could not draw a unique secret for {s.id} (format {s.format})")

    def canary(id: str, count: int) -> Secret:
        nonlocal n_canaries
        template = templates[n_canaries % len(templates)]  # rotation across all canaries
        n_canaries += 1
        return fresh(lambda name: make_canary(id, template, name, rng, count=count))

    def pii(id: str, count: int) -> Secret:
        return fresh(lambda name: make_pii(id, fake, name=name, count=count))

    for r in repeats:
        secrets += [canary(f"canary-r{r}-{j}", r) for j in range(canaries_per_repeat)]
        secrets += [pii(f"pii-r{r}-{j}", r) for j in range(pii_per_repeat)]
    secrets += [canary(f"canary-control-{j}", 0) for j in range(controls_per_kind)]
    secrets += [pii(f"pii-control-{j}", 0) for j in range(controls_per_kind)]
    return secrets


_BOUNDARY = re.compile(r"(?<=[.!?])[ \t]+(?=[A-Z])|\n[ \t]*\n(?=\S)")


def _insert(doc: str, sentences: list[str], rng: random.Random) -> str:
    """Insert each sentence, on its own, at a random boundary of the original ``doc``: as its own
    paragraph at the start, the end or a paragraph start; or between two sentences of a line
    (after ``.``, ``!`` or ``?`` and before a capital). Boundaries come from the original text
    only, so no insertion ever lands inside another."""
    bounds = [0, len(doc)] + [m.end() for m in _BOUNDARY.finditer(doc)]
    at: dict[int, list[str]] = {}
    for s in sentences:
        at.setdefault(rng.choice(bounds), []).append(s)
    out, prev = [], 0
    for pos in sorted(at):
        out.append(doc[prev:pos])
        if pos == len(doc):
            out.append("".join("\n\n" + s for s in at[pos]))
        else:
            sep = "\n\n" if pos == 0 or doc[pos - 1] == "\n" else " "
            out.append("".join(s + sep for s in at[pos]))
        prev = pos
    out.append(doc[prev:])
    return "".join(out)


def build_corpus(source: str, out_dir: str | os.PathLike, *, seed: int = 0,
                 repeats: Sequence[int] = (1, 2, 4, 8, 16, 32), heldout_fraction: float = 0.2,
                 canaries_per_repeat: int = 2, pii_per_repeat: int = 2, controls_per_kind: int = 2,
                 max_chars: int | None = None,
                 templates: str | os.PathLike | Sequence[dict] | None = None) -> CorpusSummary:
    """Build a member / held-out corpus with planted secrets and write it to ``out_dir``.

    Steps: load ``source`` (see :func:`load_source`; ``max_chars`` in characters); shuffle the
    documents with ``seed`` and hold out ``round(heldout_fraction * n)`` of them (at least one on
    each side); for each ``r`` in ``repeats`` make ``canaries_per_repeat`` canaries (templates in
    rotation, a Faker name each, the random part uniform over the format's space) and
    ``pii_per_repeat`` Faker PII records (SSN as the secret, Luhn-valid card), each inserted ``r``
    times as its own sentence into distinct randomly chosen member documents (more than the number
    of members wraps around); plus ``controls_per_kind`` never-inserted controls (count 0) per kind.
    Held-out documents are never modified. Same arguments -> byte-identical files.

    Writes ``train.jsonl``, ``heldout.jsonl``, ``secrets.json`` and, last, ``corpus.json`` (with
    the sha256 of the three others), each atomically; everything is computed and validated before
    the first write, and an old ``corpus.json`` is removed first, so an interrupted build never
    looks complete. Files of an earlier build in ``out_dir`` are overwritten.
    Raises :class:`LlmMiaError` for a bad source, fewer than 2 documents, a non-positive or
    non-int repeat, ``heldout_fraction`` outside (0, 1), negative counts, bad templates, or an
    ``out_dir`` that is a file. Source: canary insertion of Carlini et al. 2019 (The Secret Sharer).
    """
    _check_int("seed", seed, 0)
    repeats = tuple(repeats)
    for r in repeats:
        _check_int("each repeat", r, 1)
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, (int, float)) \
            or not 0 < heldout_fraction < 1:
        raise LlmMiaError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    for name, v in (("canaries_per_repeat", canaries_per_repeat), ("pii_per_repeat", pii_per_repeat),
                    ("controls_per_kind", controls_per_kind)):
        _check_int(name, v, 0)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LlmMiaError(f"output folder {out} exists and is a file")
    templates = load_templates(templates)
    docs = load_source(source, max_chars=max_chars)
    if len(docs) < 2:
        raise LlmMiaError(f"corpus source {source} gave {len(docs)} document; need at least 2 "
                          "(members and held-out)")

    order = list(range(len(docs)))
    random.Random(f"{seed}:split").shuffle(order)
    n_held = min(len(docs) - 1, max(1, round(heldout_fraction * len(docs))))
    held_idx, train_idx = sorted(order[:n_held]), sorted(order[n_held:])

    secrets = _make_secrets(seed=seed, repeats=repeats, canaries_per_repeat=canaries_per_repeat,
                            pii_per_repeat=pii_per_repeat, controls_per_kind=controls_per_kind,
                            templates=templates, avoid_text="\n".join(docs))
    rng = random.Random(f"{seed}:insert")
    pending: dict[int, list[str]] = {}
    for s in secrets:
        chosen: list[int] = []
        while len(chosen) < s.count:
            chosen += rng.sample(train_idx, min(s.count - len(chosen), len(train_idx)))
        for i in chosen:
            pending.setdefault(i, []).append(s.text)
    texts = list(docs)
    for i in sorted(pending):
        texts[i] = _insert(docs[i], pending[i], rng)

    width = max(5, len(str(len(docs) - 1)))
    train_rows = [{"id": f"doc-{i:0{width}d}", "text": texts[i]} for i in train_idx]
    held_rows = [{"id": f"doc-{i:0{width}d}", "text": texts[i]} for i in held_idx]
    train_chars = sum(len(r["text"]) for r in train_rows)

    out.mkdir(parents=True, exist_ok=True)
    paths = {n: out / n for n in ("train.jsonl", "heldout.jsonl", "secrets.json", "corpus.json")}
    paths["corpus.json"].unlink(missing_ok=True)
    write_jsonl(paths["train.jsonl"], train_rows)
    write_jsonl(paths["heldout.jsonl"], held_rows)
    save_secrets(paths["secrets.json"], secrets)
    versions = {"faker": importlib.metadata.version("faker")}
    if source == PYTHON_DOCS:
        versions["python"] = platform.python_version()  # the stdlib docs are the corpus
    write_json(paths["corpus.json"], {
        "source": source, "versions": versions, "seed": seed, "repeats": list(repeats),
        "heldout_fraction": heldout_fraction, "canaries_per_repeat": canaries_per_repeat,
        "pii_per_repeat": pii_per_repeat, "controls_per_kind": controls_per_kind,
        "max_chars": max_chars, "templates": templates,
        "n_documents": len(docs), "n_train": len(train_rows), "n_heldout": len(held_rows),
        "n_secrets": len(secrets), "n_insertions": sum(s.count for s in secrets),
        "train_chars": train_chars, "heldout_chars": sum(len(r["text"]) for r in held_rows),
        "sha256": {n: sha256_file(paths[n]) for n in ("train.jsonl", "heldout.jsonl", "secrets.json")},
    })
    return CorpusSummary(out_dir=out, train_path=paths["train.jsonl"],
                         heldout_path=paths["heldout.jsonl"], secrets_path=paths["secrets.json"],
                         meta_path=paths["corpus.json"], n_train=len(train_rows),
                         n_heldout=len(held_rows), n_secrets=len(secrets), train_chars=train_chars)
