"""Read texts (and optional membership labels) from the user's files: .txt, .jsonl, .csv, .parquet
or a Hugging Face dataset (``hf:NAME[:CONFIG]:SPLIT``). Rows may be chat conversations.

Files are read byte-exactly: a CSV is opened with ``newline=""`` (as the :mod:`csv` module asks), so a
quoted ``\\r\\n`` or lone ``\\r`` inside a field stays in the text; a UTF-8 byte-order mark is dropped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import jsonl_records, read_text

#: The field of a chat row: a list of ``{"role": ..., "content": ...}`` messages (the OpenAI / HF format).
MESSAGES = "messages"


@dataclass
class TextSet:
    """Texts in file order with their ids and, if the file has them, labels (member = 1).

    ``chats[i]`` is row i's message list when the row is a chat conversation (its ``texts[i]`` is
    then ``""`` until :func:`llm_mia.data.chat.render_chats` renders it), else None; ``chats`` is None
    when no row is a chat.
    """

    ids: list
    texts: list[str]
    labels: list[int] | None
    chats: list[list[dict] | None] | None = None


def _label(v, where: str) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
    if isinstance(v, str) and v.strip().lower() in ("0", "1", "true", "false", "member", "nonmember", "non-member"):
        return int(v.strip().lower() in ("1", "true", "member"))
    raise LlmMiaError(f"{where}: label must be 0/1 (member = 1), got {v!r}")


def _messages(v, where: str) -> list[dict]:
    """Validate a chat row's messages: a non-empty list of {role: str, content: str}."""
    if not isinstance(v, (list, tuple)) or not v:
        raise LlmMiaError(f"{where}: '{MESSAGES}' must be a non-empty list of {{role, content}} objects")
    out = []
    for j, m in enumerate(v):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise LlmMiaError(f"{where}: message {j} is not a {{role: str, content: str}} object")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _csv_rows(p: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    if not p.exists():
        raise LlmMiaError(f"file not found: {p}")
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:  # newline="": quoted \r\n kept (csv docs)
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise LlmMiaError(f"{p}: empty CSV file")
            return list(reader.fieldnames), [(f"{p}: row {i}", r) for i, r in enumerate(reader, 2)]
    except UnicodeDecodeError as e:
        raise LlmMiaError(f"{p} is not valid UTF-8 (byte {e.start})") from None
    except csv.Error as e:
        raise LlmMiaError(f"{p}: not valid CSV ({e})") from None


def _hf_rows(spec: str) -> tuple[list[str], list[tuple[str, dict]]]:
    """Rows of ``hf:NAME[:CONFIG]:SPLIT``; NAME may be a local folder (``save_to_disk`` or data files)."""
    parts = spec[3:].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise LlmMiaError(f"dataset spec {spec!r}: expected hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    name, config, split = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]
    try:
        import datasets

        local = Path(name)
        if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(local))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, missing dataset, bad split: one user-facing line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmMiaError(f"could not load dataset {spec}: {msg}") from None
    return list(ds.column_names), [(f"{spec}: row {i}", r) for i, r in enumerate(ds)]


def _parquet_rows(p: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    if not p.exists():
        raise LlmMiaError(f"file not found: {p}")
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(p)
    except Exception as e:
        raise LlmMiaError(f"{p}: not a readable Parquet file ({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None
    return list(table.column_names), [(f"{p}: row {i}", r) for i, r in enumerate(table.to_pylist())]


def read_texts(path: str | Path, *, text_field: str = "text", label_field: str | None = "label",
               id_field: str = "id", allow_chat: bool = False) -> TextSet:
    """Read texts from ``path``.

    - ``.txt``: one text a line (empty lines are kept as empty texts: they score NaN + ``too_short``);
    - ``.jsonl``: one object a line with ``text_field`` (and optionally ``label_field``, ``id_field``);
    - ``.csv``: a header row naming the same fields (read with ``newline=""``: line breaks in quoted
      fields are kept byte for byte);
    - ``.parquet``, or ``hf:NAME[:CONFIG]:SPLIT`` (``datasets.load_dataset``; a local folder written
      by ``save_to_disk`` works offline): columns named like the fields.

    With ``allow_chat``, a row whose ``text_field`` is absent (or is itself a list) and that has a
    ``messages`` list of ``{role, content}`` objects is a chat row (see :class:`TextSet`).
    Labels are used only if every row has one.

    Raises:
        LlmMiaError (one line): a missing file, non-UTF-8 bytes, corrupt JSON/CSV/Parquet, a column
        that does not exist (the message lists the columns), a text that is not a string, a bad
        chat row or a bad label.
    """
    spec = str(path)
    p = Path(path)
    ext = "hf" if spec.startswith("hf:") else p.suffix.lower()
    ids, texts, labels, chats = [], [], [], []
    if ext == ".txt":
        lines = read_text(p).split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return TextSet(ids=list(range(len(lines))), texts=[x.rstrip("\r") for x in lines], labels=None)
    if ext == ".jsonl":
        columns = None
        rows = [(f"{p}: line {i}", obj) for i, obj in jsonl_records(p)]
    elif ext == ".csv":
        columns, rows = _csv_rows(p)
    elif ext == ".parquet":
        columns, rows = _parquet_rows(p)
    elif ext == "hf":
        columns, rows = _hf_rows(spec)
    else:
        raise LlmMiaError(f"{p}: unsupported input type '{ext or '(none)'}' "
                          "(use .txt, .jsonl, .csv, .parquet or hf:NAME[:CONFIG]:SPLIT)")
    if columns is not None and text_field not in columns and not (allow_chat and MESSAGES in columns):
        raise LlmMiaError(f"{spec}: no column '{text_field}' (columns: {', '.join(columns) or 'none'})")
    for k, (where, obj) in enumerate(rows):
        v = obj.get(text_field)
        if allow_chat and (isinstance(v, list) or (v is None and MESSAGES in obj)):
            chats.append(_messages(v if isinstance(v, list) else obj[MESSAGES], where))
            texts.append("")
        elif text_field not in obj:
            raise LlmMiaError(f"{where}: no field '{text_field}' (fields: {', '.join(map(str, obj)) or 'none'})")
        elif not isinstance(v, str):
            raise LlmMiaError(f"{where}: field '{text_field}' is {type(v).__name__}, not a string")
        else:
            chats.append(None)
            texts.append(v)
        ids.append(obj.get(id_field, k))
        labels.append(obj.get(label_field) if label_field else None)
    if label_field and rows and all(v is not None and v != "" for v in labels):
        labs = [_label(v, w) for v, (w, _) in zip(labels, rows)]
    else:
        labs = None
    return TextSet(ids=ids, texts=texts, labels=labs, chats=chats if any(c is not None for c in chats) else None)
