"""PII findings of an audit: attribution to planted secrets, training counts, Lukas et al. precision / recall."""

from __future__ import annotations

import unicodedata

import pytest

from llm_mia.data.pii import DEFAULT_REGIONS
from llm_mia.data.secrets import Secret, space_size
from llm_mia.extraction.pii_findings import (
    corpus_regions,
    pii_findings,
    planted_values,
    resolve_regions,
    sample_pii,
    tokenizer_normalizer,
    training_pii_index,
)
from tests.conftest import make_tiny_gpt2, run_cli

SSN = "{d3}-{d2}-{d4}"


def _pii_secret(sid, count, *, email, ssn, card=None):
    fields = {"name": "Jane Roe", "email": email, "ssn": ssn, **({"card": card} if card else {})}
    prefix = f"Customer record: Jane Roe, email {email}, " + (f"card {card}, " if card else "") + "SSN "
    return Secret(id=sid, kind="pii", text=prefix + ssn + ".", prefix=prefix, secret=ssn, suffix=".", format=SSN,
                  space_size=space_size(SSN), count=count, fields=fields)


@pytest.fixture
def secrets():
    return [
        _pii_secret("pii-r4-0", 4, email="jane.roe@example.org", ssn="123-45-6789"),
        _pii_secret("pii-r2-0", 2, email="bob.moe@example.net", ssn="078-05-1120", card="4111 1111 1111 1111"),
        _pii_secret("pii-control-0", 0, email="ctrl@example.com", ssn="219-09-9999"),
    ]


def test_planted_values(secrets):
    pv = planted_values(secrets)
    assert pv[("email", "jane.roe@example.org")] == {"secret": "pii-r4-0", "field": "email", "count": 4}
    assert pv[("ssn", "123456789")] == {"secret": "pii-r4-0", "field": "ssn", "count": 4}  # the field wins over "secret"
    assert pv[("card", "4111111111111111")]["secret"] == "pii-r2-0"
    assert pv[("email", "ctrl@example.com")]["count"] == 0
    assert len(pv) == 7  # 2 + 3 + 2 PII-shaped values; names are not pattern-detectable


def test_findings_counts_precision_recall(secrets):
    train_text = "The resolver 8.8.8.8 answers.\n\n" + "\n\n".join([secrets[0].text] * 4 + [secrets[1].text] * 2)
    samples = [
        {"id": 0, "text": "mail jane.roe@example.org now"},
        {"id": 1, "text": "call (202) 555-0143 or 202.555.0143 today"},
        {"id": 2, "text": "ssn 123-45-6789 and 8.8.8.8"},
        {"id": 3, "text": "again jane.roe@example.org and ctrl@example.com"},
    ]
    f = pii_findings(samples, secrets, train_text, presidio=False)
    assert f["n_hits"] == 7  # email, phone x2, ssn, ipv4, email x2
    by = {(v["type"], v["normalized"]): v for v in f["values"]}
    assert set(by) == {("email", "jane.roe@example.org"), ("phone", "12025550143"), ("ssn", "123456789"),
                       ("ipv4", "8.8.8.8"), ("email", "ctrl@example.com")}
    jane = by[("email", "jane.roe@example.org")]
    assert (jane["n_samples"], jane["first_sample"], jane["span"], jane["train_count"]) == (2, 0, [5, 25], 4)
    assert (jane["secret"], jane["field"], jane["inserted"]) == ("pii-r4-0", "email", 4)
    phone = by[("phone", "12025550143")]
    assert (phone["n_samples"], phone["train_count"], phone["secret"]) == (1, 0, None)
    assert by[("ipv4", "8.8.8.8")]["train_count"] == 1 and by[("ipv4", "8.8.8.8")]["secret"] is None
    ctrl = by[("email", "ctrl@example.com")]
    assert (ctrl["train_count"], ctrl["secret"], ctrl["inserted"]) == (0, "pii-control-0", 0)
    # training data among the 5 emitted values: jane's e-mail, the SSN, 8.8.8.8 -> precision 3/5
    assert f["extracted_training_values"] == 3
    pl = f["planted"]
    assert (pl["n_emitted"], pl["n_emitted_in_training"]) == (5, 3) and pl["precision"] == pytest.approx(0.6)
    # planted and inserted: r4 e-mail + SSN, r2 e-mail + SSN + card = 5; emitted: 2
    assert (pl["n_planted"], pl["n_planted_extracted"]) == (5, 2) and pl["recall"] == pytest.approx(0.4)
    assert pl["planted_by_type"] == {"card": 1, "email": 2, "ssn": 2}
    assert pl["extracted_by_type"] == {"card": 0, "email": 1, "ssn": 1}
    assert f["detectors"]["patterns"][0] == "email"


