"""read_texts: .txt / .jsonl / .csv inputs of `llm-mia score`, labels, and one-line errors on bad input.

Expected values are the literal texts written into each file by the test.
"""

from __future__ import annotations

import json

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.data.texts import read_texts


def write(path, text: str, *, newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def one_line_error(path, **kw) -> str:
    with pytest.raises(LlmMiaError) as e:
        read_texts(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ----------------------------------------------------------------------------------------- .txt

@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_txt_one_text_a_line_empty_lines_kept(tmp_path, newline):
    p = write(tmp_path / "in.txt", "first text\n\n   \nlast, with a comma\n", newline=newline)
    ts = read_texts(p)
    assert ts.texts == ["first text", "", "   ", "last, with a comma"]
    assert ts.ids == [0, 1, 2, 3]
    assert ts.labels is None


def test_txt_without_final_newline_and_unicode(tmp_path):
    p = write(tmp_path / "in.txt", "héllo wörld 😀\nİSTANBUL\u2028still the same line")
    assert read_texts(p).texts == ["héllo wörld 😀", "İSTANBUL\u2028still the same line"]


def test_txt_byte_order_mark_is_not_part_of_the_first_text(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes(b"\xef\xbb\xbfalpha\nbeta\n")
    assert read_texts(p).texts == ["alpha", "beta"]


def test_txt_empty_file_has_no_texts(tmp_path):
    assert read_texts(write(tmp_path / "in.txt", "")).texts == []


# ----------------------------------------------------------------------------------------- .jsonl

def test_jsonl_text_id_and_label_fields(tmp_path):
    rows = [{"id": "doc-a", "text": "alpha", "label": 1}, {"id": 7, "text": "", "label": 0},
            {"id": "doc-c", "text": "gamma\nwith a newline", "label": 1}]
    p = write(tmp_path / "in.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")  # a blank line is skipped
    ts = read_texts(p)
    assert ts.texts == ["alpha", "", "gamma\nwith a newline"]
    assert ts.ids == ["doc-a", 7, "doc-c"]
    assert ts.labels == [1, 0, 1]


def test_jsonl_ids_default_to_row_index_and_custom_fields(tmp_path):
    rows = [{"body": "x", "is_member": "member"}, {"body": "y", "is_member": "non-member"}]
    p = write(tmp_path / "in.jsonl", "\n".join(json.dumps(r) for r in rows))
    ts = read_texts(p, text_field="body", label_field="is_member")
    assert ts.texts == ["x", "y"] and ts.ids == [0, 1] and ts.labels == [1, 0]


@pytest.mark.parametrize("member, nonmember", [(1, 0), (True, False), ("true", "false"), ("member", "nonmember"),
                                               ("1", "0"), (1.0, 0.0), (" Member ", "FALSE")])
def test_jsonl_label_forms(tmp_path, member, nonmember):
    rows = [{"text": "a", "label": member}, {"text": "b", "label": nonmember}, {"text": "c", "label": member}]
    p = write(tmp_path / "in.jsonl", "\n".join(json.dumps(r) for r in rows))
    assert read_texts(p).labels == [1, 0, 1]


@pytest.mark.parametrize("missing", [None, "absent", ""])
def test_jsonl_labels_only_when_every_row_has_one(tmp_path, missing):
    rows = [{"text": "a", "label": 1}, {"text": "b"}, {"text": "c", "label": 0}]
    if missing != "absent":
        rows[1]["label"] = missing
    p = write(tmp_path / "in.jsonl", "\n".join(json.dumps(r) for r in rows))
    ts = read_texts(p)
    assert ts.labels is None and ts.texts == ["a", "b", "c"]


def test_jsonl_label_field_none_ignores_labels(tmp_path):
    p = write(tmp_path / "in.jsonl", json.dumps({"text": "a", "label": "not a label"}))
    assert read_texts(p, label_field=None).labels is None


def test_jsonl_unicode_line_separators_inside_strings(tmp_path):
    """JSON allows raw U+2028 / U+2029 / U+0085 in strings; they are not line breaks of the JSONL file."""
    texts = ["a\u2028b", "c\u2029d\x85e", "plain"]
    p = write(tmp_path / "in.jsonl", "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n")
    assert read_texts(p).texts == texts


def test_jsonl_byte_order_mark(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "alpha", "label": 1}).encode() + b"\n")
    ts = read_texts(p)
    assert ts.texts == ["alpha"] and ts.labels == [1]


# ----------------------------------------------------------------------------------------- .csv

def test_csv_header_quoted_commas_and_newlines(tmp_path):
    p = write(tmp_path / "in.csv", 'id,text,label\n'
                                   'r1,"Hello, world",1\n'
                                   'r2,"two\nlines, and ""quotes""",0\n'
                                   'r3,,1\n', newline="\r\n")
    ts = read_texts(p)
    # read with newline="": the CRLF inside the quoted field stays byte for byte
    assert ts.texts == ["Hello, world", 'two\r\nlines, and "quotes"', ""]
    assert ts.ids == ["r1", "r2", "r3"]
    assert ts.labels == [1, 0, 1]


def test_csv_without_label_column_and_column_order(tmp_path):
    p = write(tmp_path / "in.csv", 'label_x,text\nfoo,"a, b"\nbar,c\n')
    ts = read_texts(p)
    assert ts.texts == ["a, b", "c"] and ts.ids == [0, 1] and ts.labels is None


def test_csv_with_byte_order_mark_from_spreadsheets(tmp_path):
    p = tmp_path / "in.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\r\nalpha,1\r\nbeta,0\r\n")
    ts = read_texts(p)
    assert ts.texts == ["alpha", "beta"] and ts.labels == [1, 0]


