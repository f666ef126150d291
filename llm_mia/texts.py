"""Read candidate texts (and optional membership labels) from .txt, .jsonl or .csv files."""

from __future__ import annotations

import csv
import io as _io
from dataclasses import dataclass
from pathlib import Path

from llm_mia.errors import LlmMiaError
from llm_mia.io import jsonl_records, read_text


@dataclass
class TextSet:
    """Texts in file order with their ids and, if the file has them, labels (member = 1)."""

    ids: list
    texts: list[str]
    labels: list[int] | None


def _label(v, where: str) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    if isinstance(v, str) and v.strip().lower() in ("0", "1", "true", "false", "member", "nonmember", "non-member"):
        return int(v.strip().lower() in ("1", "true", "member"))
    raise LlmMiaError(f"{where}: label must be 0/1 (member = 1), got {v!r}")


def read_texts(path: str | Path, *, text_field: str = "text", label_field: str | None = "label",
               id_field: str = "id") -> TextSet:
    """Read texts from ``path``.

    - ``.txt``: one text a line (empty lines are kept as empty texts: they score NaN + ``too_short``);
    - ``.jsonl``: one object a line with ``text_field`` (and optionally ``label_field``, ``id_field``);
    - ``.csv``: a header row naming the same fields.

    Labels are used only if every row has one. Raises LlmMiaError (one line) for a missing file,
    non-UTF-8 bytes, corrupt JSON, a missing text field or a bad label.
    """
    p = Path(path)
    ext = p.suffix.lower()
    raw = read_text(p) if ext != ".jsonl" else ""
    ids, texts, labels = [], [], []
    if ext == ".txt":
        lines = raw.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return TextSet(ids=list(range(len(lines))), texts=[x.rstrip("\r") for x in lines], labels=None)
    if ext == ".jsonl":
        rows = [(f"{p}: line {i}", obj) for i, obj in jsonl_records(p)]
    elif ext == ".csv":
        reader = csv.DictReader(_io.StringIO(raw, newline=""))
        if reader.fieldnames is None:
            raise LlmMiaError(f"{p}: empty CSV file")
        rows = [(f"{p}: row {i}", r) for i, r in enumerate(reader, 2)]
    else:
        raise LlmMiaError(f"{p}: unsupported input type '{ext or '(none)'}' (use .txt, .jsonl or .csv)")
    for k, (where, obj) in enumerate(rows):
        if text_field not in obj or not isinstance(obj[text_field], str):
            raise LlmMiaError(f"{where}: no text field '{text_field}'")
        texts.append(obj[text_field])
        ids.append(obj.get(id_field, k))
        labels.append(obj.get(label_field) if label_field else None)
    if label_field and rows and all(v is not None and v != "" for v in labels):
        labs = [_label(v, w) for v, (w, _) in zip(labels, rows)]
    else:
        labs = None
    return TextSet(ids=ids, texts=texts, labels=labs)