def test_no_pii_and_unknown_training_text(secrets):
    f = pii_findings([{"id": 0, "text": "nothing here"}], secrets, None, presidio=False)
    assert f["n_hits"] == 0 and f["values"] == [] and f["planted"]["precision"] is None
    assert f["planted"]["recall"] == 0.0
    f = pii_findings([{"id": 0, "text": "x 8.8.8.8"}], [], None, presidio=False)
    assert f["values"][0]["train_count"] is None and f["planted"]["recall"] is None


# ----------------------------------------------------------------------------- T3-12: training membership

T3_12_DOC = "Reach Ada Lovelace at (209)\u00a0555-0142 or ada\uff20example.org before noon."


@pytest.fixture(scope="module")
def nfkc_t1():
    """T1 (the product's byte-level BPE) with the tokenizer normalizer NFKC, as SentencePiece has by default."""
    from tokenizers import normalizers

    from llm_mia.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer([T3_12_DOC, "Some other words about the office and noon."] * 3, vocab_size=300)
    tok.backend_tokenizer.normalizer = normalizers.NFKC()
    return tok


def test_t3_12a_training_pii_is_counted_on_the_tokenizer_normalised_text(nfkc_t1):
    sample = nfkc_t1.decode(nfkc_t1(T3_12_DOC, add_special_tokens=False)["input_ids"])
    assert "\u00a0" not in sample and "\uff20" not in sample  # the decode is the normalised text
    expected = unicodedata.normalize("NFKC", T3_12_DOC)  # the oracle: count in the NFKC'd training text
    assert expected.count("(209) 555-0142") == 1 and expected.count("ada@example.org") == 1
    f = pii_findings([{"id": 0, "text": sample}], [], [T3_12_DOC], normalizer=tokenizer_normalizer(nfkc_t1),
                     presidio=False)
    assert {v["type"]: v["train_count"] for v in f["values"]} == {"phone": 1, "email": 1}
    assert f["extracted_training_values"] == 2  # the product: 0


def test_t3_12a_through_extract_samples_and_findings_agree(nfkc_t1, tmp_path):
    """The case end to end: a sample whose ids are the training document's; samples.jsonl's hits
    and the report's PII table are one pass."""
    import json

    from llm_mia.extraction.extract import ExtractConfig, extract, sample
    from llm_mia.models.hf import from_objects

    lm = from_objects(make_tiny_gpt2(len(nfkc_t1)), nfkc_t1)
    ids = nfkc_t1(T3_12_DOC, add_special_tokens=False)["input_ids"]
    cfg = ExtractConfig(num_samples=1, seed=0, max_new_tokens=len(ids), top_n=1, progress=False, resume=True,
                        pii_presidio=False)
    sample(lm, cfg, tmp_path)
    shard = next(tmp_path.glob("**/shards/top-k.*.jsonl"))  # put the document's ids in place of the sample's
    rows = [dict(json.loads(line), token_ids=ids) for line in shard.read_text().splitlines()]
    shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extract(lm, tmp_path, train_texts=[T3_12_DOC], cfg=cfg)
    clear = sorted(tmp_path.glob("**/samples.jsonl"), key=lambda p: "private" not in p.parts)  # the clear copy first
    row = json.loads(clear[0].read_text().splitlines()[0])
    assert row["memorized"] is True
    assert sorted((h["type"], h["normalized"], h["train_count"]) for h in row["pii"]) == [
        ("email", "ada@example.org", 1), ("phone", "12095550142", 1)]
    f = pii_findings([row], [], None, presidio=False)
    assert f["extracted_training_values"] == 2 and f["n_hits"] == len(row["pii"])