def test_csv_some_labels_empty_means_no_labels(tmp_path):
    p = write(tmp_path / "in.csv", "text,label\na,1\nb,\n")
    assert read_texts(p).labels is None


# ----------------------------------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    msg = one_line_error(tmp_path / "nope.jsonl")
    assert "not found" in msg and "nope.jsonl" in msg


@pytest.mark.parametrize("name", ["in.txt", "in.jsonl", "in.csv"])
def test_non_utf8_bytes(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b'text\n"caf\xe9"\n')  # Latin-1, not UTF-8
    msg = one_line_error(p)
    assert "UTF-8" in msg and name in msg


def test_corrupt_json_line_is_named(tmp_path):
    p = write(tmp_path / "in.jsonl", '{"text": "ok"}\n\n{"text": "broken\n{"text": "fine"}\n')
    msg = one_line_error(p)
    assert "line 3" in msg and "in.jsonl" in msg


def test_json_line_not_an_object(tmp_path):
    p = write(tmp_path / "in.jsonl", '{"text": "ok"}\n["text", "x"]\n')
    assert "line 2" in one_line_error(p)


@pytest.mark.parametrize("row", [{"body": "x"}, {"text": 5}, {"text": None}])
def test_jsonl_missing_or_non_string_text_field(tmp_path, row):
    p = write(tmp_path / "in.jsonl", json.dumps({"text": "ok"}) + "\n" + json.dumps(row) + "\n")
    msg = one_line_error(p)
    assert "line 2" in msg and "'text'" in msg


def test_csv_missing_text_column(tmp_path):
    p = write(tmp_path / "in.csv", "body,label\nx,1\n")
    msg = one_line_error(p)
    assert "no column 'text'" in msg and "columns: body, label" in msg


def test_non_string_text_and_missing_column_are_different_errors(tmp_path):
    """A non-string `text` and a missing `text` column used to be the same "no text field"."""
    p = write(tmp_path / "in.jsonl", json.dumps({"text": 5}) + "\n")
    assert "is int, not a string" in one_line_error(p)
    p = write(tmp_path / "other.jsonl", json.dumps({"body": "x", "id": 1}) + "\n")
    msg = one_line_error(p)
    assert "no field 'text'" in msg and "fields: body, id" in msg


def test_t3_15_csv_quoted_crlf_and_lone_cr_kept(tmp_path):
    import zlib

    p = tmp_path / "in.csv"
    p.write_bytes(b'id,text,label\r\n1,"Dear Ada,\r\nyour PIN is 4821.",1\r\n2,"line one\rline two",0\r\n')
    ts = read_texts(p)
    assert ts.texts == ["Dear Ada,\r\nyour PIN is 4821.", "line one\rline two"]
    assert len(zlib.compress(ts.texts[0].encode())) == 36  # the case's zlib size (35 with the CR lost)
    assert ts.labels == [1, 0] and ts.ids == ["1", "2"]


def test_parquet_and_a_local_hf_dataset(tmp_path):
    import datasets
    import pandas as pd

    rows = {"text": ["alpha\r\nbeta", "gamma"], "label": [1, 0]}
    pd.DataFrame(rows).to_parquet(tmp_path / "in.parquet")
    ts = read_texts(tmp_path / "in.parquet")
    assert ts.texts == rows["text"] and ts.labels == [1, 0]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    ts = read_texts(f"hf:{tmp_path / 'ds'}:train")
    assert ts.texts == rows["text"]
    (tmp_path / "files").mkdir()  # a folder of data files: datasets.load_dataset(folder, split=...)
    pd.DataFrame(rows).to_parquet(tmp_path / "files" / "train.parquet")
    assert read_texts(f"hf:{tmp_path / 'files'}:train").texts == rows["text"]
    msg = one_line_error(f"hf:{tmp_path / 'ds'}:train", text_field="body")
    assert "no column 'body'" in msg and "columns: text, label" in msg
    assert "expected hf:NAME" in one_line_error("hf:only-a-name")


def test_chat_rows(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "PIN 4821"}]
    p = write(tmp_path / "in.jsonl", json.dumps({"messages": msgs}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    ts = read_texts(p, allow_chat=True)
    assert ts.chats == [msgs, None] and ts.texts == ["", "plain"]
    assert "no field 'text'" in one_line_error(p)  # chat rows only where the caller renders them
    bad = write(tmp_path / "bad.jsonl", json.dumps({"messages": [{"role": "user"}]}) + "\n")
    assert "message 0" in one_line_error(bad, allow_chat=True)


@pytest.mark.parametrize("bad", [2, -1, 0.5, "yes", "maybe", [1]])
def test_bad_label_when_every_row_has_one(tmp_path, bad):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": bad}]
    p = write(tmp_path / "in.jsonl", "\n".join(json.dumps(r) for r in rows))
    msg = one_line_error(p)
    assert "line 2" in msg and "label" in msg


def test_bad_csv_label(tmp_path):
    p = write(tmp_path / "in.csv", "text,label\na,1\nb,2\n")
    msg = one_line_error(p)
    assert "row 3" in msg and "label" in msg


@pytest.mark.parametrize("name", ["in.json", "in.tsv", "in"])
def test_unsupported_extension(tmp_path, name):
    p = write(tmp_path / name, "text\n")
    msg = one_line_error(p)
    assert "unsupported" in msg and ".txt" in msg


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "d.txt").mkdir()
    assert "folder" in one_line_error(tmp_path / "d.txt")
