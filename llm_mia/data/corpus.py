"""Corpus sources, the member / held-out split, and planting secrets into the members.

``build_corpus`` writes four files into one folder:

- ``train.jsonl``   member documents (``{"id", "text"}`` per line), secrets inserted;
- ``heldout.jsonl`` non-member documents from the same source, never touched by a secret;
- ``secrets.json``  the planted secrets and never-inserted controls (:class:`llm_mia.data.secrets.Secret`);
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
import gzip
import importlib.metadata
import json
import os
import platform
import random
import re
import sysconfig
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data.topics import topics

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import (
    check_output_dir,
    read_json,
    sha256_file,
    write_json,
    write_jsonl,
)
from llm_mia.core.resources import CANARY_TEMPLATES as TEMPLATES_PATH
from llm_mia.data.dedup import DedupResult, dedup
from llm_mia.data.secrets import (
    Secret,
    check_template,
    make_canary,
    make_pii,
    save_secrets,
)

PYTHON_DOCS = "python-docs"
PYTHON_DOCS_MAX_CHARS = 1_200_000  # ~300k BPE tokens: the demo model's budget (design.md)
CHUNK_CHARS = 2_000  # long python-docs documents are split at paragraph boundaries near this size
MIN_DOC_CHARS = 200  # shorter python-docs documents are dropped (mostly one-line docstrings)


# Stdlib folders that are tests, tools, generated tables or third-party code, not documentation.
_SKIP_DIRS = {"test", "tests", "site-packages", "idlelib", "lib2to3", "turtledemo", "encodings",
              "pydoc_data", "ensurepip", "__pycache__"}


# ---------------------------------------------------------------------------------------- sources

#: How a text file (or a .jsonl / hf record) becomes documents: whole, blank-line paragraphs, lines.
UNITS = ("file", "paragraph", "line")
MIN_CHARS = 50  # corpus build: shorter documents are dropped (and counted) by default
FAKER_LOCALE = "en_US"  # the planted PII's locale; corpus.json's "locales" (the PII detection's phone regions)
MAX_LISTED = 1000  # corpus.json lists at most this many merged documents and skipped files (counts are whole)


@dataclass
class SourceDocs:
    """What :func:`read_source` read: ``docs`` (n,) and where each came from, ``origins`` (n,)
    (``path#k`` of the k-th document of a file, ``path:line`` of a .jsonl record, ``hf:NAME#k``,
    ``python-docs#k``); ``unit`` used; ``n_short`` documents dropped below ``min_chars``;
    ``n_capped`` documents left out by ``max_chars``; ``skipped`` files not read,
    ``[{"path", "reason"}]`` (hidden, unsupported type, binary, unreadable)."""

    docs: list[str]
    origins: list[str]
    unit: str | None
    n_short: int = 0
    n_capped: int = 0
    skipped: list[dict] = field(default_factory=list)


def load_source(source: str, *, max_chars: int | None = None, unit: str | None = None,
                min_chars: int = 1) -> list[str]:
    """The documents of :func:`read_source` (a list of non-empty strings, deterministic order)."""
    return read_source(source, max_chars=max_chars, unit=unit, min_chars=min_chars).docs


def read_source(source: str, *, max_chars: int | None = None, unit: str | None = None,
                min_chars: int = 1) -> SourceDocs:
    """Load a corpus source as documents, in a deterministic order, saying what was left out.

    Sources: ``"python-docs"`` (embedded: the stdlib's pydoc topics, then one document per stdlib
    module made of its docstrings, read with ``ast``, never imported; long documents split into
    ~2,000-char chunks at paragraph boundaries; documents under 200 chars dropped); a text file
    (``.txt``, ``.md`` or no extension); a ``.jsonl`` file (string field ``"text"`` per line); any
    of these gzip-compressed (``.gz``); a folder holding such files (recursively, sorted by path);
    ``"hf:NAME[:CONFIG]"`` (split ``train`` of a Hugging Face dataset, field ``"text"``).

    ``unit`` (:data:`UNITS`) says what one document is: ``"file"`` a whole text file (a .jsonl or
    hf record stays one document), ``"paragraph"`` each blank-line-separated paragraph of a text
    file or record, ``"line"`` each line. Default: ``"paragraph"`` for a single text file (so one
    file gives several documents), ``"file"`` for a folder, the record for .jsonl and hf sources;
    python-docs has its own chunks and refuses a unit. Documents are stripped; those shorter than
    ``min_chars`` characters are dropped and counted (``n_short``). ``max_chars`` caps the total
    size: documents are taken in order while they fit. Default: 1,200,000 for python-docs, no cap
    otherwise. In a folder, hidden entries, other file types, binary (non-UTF-8) files and files
    that cannot be decoded are skipped and listed in ``skipped``, never silently.

    Raises :class:`LlmMiaError` for an unknown source or unit, a missing or unreadable file given
    by name, a malformed .jsonl line in a file given by name, a dataset that cannot be loaded, or
    an empty result.
    """
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int)
                                  or max_chars <= 0):
        raise LlmMiaError(f"max_chars must be a positive int, got {max_chars!r}")
    _check_int("min_chars", min_chars, 1)
    if unit is not None and unit not in UNITS:
        raise LlmMiaError(f"unknown document unit {unit!r}: use {', '.join(UNITS)}")
    if not isinstance(source, str) or not source:
        raise LlmMiaError(f"corpus source must be a non-empty string, got {source!r}")
    skipped: list[dict] = []
    if source == PYTHON_DOCS:
        if unit is not None:
            raise LlmMiaError(f"--unit does not apply to {PYTHON_DOCS} (its documents are ~2,000-char chunks)")
        pairs: Iterable[tuple[str, str]] = ((f"{PYTHON_DOCS}#{k}", d) for k, d in enumerate(_python_docs()))
        max_chars = PYTHON_DOCS_MAX_CHARS if max_chars is None else max_chars
    elif source.startswith("hf:"):
        unit = unit or "record"
        pairs = _split_records(((f"{source}#{k}", t) for k, t in enumerate(_hf_docs(source))), unit)
    elif Path(source).exists():
        path = Path(source)
        unit = unit or ("file" if path.is_dir() else "paragraph" if _file_type(path) == "text" else "record")
        pairs = _local_docs(path, unit, skipped)
    elif source.endswith(_LOCAL_SUFFIXES) or os.sep in source or "/" in source:
        raise LlmMiaError(f"corpus file not found: {source}")
    else:
        near = difflib.get_close_matches(source, [PYTHON_DOCS], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise LlmMiaError(f"unknown corpus source {source!r}: expected {PYTHON_DOCS!r}, "
                          f"hf:NAME[:CONFIG], a .txt/.md/.jsonl(.gz) file, or a folder of them{hint}")
    out = SourceDocs(docs=[], origins=[], unit=unit, skipped=skipped)
    total, full = 0, False
    for origin, doc in pairs:
        doc = doc.strip()
        if not doc:
            continue
        if len(doc) < min_chars:
            out.n_short += 1
            continue
        if full or (max_chars is not None and total + len(doc) > max_chars):
            if source == PYTHON_DOCS:
                break  # lazily generated: the rest is never parsed
            full = True
            out.n_capped += 1
            continue
        out.docs.append(doc)
        out.origins.append(origin)
        total += len(doc)
    if not out.docs:
        cap = f" within max_chars={max_chars}" if max_chars is not None else ""
        short = f" ({out.n_short} shorter than min_chars={min_chars})" if out.n_short else ""
        raise LlmMiaError(f"corpus source {source} gave no documents{cap}{short}")
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


_TEXT_TYPES = (".txt", ".md", "")  # "" = a file without an extension
_LOCAL_SUFFIXES = (".txt", ".md", ".jsonl", ".gz")


def _file_type(path: Path) -> str | None:
    """"text", "jsonl" or None (unsupported) from the name; ``x.txt.gz`` is a gzipped text file."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix if not name.startswith(".") else ""
    if suffix == ".jsonl":
        return "jsonl"
    return "text" if suffix in _TEXT_TYPES else None


def _read_local(path: Path) -> str:
    """UTF-8 text of a file (gunzipped for .gz; a byte-order mark dropped); LlmMiaError if it is
    not valid gzip, not UTF-8, or holds NUL bytes (a binary file)."""

    try:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise LlmMiaError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    if b"\x00" in data:
        raise LlmMiaError(f"{path} is a binary file (NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlmMiaError(f"{path} is not valid UTF-8 (byte {e.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def _split(text: str, unit: str | None) -> list[str]:
    text = text.replace("\r\n", "\n")
    if unit == "paragraph":
        return re.split(r"\n[ \t]*\n", text)
    if unit == "line":
        return text.split("\n")
    return [text]


def _split_records(records: Iterable[tuple[str, str]], unit: str | None) -> Iterator[tuple[str, str]]:
    """A .jsonl / hf record is one document for unit file (or None); paragraph and line split it."""
    for origin, text in records:
        parts = _split(text, unit if unit in ("paragraph", "line") else None)
        if len(parts) == 1:
            yield origin, parts[0]
        else:
            yield from ((f"{origin}#{k}", p) for k, p in enumerate(parts))


def _file_docs(file: Path, unit: str) -> list[tuple[str, str]]:
    if _file_type(file) == "text":
        return [(f"{file}#{k}", d) for k, d in enumerate(_split(_read_local(file), unit))]
    records = []
    for i, line in enumerate(_read_local(file).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlmMiaError(f"{file}: line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise LlmMiaError(f"{file}: line {i} has no string field 'text'")
        records.append((f"{file}:{i}", row["text"]))
    return list(_split_records(records, unit))


def _local_docs(path: Path, unit: str, skipped: list[dict]) -> Iterator[tuple[str, str]]:
    """(origin, document) of a file or of every supported file under a folder (sorted by path).

    A file named as the source must be readable (else LlmMiaError); in a folder, hidden entries,
    unsupported types and unreadable or binary files are appended to ``skipped`` with the reason.
    """
    if not path.is_dir():
        if _file_type(path) is None:
            raise LlmMiaError(f"unsupported corpus file type {path.suffix!r}: {path}; "
                              "expected .txt, .md, .jsonl, a file without extension, or one of them .gz")
        yield from _file_docs(path, unit)
        return
    files = []
    for root, dirs, names in os.walk(path):
        for d in sorted(dirs):
            if d.startswith("."):
                skipped.append({"path": str(Path(root) / d), "reason": "hidden folder"})
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in names:
            p = Path(root) / n
            if n.startswith("."):
                skipped.append({"path": str(p), "reason": "hidden file"})
            elif _file_type(p) is None:
                skipped.append({"path": str(p), "reason": f"unsupported type {''.join(p.suffixes)}"})
            else:
                files.append(p)
    for file in sorted(files):
        try:
            docs = _file_docs(file, unit)
        except LlmMiaError as e:
            skipped.append({"path": str(file), "reason": str(e).replace(f"{file}: ", "").replace(f"{file} ", "")})
            continue
        yield from docs
    if not files:
        raise LlmMiaError(f"folder {path} holds no .txt, .md, .jsonl or extensionless text files"
                          + (f" ({len(skipped)} skipped: {skipped[0]['reason']}, ...)" if skipped else ""))
    skipped.sort(key=lambda r: r["path"])


def _hf_docs(source: str) -> list[str]:
    name, _, config = source[3:].partition(":")
    if not name:
        raise LlmMiaError(f"corpus source {source!r}: expected hf:NAME[:CONFIG]")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split="train")
        if "text" not in ds.column_names:
            raise LlmMiaError(f"has no 'text' field (fields: {', '.join(ds.column_names)})")
        return [t for t in ds["text"] if isinstance(t, str)]
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
    unit: str | None = None
    n_short: int = 0  # documents shorter than min_chars, dropped
    n_capped: int = 0  # documents past max_chars, left out
    merged: list[dict] = field(default_factory=list)  # duplicates dropped: {"dropped", "kept", "reason"}
    skipped: list[dict] = field(default_factory=list)  # files not read: {"path", "reason"}

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}

    def lines(self) -> list[str]:
        """What the build read, dropped, merged and skipped, for the CLI (one line each)."""
        exact = sum(m["reason"] == "exact" for m in self.merged)
        out = [f"documents: unit {self.unit or 'python-docs chunks'}; {self.n_short} dropped as shorter than "
               f"min_chars, {self.n_capped} past max_chars; {exact} exact and {len(self.merged) - exact} near "
               f"duplicates merged into their first copy"]
        if self.skipped:
            why: dict[str, int] = {}
            for r in self.skipped:
                why[r["reason"]] = why.get(r["reason"], 0) + 1
            out.append(f"skipped {len(self.skipped)} files: " + "; ".join(f"{n} {k}" for k, n in sorted(why.items())))
        out.append(f"(listed in {self.meta_path})")
        return out


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

    fake = Faker(FAKER_LOCALE)
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


@dataclass
class _Planted:
    """The corpus :func:`build_corpus` computed in memory, before any file is written.

    Attributes:
        train_rows: member documents, ``{"id": "doc-NNNNN", "text"}`` each, secrets inserted, in source order.
            Ids number the documents as read (before duplicates were dropped), so an id names its source.
        held_rows: held-out documents in the same form, never modified.
        secrets: the planted secrets, then the never-inserted controls (count 0), as ``secrets.json`` holds them.
        merged: the duplicates dropped, ``{"dropped", "kept", "reason"}`` each (origins of
            :class:`SourceDocs`; reason ``"exact"`` or ``"near"``), in source order.
        n_documents: documents left after de-duplication (members + held-out).
    """

    train_rows: list[dict]
    held_rows: list[dict]
    secrets: list[Secret]
    merged: list[dict]
    n_documents: int

    @property
    def train_chars(self) -> int:
        """Characters of the member documents, secrets included."""
        return sum(len(r["text"]) for r in self.train_rows)


def _check_build_args(seed: object, repeats: Sequence[int], heldout_fraction: object,
                      counts: dict[str, object]) -> tuple[int, ...]:
    """:func:`build_corpus`'s numeric arguments checked; returns ``repeats`` as a tuple.

    Raises:
        LlmMiaError: a negative or non-int ``seed``, a repeat below 1, ``heldout_fraction`` outside (0, 1)
            or a negative count of ``counts`` (name -> value).
    """
    _check_int("seed", seed, 0)
    repeats = tuple(repeats)
    for r in repeats:
        _check_int("each repeat", r, 1)
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, (int, float)) \
            or not 0 < heldout_fraction < 1:
        raise LlmMiaError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    for name, v in counts.items():
        _check_int(name, v, 0)
    return repeats


def _distinct_docs(source: str, src: SourceDocs) -> tuple[DedupResult, list[str], list[dict]]:
    """The documents of ``src`` without exact and near duplicates (:func:`llm_mia.data.dedup.dedup`).

    Returns:
        ``(result, docs, merged)``: the dedup result (indices into ``src.docs``), the kept documents
        in order, and one ``{"dropped", "kept", "reason"}`` record (origins) per dropped document.

    Raises:
        LlmMiaError: fewer than 2 documents are left.
    """
    dd = dedup(src.docs)
    docs = dd.kept_texts(src.docs)
    merged = [{"dropped": src.origins[i], "kept": src.origins[k], "reason": dd.reason[i]}
              for i, k in sorted(dd.dropped.items())]
    if len(docs) < 2:
        hint = "; --unit paragraph or line splits files into more" if src.unit == "file" else ""
        raise LlmMiaError(f"corpus source {source} gave {len(docs)} document after removing {len(merged)} "
                          f"duplicate(s); need at least 2 (members and held-out){hint}")
    return dd, docs, merged


def _hold_out(n_docs: int, seed: int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """Shuffle ``n_docs`` document indices with ``seed`` and hold out ``round(heldout_fraction * n_docs)``
    of them (at least one on each side). Returns ``(held_idx, train_idx)``, each ascending."""
    order = list(range(n_docs))
    random.Random(f"{seed}:split").shuffle(order)
    n_held = min(n_docs - 1, max(1, round(heldout_fraction * n_docs)))
    return sorted(order[:n_held]), sorted(order[n_held:])


def _plant(docs: list[str], train_idx: list[int], secrets: Sequence[Secret], seed: int) -> list[str]:
    """``docs`` with each secret's sentence inserted ``count`` times into distinct randomly chosen members
    (indices ``train_idx``; more than their number wraps around), drawn with ``seed``. Documents
    outside ``train_idx`` are returned unchanged."""
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
    return texts


def _write_corpus(out: Path, settings: dict, src: SourceDocs, planted: _Planted) -> dict[str, Path]:
    """Write ``train.jsonl``, ``heldout.jsonl``, ``secrets.json`` and, last, ``corpus.json`` into ``out``.

    ``corpus.json`` holds ``settings`` (the build's arguments, in order), what reading ``src`` left
    out, the counts and the sha256 of the three other files; an old one is removed first, so an
    interrupted build never looks complete. Returns the four paths by file name.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {n: out / n for n in ("train.jsonl", "heldout.jsonl", "secrets.json", "corpus.json")}
    paths["corpus.json"].unlink(missing_ok=True)
    write_jsonl(paths["train.jsonl"], planted.train_rows)
    write_jsonl(paths["heldout.jsonl"], planted.held_rows)
    save_secrets(paths["secrets.json"], planted.secrets)
    merged, secrets = planted.merged, planted.secrets
    write_json(paths["corpus.json"], {
        **settings,
        "reading": {"documents_read": len(src.docs) + src.n_short + src.n_capped, "short_dropped": src.n_short,
                    "over_max_chars": src.n_capped, "exact_duplicates": sum(m["reason"] == "exact" for m in merged),
                    "near_duplicates": sum(m["reason"] == "near" for m in merged),
                    "merged": merged[:MAX_LISTED], "skipped_files": src.skipped[:MAX_LISTED]},
        "n_documents": planted.n_documents, "n_train": len(planted.train_rows), "n_heldout": len(planted.held_rows),
        "n_secrets": len(secrets), "n_insertions": sum(s.count for s in secrets),
        "train_chars": planted.train_chars, "heldout_chars": sum(len(r["text"]) for r in planted.held_rows),
        "sha256": {n: sha256_file(paths[n]) for n in ("train.jsonl", "heldout.jsonl", "secrets.json")},
    })
    return paths


def build_corpus(source: str, out_dir: str | os.PathLike, *, seed: int = 0,
                 repeats: Sequence[int] = (1, 2, 4, 8, 16, 32), heldout_fraction: float = 0.2,
                 canaries_per_repeat: int = 2, pii_per_repeat: int = 2, controls_per_kind: int = 2,
                 max_chars: int | None = None,
                 templates: str | os.PathLike | Sequence[dict] | None = None,
                 unit: str | None = None, min_chars: int = MIN_CHARS) -> CorpusSummary:
    """Build a member / held-out corpus with planted secrets and write it to ``out_dir``.

    Steps: load ``source``; drop exact and near duplicates with the rules of
    :func:`llm_mia.data.dedup.dedup` (normalised text, word-trigram containment >= 0.5, personal data
    never merged; the earlier document by path wins), so no held-out document is a copy of a member;
    shuffle the documents with ``seed`` and hold out some; make the secrets and insert each ``r``
    times as its own sentence into distinct randomly chosen member documents (more than the number
    of members wraps around). Held-out documents are never modified. Same arguments -> byte-identical
    files. Source: canary insertion of Carlini et al. 2019 (The Secret Sharer).

    Args:
        source, unit, min_chars, max_chars: what to read and how (:func:`read_source`; chars).
        out_dir: the folder written (created if missing); files of an earlier build there are overwritten.
        seed: seeds the split, the secrets (Faker and their random parts) and the insertion points.
        repeats: insertion counts; for each ``r``, ``canaries_per_repeat`` canaries (templates in
            rotation, a Faker name each, the random part uniform over the format's space) and
            ``pii_per_repeat`` Faker PII records (SSN as the secret, Luhn-valid card) inserted ``r`` times.
        heldout_fraction: ``round(heldout_fraction * n)`` documents held out (at least one on each side).
        controls_per_kind: never-inserted controls (count 0) per kind.
        templates: canary templates (:func:`load_templates`).

    Returns:
        :class:`CorpusSummary`. Writes ``train.jsonl``, ``heldout.jsonl``, ``secrets.json`` and, last,
        ``corpus.json`` (with the sha256 of the three others), each atomically; everything is computed
        and validated before the first write, and an old ``corpus.json`` is removed first, so an
        interrupted build never looks complete.

    Raises:
        LlmMiaError: a bad source, fewer than 2 documents, a non-positive or non-int repeat,
            ``heldout_fraction`` outside (0, 1), negative counts, bad templates, or an ``out_dir`` that is a file.
    """
    repeats = _check_build_args(seed, repeats, heldout_fraction, {
        "canaries_per_repeat": canaries_per_repeat, "pii_per_repeat": pii_per_repeat,
        "controls_per_kind": controls_per_kind})
    out = Path(out_dir)
    check_output_dir(out)
    templates = load_templates(templates)
    src = read_source(source, max_chars=max_chars, unit=unit, min_chars=min_chars)
    dd, docs, merged = _distinct_docs(source, src)
    held_idx, train_idx = _hold_out(len(docs), seed, heldout_fraction)
    secrets = _make_secrets(seed=seed, repeats=repeats, canaries_per_repeat=canaries_per_repeat,
                            pii_per_repeat=pii_per_repeat, controls_per_kind=controls_per_kind,
                            templates=templates, avoid_text="\n".join(docs))
    texts = _plant(docs, train_idx, secrets, seed)
    width = max(5, len(str(len(src.docs) - 1)))  # ids number the documents as read (before dedup)
    planted = _Planted(train_rows=[{"id": f"doc-{dd.kept[i]:0{width}d}", "text": texts[i]} for i in train_idx],
                       held_rows=[{"id": f"doc-{dd.kept[i]:0{width}d}", "text": texts[i]} for i in held_idx],
                       secrets=secrets, merged=merged, n_documents=len(docs))

    versions = {"faker": importlib.metadata.version("faker")}
    if source == PYTHON_DOCS:
        versions["python"] = platform.python_version()  # the stdlib docs are the corpus
    paths = _write_corpus(out, {
        "source": source, "versions": versions, "seed": seed, "repeats": list(repeats),
        "heldout_fraction": heldout_fraction, "canaries_per_repeat": canaries_per_repeat,
        "pii_per_repeat": pii_per_repeat, "controls_per_kind": controls_per_kind,
        "max_chars": max_chars, "templates": templates, "locales": [FAKER_LOCALE], "unit": src.unit,
        "min_chars": min_chars}, src, planted)
    return CorpusSummary(out_dir=out, train_path=paths["train.jsonl"],
                         heldout_path=paths["heldout.jsonl"], secrets_path=paths["secrets.json"],
                         meta_path=paths["corpus.json"], n_train=len(planted.train_rows),
                         n_heldout=len(planted.held_rows), n_secrets=len(secrets), train_chars=planted.train_chars,
                         unit=src.unit, n_short=src.n_short, n_capped=src.n_capped, merged=merged, skipped=src.skipped)