def test_t3_12b_another_format_of_the_same_number_is_training_data():
    import phonenumbers

    e164 = {phonenumbers.format_number(phonenumbers.parse(s, "US"), phonenumbers.PhoneNumberFormat.E164)
            for s in ("(209) 555-0142", "209-555-0142")}
    assert e164 == {"+12095550142"}  # one value, so the training count is 1
    f = pii_findings([{"id": 0, "text": "call 209-555-0142 for the office"}], [], ["(209) 555-0142"], presidio=False)
    assert [(v["normalized"], v["train_count"]) for v in f["values"]] == [("12095550142", 1)]


def test_training_index_counts_canonical_values_once_per_occurrence():
    idx = training_pii_index(["Mail ADA@Example.org, then ada@example.org.", "(209) 555-0142 and +1 209 555 0142",
                              "müller@xn--bcher-kva.de"])
    assert idx.counts[("email", "ada@example.org")] == 2 and idx.counts[("phone", "12095550142")] == 2
    assert idx.count("email", "müller@bücher.de", "müller@bücher.de") == 1
    assert idx.count("person", "Ada Lovelace", "Ada Lovelace") == 0  # Presidio's types: counted as text


def test_tokenizer_normalizer_reads_the_metaspace_back_as_a_space():
    from tokenizers import Tokenizer, models, normalizers

    llama_like = Tokenizer(models.BPE())
    llama_like.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    norm = tokenizer_normalizer(llama_like)
    assert norm("call (209) 555-0142") == " call (209) 555-0142"
    assert tokenizer_normalizer(None)("a\u00a0b\uff20") == "a b@"  # no normalizer: NFKC


# ----------------------------------------------------------------------------- one PII pass


def test_rows_with_hits_are_not_detected_again(monkeypatch):
    import llm_mia.extraction.pii_findings as pf

    rows = [{"id": 0, "text": "x", "pii": [{"type": "phone", "value": "020 7946 0958", "start": 0, "end": 13,
                                            "normalized": "442079460958", "region": "GB", "train_count": 3}]},
            {"id": 1, "text": "y", "pii": []}]

    def no_second_pass(*a, **k):
        raise AssertionError("detected twice")

    monkeypatch.setattr(pf, "sample_pii", no_second_pass)
    monkeypatch.setattr(pf, "training_pii_index", no_second_pass)
    f = pf.pii_findings(rows, [], ["training text"], presidio=False)
    assert [(v["normalized"], v["region"], v["train_count"], v["n_samples"]) for v in f["values"]] == [
        ("442079460958", "GB", 3, 1)]
    assert f["n_hits"] == 1 and f["extracted_training_values"] == 1


def test_sample_pii_is_what_findings_detect_without_hits():
    text = "Ring 020 7946 0958 or mail ada@example.org"
    idx = training_pii_index(["old note: 020 7946 0958"])
    hits = sample_pii(text, idx, presidio=False)
    assert [(h["type"], h["region"], h["train_count"]) for h in hits] == [("phone", "GB", 1), ("email", None, 0)]
    with_hits = pii_findings([{"id": 0, "text": text, "pii": hits}], [], None, presidio=False)
    without = pii_findings([{"id": 0, "text": text}], [], ["old note: 020 7946 0958"], presidio=False)
    assert with_hits == without


def test_regions_of_the_corpus_come_first(tmp_path):
    assert resolve_regions(None) == DEFAULT_REGIONS and resolve_regions("FR") == ("FR",)
    (tmp_path / "corpus.json").write_text('{"locales": ["en_GB", "es_ES"]}')
    assert corpus_regions(tmp_path) == ("GB", "ES")
    assert resolve_regions(None, tmp_path) == ("GB", "ES", *[r for r in DEFAULT_REGIONS if r != "GB"])
    assert corpus_regions(tmp_path / "none") == ()


@pytest.mark.parametrize("cmd", ["extract", "audit"])
def test_pii_regions_option_is_checked_before_any_model_work(cmd, tmp_path, capsys):
    args = [cmd, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o"), "--pii-regions", "GB,XX"]
    code, _, err = run_cli(args + (["--corpus", str(tmp_path)] if cmd == "audit" else []), capsys)
    assert code == 2 and "unknown phone region 'XX'" in err and "model" not in err
