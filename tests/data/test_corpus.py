"""Corpus sources, the member / held-out split and secret insertion (llm_mia.data.corpus)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import read_jsonl
from llm_mia.data.corpus import build_corpus, load_source
from llm_mia.data.secrets import load_secrets, matches_format
from tests.conftest import distinct_docs

SMALL = 50_000  # python-docs chars for fast tests


def count_overlapping(text: str, sub: str) -> int:
    """Occurrences of ``sub`` in ``text``, overlaps included (str.count skips overlaps)."""
    return sum(1 for i in range(len(text) - len(sub) + 1) if text.startswith(sub, i))


def luhn_ok(number: str) -> bool:
    """Independent Luhn check: double every second digit from the right, digit-sum, mod 10."""
    digits = [int(c) for c in number]
    total = 0
    for pos, d in enumerate(digits[::-1]):
        if pos % 2:
            d = sum(int(c) for c in str(2 * d))
        total += d
    return total % 10 == 0


def test_count_overlapping_helper():
    assert count_overlapping("7777777", "777") == 5 and "7777777".count("777") == 2


def test_luhn_helper():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713") and not luhn_ok("79927398710")


# ------------------------------------------------------------------------------------ sources

def test_txt_source(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_text("First doc.\nstill first.\n\nSecond doc.\n  \t\n\n\nThird doc.\n")
    assert load_source(str(p)) == ["First doc.\nstill first.", "Second doc.", "Third doc."]


def test_jsonl_source(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "alpha", "id": 1}\n\n{"text": "beta\\n\\ngamma"}\n{"text": "  "}\n')
    assert load_source(str(p)) == ["alpha", "beta\n\ngamma"]


def test_jsonl_without_text_field(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "alpha"}\n{"body": "beta"}\n')
    with pytest.raises(LlmMiaError, match=r"docs\.jsonl: line 2 has no string field 'text'"):
        load_source(str(p))


def test_folder_reads_md_extensionless_and_gz_and_reports_what_it_skips(tmp_path):
    """Every supported file of a folder is read (.txt, .md, .jsonl, no extension, and .gz of them),
    one document per file by default, sorted by path; what is not read is listed with the reason."""
    import gzip

    from llm_mia.data.corpus import read_source

    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (tmp_path / "b.txt").write_text("bee one\n\nbee two")
    (tmp_path / "a.jsonl").write_text('{"text": "ay"}\n{"text": "line x\\nline y"}\n')
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "notes.md").write_text("markdown notes")
    (tmp_path / "README").write_text("read me")
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"gzipped dee"))
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ee"}\n'))
    (tmp_path / "blob").write_bytes(b"\x89PNG\x00\x01")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.txt").write_text("hidden")
    got = read_source(str(tmp_path))
    assert got.unit == "file"
    assert got.docs == ["read me", "ay", "line x\nline y", "bee one\n\nbee two", "gzipped dee", "ee",
                        "markdown notes", "sea"]
    assert got.origins[0] == f"{tmp_path / 'README'}#0" and got.origins[2] == f"{tmp_path / 'a.jsonl'}:2"
    assert [(r["path"], r["reason"]) for r in got.skipped] == [
        (str(tmp_path / ".git"), "hidden folder"), (str(tmp_path / ".hidden.txt"), "hidden file"),
        (str(tmp_path / "blob"), "is a binary file (NUL bytes), not text"),
        (str(tmp_path / "image.png"), "unsupported type .png")]
    assert load_source(str(tmp_path), unit="paragraph")[3:5] == ["bee one", "bee two"]
    assert load_source(str(tmp_path), unit="line")[2:4] == ["line x", "line y"]


def test_units_and_min_chars(tmp_path):
    from llm_mia.data.corpus import read_source

    p = tmp_path / "docs.txt"
    p.write_text("First paragraph, line one.\nline two\n\nok\n\nThird paragraph here.")
    assert load_source(str(p)) == ["First paragraph, line one.\nline two", "ok", "Third paragraph here."]
    assert load_source(str(p), unit="file") == ["First paragraph, line one.\nline two\n\nok\n\nThird paragraph here."]
    got = read_source(str(p), unit="line", min_chars=9)
    assert got.docs == ["First paragraph, line one.", "Third paragraph here."] and got.n_short == 2
    with pytest.raises(LlmMiaError, match="unknown document unit 'sentence'"):
        load_source(str(p), unit="sentence")
    with pytest.raises(LlmMiaError, match="--unit does not apply to python-docs"):
        load_source("python-docs", unit="file")
    with pytest.raises(LlmMiaError, match="min_chars"):
        load_source(str(p), min_chars=0)
    with pytest.raises(LlmMiaError, match="4 shorter than min_chars=100"):
        load_source(str(p), unit="line", min_chars=100)


def test_max_chars_caps_in_order(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_text("aaaa\n\nbbbb\n\ncccc")
    assert load_source(str(p), max_chars=9) == ["aaaa", "bbbb"]
    with pytest.raises(LlmMiaError, match="no documents"):
        load_source(str(p), max_chars=3)
    with pytest.raises(LlmMiaError, match="max_chars"):
        load_source(str(p), max_chars=0)


@pytest.mark.parametrize("source, match", [
    ("python-doc", "unknown corpus source.*did you mean 'python-docs'"),
    ("wikipedia", "unknown corpus source"),
    ("missing.txt", "corpus file not found: missing.txt"),
    ("no/such/folder", "corpus file not found"),
    ("", "non-empty string"),
    ("hf:", "hf:NAME"),
])
def test_bad_sources(source, match):
    with pytest.raises(LlmMiaError, match=match):
        load_source(source)


def test_unsupported_file_and_empty_sources(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(LlmMiaError, match="unsupported corpus file type"):
        load_source(str(tmp_path / "data.csv"))
    with pytest.raises(LlmMiaError, match="holds no .txt, .md, .jsonl"):
        load_source(str(tmp_path))
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(LlmMiaError, match="no documents"):
        load_source(str(tmp_path / "empty.txt"))


def test_hf_source_offline_raises_llm_mia_error():
    code = ("from llm_mia.data.corpus import load_source\n"
            "from llm_mia.core.errors import LlmMiaError\n"
            "try:\n    load_source('hf:no-such-user/no-such-dataset')\n"
            "except LlmMiaError as e:\n    print('LLMMIA', e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "LLMMIA could not load Hugging Face dataset no-such-user/no-such-dataset:" in out.stdout, out.stderr


def test_python_docs_small_is_deterministic_prose():
    a = load_source("python-docs", max_chars=SMALL)
    assert a == load_source("python-docs", max_chars=SMALL)
    assert len(a) >= 10 and sum(map(len, a)) <= SMALL
    assert all(len(d) >= 200 and d == d.strip() for d in a)
    text = "\n".join(a)
    assert 'The "assert" statement' in text  # first pydoc topic, sorted by name
    words = re.findall(r"[A-Za-z]+", text)
    common = {"the", "is", "of", "a", "to", "and", "in"}
    assert sum(w.lower() in common for w in words) / len(words) > 0.1  # English prose, not code


def test_python_docs_default_size_and_no_imports():
    before = set(sys.modules)
    docs = load_source("python-docs")
    total = sum(map(len, docs))
    assert 1_000_000 < total <= 1_200_000
    assert max(map(len, docs)) < 10_000  # long documents were chunked
    assert len(set(docs)) == len(docs)
    text = "\n".join(docs)
    assert "Arrange for a callback to be called" in text  # asyncio docstring: parsed, not imported
    assert not {"antigravity", "this", "tkinter", "idlelib"} & (set(sys.modules) - before)


# ------------------------------------------------------------------------------------- corpus

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    summary = build_corpus("python-docs", out, seed=0, max_chars=SMALL)
    return summary, read_jsonl(summary.train_path), read_jsonl(summary.heldout_path), \
        load_secrets(summary.secrets_path)


def test_summary_and_metadata(built):
    summary, train, held, secrets = built
    assert (summary.n_train, summary.n_heldout, summary.n_secrets) == (len(train), len(held), len(secrets))
    assert summary.train_chars == sum(len(r["text"]) for r in train)
    meta = json.loads(summary.meta_path.read_text())
    for name in ("train.jsonl", "heldout.jsonl", "secrets.json"):
        assert meta["sha256"][name] == hashlib.sha256((summary.out_dir / name).read_bytes()).hexdigest()
    assert meta["repeats"] == [1, 2, 4, 8, 16, 32] and meta["seed"] == 0
    n = meta["n_documents"]
    assert len(held) == round(0.2 * n) and len(train) + len(held) == n
    ids = [r["id"] for r in train + held]
    assert len(set(ids)) == n


def test_secret_inventory(built):
    _, _, _, secrets = built
    ids = [s.id for s in secrets]
    expected = [f"{k}-r{r}-{j}" for r in (1, 2, 4, 8, 16, 32) for k in ("canary", "pii") for j in (0, 1)]
    expected += ["canary-control-0", "canary-control-1", "pii-control-0", "pii-control-1"]
    assert ids == expected
    for s in secrets:
        assert s.count == (0 if "control" in s.id else int(s.id.split("-r")[1].split("-")[0]))
        assert s.text == s.prefix + s.secret + s.suffix and matches_format(s.secret, s.format)
    prefixes = [s.prefix for s in secrets]
    assert len(set(prefixes)) == len(prefixes)  # every secret has its own prefix
    assert len({s.secret for s in secrets}) == len(secrets)
    canary_formats = [s.format for s in secrets if s.kind == "canary"]
    assert len(set(canary_formats)) >= 4  # templates in rotation


def test_secrets_counted_exactly_in_train_never_in_heldout(built):
    _, train, held, secrets = built
    train_text = "\x00".join(r["text"] for r in train)
    held_text = "\x00".join(r["text"] for r in held)
    n_train = len(train)
    for s in secrets:
        assert count_overlapping(train_text, s.text) == s.count, s.id
        assert count_overlapping(held_text, s.text) == 0, s.id
        assert s.secret not in held_text, s.id
        if s.count == 0:
            assert s.secret not in train_text, s.id  # control: random part nowhere at all
        docs_with = sum(s.text in r["text"] for r in train)
        assert docs_with == min(s.count, n_train), s.id  # distinct documents while possible


def test_insertions_are_own_sentences_and_heldout_untouched(built):
    summary, train, held, secrets = built
    source = load_source("python-docs", max_chars=SMALL)
    index = {r["id"]: int(r["id"].split("-")[1]) for r in train + held}
    for r in held:
        assert r["text"] == source[index[r["id"]]]
    texts = [s.text for s in secrets if s.count]
    for r in train:
        doc = r["text"]
        for t in texts:
            for m in re.finditer(re.escape(t), doc):
                assert m.start() == 0 or doc[m.start() - 1] in " \n", (r["id"], t)
                assert m.end() == len(doc) or doc[m.end()] in " \n", (r["id"], t)
        stripped = doc
        for t in texts:
            for pattern in (t + "\n\n", t + " ", "\n\n" + t):
                stripped = stripped.replace(pattern, "")
        assert stripped == source[index[r["id"]]], r["id"]


def test_pii_records(built):
    _, _, _, secrets = built
    pii = [s for s in secrets if s.kind == "pii"]
    assert pii
    for s in pii:
        f = s.fields
        assert set(f) == {"name", "email", "phone", "address", "ssn", "card"}
        assert luhn_ok(f["card"]) and f["card"].isdigit() and 12 <= len(f["card"]) <= 19
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", f["ssn"]) and s.secret == f["ssn"]
        assert s.format == "{d3}-{d2}-{d4}" and s.suffix == "."
        assert all(v in s.text for v in f.values())
        assert "@" in f["email"] and "\n" not in s.text
    for s in secrets:
        if s.kind == "canary":
            assert s.fields == {}


def test_same_seed_identical_files_other_seed_differs(tmp_path):
    def files(out):
        return {n: (out / n).read_bytes() for n in ("train.jsonl", "heldout.jsonl", "secrets.json", "corpus.json")}

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        build_corpus("python-docs", out, seed=seed, max_chars=20_000, repeats=(1, 4))
    assert files(a) == files(b)
    assert files(a)["train.jsonl"] != files(c)["train.jsonl"]
    assert files(a)["secrets.json"] != files(c)["secrets.json"]


def _docs_file(tmp_path, n=10):
    p = tmp_path / "docs.txt"
    p.write_text("\n\n".join(distinct_docs(n)))
    return str(p)


def test_small_local_corpus_wraps_repeats(tmp_path):
    src = _docs_file(tmp_path, n=5)
    s = build_corpus(src, tmp_path / "out", repeats=(3, 6), heldout_fraction=0.4,
                     canaries_per_repeat=1, pii_per_repeat=1, controls_per_kind=1)
    assert (s.n_train, s.n_heldout, s.n_secrets) == (3, 2, 6)
    train_text = "\x00".join(r["text"] for r in read_jsonl(s.train_path))
    for sec in load_secrets(s.secrets_path):
        assert count_overlapping(train_text, sec.text) == sec.count  # 6 > 3 members: wraps
    assert s.to_dict()["train_path"].endswith("train.jsonl")


@pytest.mark.parametrize("kwargs, match", [
    ({"repeats": (1, 0)}, "repeat"),
    ({"repeats": (1, -2)}, "repeat"),
    ({"repeats": (1.5,)}, "repeat"),
    ({"repeats": (True,)}, "repeat"),
    ({"heldout_fraction": 0.0}, "heldout_fraction"),
    ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ({"heldout_fraction": 1.2}, "heldout_fraction"),
    ({"canaries_per_repeat": -1}, "canaries_per_repeat"),
    ({"seed": "zero"}, "seed"),
    ({"templates": []}, "non-empty"),
    ({"templates": [{"prefix_template": "PIN is ", "format": "{d4}", "suffix": "."}]}, "name"),
    ({"templates": [{"prefix_template": "{name} ", "format": "{q4}", "suffix": "."}]}, "malformed"),
])
def test_build_rejects_bad_arguments_and_writes_nothing(tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(LlmMiaError, match=match):
        build_corpus(_docs_file(tmp_path), out, **kwargs)
    assert not out.exists()


def test_build_too_few_documents_keeps_previous_build(tmp_path):
    out = tmp_path / "out"
    build_corpus(_docs_file(tmp_path), out, repeats=(1,))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    one = tmp_path / "one.txt"
    one.write_text("Only one document here, long enough to pass the fifty character minimum.")
    with pytest.raises(LlmMiaError, match="at least 2"):
        build_corpus(str(one), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_build_errors_for_sources_and_out_dir(tmp_path):
    with pytest.raises(LlmMiaError, match="not found"):
        build_corpus(str(tmp_path / "missing.txt"), tmp_path / "out")
    with pytest.raises(LlmMiaError, match="unknown corpus source"):
        build_corpus("pythondocs-typo", tmp_path / "out")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LlmMiaError, match="is a file"):
        build_corpus(_docs_file(tmp_path), f)


def _norm_words(text):
    """An independent copy of the dedup normalisation: lower-case, punctuation to spaces, split."""
    return re.sub(r"[^\w\s$+=]|_", " ", text.lower()).split()


def _tri(text):
    w = _norm_words(text)
    return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}


def test_build_dedups_before_the_split_and_reports_it(tmp_path):
    """Issue 15 item 8: a folder with an exact copy (other case and spacing) and a near copy (one
    sentence added) of two files: both copies are merged into the earlier file before the split,
    so no held-out document is an exact or near (>= half its trigrams) copy of a member."""
    docs = distinct_docs(8, sentences=4, seed=5)
    src = tmp_path / "src"
    src.mkdir()
    for i, d in enumerate(docs):
        (src / f"f{i}.txt").write_text(d)
    (src / "g_copy.txt").write_text("  " + docs[2].upper().replace(" ", "   ") + "\n")
    (src / "h_near.md").write_text(docs[3] + " Walrus tapir okapi lemur gibbon.")
    (src / "z.bin").write_bytes(b"\x00\x01")
    s = build_corpus(str(src), tmp_path / "out", repeats=(1,), heldout_fraction=0.5, canaries_per_repeat=1,
                     pii_per_repeat=0, controls_per_kind=0)
    assert (s.unit, s.n_train + s.n_heldout) == ("file", 8)
    assert s.merged == [{"dropped": f"{src / 'g_copy.txt'}#0", "kept": f"{src / 'f2.txt'}#0", "reason": "exact"},
                        {"dropped": f"{src / 'h_near.md'}#0", "kept": f"{src / 'f3.txt'}#0", "reason": "near"}]
    assert s.skipped == [{"path": str(src / "z.bin"), "reason": "unsupported type .bin"}]
    meta = json.loads(s.meta_path.read_text())["reading"]
    assert (meta["documents_read"], meta["exact_duplicates"], meta["near_duplicates"]) == (10, 1, 1)
    assert meta["merged"] == s.merged and meta["skipped_files"] == s.skipped
    train = [r["text"] for r in read_jsonl(s.train_path)]
    held = [r["text"] for r in read_jsonl(s.heldout_path)]
    for h in held:  # brute force over every pair, with an independent normalisation
        for t in train:
            assert _norm_words(h) != _norm_words(t)
            assert len(_tri(h) & _tri(t)) < 0.5 * len(_tri(h))
    lines = s.lines()
    assert "1 exact and 1 near duplicates merged" in lines[0] and lines[1] == "skipped 1 files: 1 unsupported type .bin"


def test_build_drops_short_documents_and_names_the_unit_when_too_few(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_text("\n\n".join(distinct_docs(6) + ["tiny", "ok."]))
    s = build_corpus(str(p), tmp_path / "out", repeats=(1,), canaries_per_repeat=1, pii_per_repeat=0,
                     controls_per_kind=0)
    assert (s.unit, s.n_short, s.n_train + s.n_heldout) == ("paragraph", 2, 6)
    with pytest.raises(LlmMiaError, match="gave 1 document .*--unit paragraph or line"):
        build_corpus(str(p), tmp_path / "out2", unit="file")
    assert not (tmp_path / "out2").exists()


def test_corpus_json_records_the_faker_locale_for_the_pii_regions(tmp_path):
    from llm_mia.extraction.pii_findings import resolve_regions

    build_corpus(_docs_file(tmp_path, 12), tmp_path / "c", repeats=(1,))
    meta = json.loads((tmp_path / "c" / "corpus.json").read_text())
    assert meta["locales"] == ["en_US"]  # the planted Faker PII is US: its phones are read as US first
    assert resolve_regions(None, tmp_path / "c")[0] == "US"
