"""Small file helpers shared by every stage: strict reading and atomic writing.

Writers go through a temporary file in the same folder and ``os.replace`` so that a killed run
never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llm_mia.core.errors import LlmMiaError


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """Replace non-finite floats with None-free JSON tokens (NaN/Infinity are written as strings)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """JSON text with NaN/inf as the strings "NaN", "Infinity", "-Infinity" (valid strict JSON)."""
    return json.dumps(_clean(obj), ensure_ascii=False, default=_json_default, **kw)


def to_float(v: Any) -> float:
    """Inverse of :func:`dumps` for one number: accepts floats, ints and "NaN"/"Infinity" strings."""
    if isinstance(v, str):
        return float(v.replace("Infinity", "inf"))
    return float("nan") if v is None else float(v)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the result gets the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(dumps(row) + "\n")


def read_text(path: str | os.PathLike) -> str:
    """Read UTF-8 text (a leading byte-order mark dropped); missing file or bad encoding -> LlmMiaError."""
    p = Path(path)
    if not p.exists():
        raise LlmMiaError(f"file not found: {p}")
    if p.is_dir():
        raise LlmMiaError(f"expected a file, got a folder: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlmMiaError(f"{p} is not valid UTF-8 (byte {e.start})") from None
    # a UTF-8 byte-order mark (e.g. "CSV UTF-8" from spreadsheets) is not text
    return text[1:] if text.startswith("\ufeff") else text


def read_json(path: str | os.PathLike) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise LlmMiaError(f"{path}: corrupt JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def jsonl_records(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file.

    Raises LlmMiaError naming the file and line for a malformed line or one that is not an object.
    """
    rows = []
    # split on "\n" only: JSON strings may hold U+2028/U+2029/U+0085, which str.splitlines() breaks at
    for i, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LlmMiaError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise LlmMiaError(f"{path}: line {i} is not a JSON object")
        rows.append((i, row))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of objects; a malformed line -> LlmMiaError naming the file and line."""
    return [row for _, row in jsonl_records(path)]


def sha256_file(path: str | os.PathLike) -> str | None:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks; None if the file does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: safetensors (with their index), else pickles."""
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(folder.glob(pattern))
        index = sorted(folder.glob(pattern + ".index.json"))
        for ix in index:  # every shard the index names must be there
            shards = set(read_json(ix).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                raise LlmMiaError(f"{folder}: shard {missing[0]} named in {ix.name} is missing")
        if files:
            return sorted(set(files) | set(index))
    return []


def weights_sha256(folder: str | os.PathLike | None, *, base_folder: str | os.PathLike | None = None) -> str | None:
    """Hex SHA-256 digest covering every weight file of a checkpoint folder.

    Scheme: the weight files are the folder's ``*.safetensors`` files and ``*.safetensors.index.json``
    (else, for a pickle checkpoint, ``*.bin`` and ``*.bin.index.json``). One file and no index: the
    digest is that file's SHA-256 (what ``sha256sum model.safetensors`` prints). Several files (a
    sharded checkpoint): the SHA-256 of the UTF-8 text ``"<sha256(file)>  <name>\\n"`` over the files
    sorted by name, i.e. of ``sha256sum`` 's listing in sorted order. A PEFT adapter folder
    (``adapter_config.json``, no ``config.json``): the same listing over the adapter's weight files plus
    the line ``"<base digest>  base\\n"``, the base being ``base_folder`` or, when it is a local folder,
    the ``base_model_name_or_path`` of the adapter config.

    Returns:
        The digest; None when ``folder`` is None or not a folder (an unresolved hub id), when it holds
        no weight file, or for an adapter whose base folder is unknown.

    Raises:
        LlmMiaError: a shard named in the index is missing.
    """
    if folder is None or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    files = _weight_files(folder)
    if not files:
        return None
    lines = [f"{sha256_file(f)}  {f.name}\n" for f in files]
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        if base_folder is None:
            base_folder = read_json(folder / "adapter_config.json").get("base_model_name_or_path")
        base = weights_sha256(base_folder) if base_folder else None
        if base is None:
            return None
        lines.append(f"{base}  base\n")
    elif len(lines) == 1:
        return lines[0].split()[0]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` that is not a folder (so ``path`` cannot be made)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_dir(path: str | os.PathLike) -> None:
    """Raise :class:`LlmMiaError` unless ``path`` is, or can be made as, a folder: checked before
    any work, so a bad ``--out`` never fails after it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise LlmMiaError(f"output folder {p} exists and is a file")
    above = _file_above(p)
    if above is not None:
        raise LlmMiaError(f"output folder {p} lies under {above}, which is a file")


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                      what: str = "output") -> None:
    """Raise :class:`LlmMiaError` unless ``path`` can be written as a file without harm: not a
    folder, not under a file, and not the same file as any of ``inputs`` (which would be
    overwritten). Checked before any work."""
    p = Path(path)
    if p.is_dir():
        raise LlmMiaError(f"{what} {p} is a folder; give a file name")
    above = _file_above(p)
    if above is not None:
        raise LlmMiaError(f"{what} {p} lies under {above}, which is a file")
    for src in inputs:
        if src is None:
            continue
        q = Path(src)
        same = p.exists() and q.exists() and os.path.samefile(p, q)
        if same or p.resolve() == q.resolve():
            raise LlmMiaError(f"{what} {p} is also an input ({q}); it would be overwritten: write elsewhere")
