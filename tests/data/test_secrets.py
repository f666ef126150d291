"""Secret spaces, sampling, and strict secrets.json reading (llm_mia.data.secrets)."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.data.secrets import (
    Secret,
    Slot,
    enumerate_space,
    load_secrets,
    luhn_valid,
    make_canary,
    matches_format,
    parse_format,
    sample_candidates,
    sample_secret,
    save_secrets,
    secret_at,
    space_size,
)

DIGITS, HEX, LETTERS = "0123456789", "0123456789abcdef", "abcdefghijklmnopqrstuvwxyz"


# ------------------------------------------------------------------------------------ formats

@pytest.mark.parametrize("fmt, size", [
    ("{d3}-{d2}-{d4}", 10**9),
    ("{h2}", 256),
    ("ab", 1),
    ("", 1),
    ("{a3}x{h1}", 26 * 26 * 26 * 16),
    ("{d6}", 1_000_000),
    ("{h32}", 2**128),  # beyond 64 bits: must stay an exact Python int
])
def test_space_size_by_hand(fmt, size):
    assert space_size(fmt) == size
    assert isinstance(space_size(fmt), int)


def test_parse_format_parts():
    assert parse_format("{d3}-{d2}-{d4}") == [Slot("d", 3), "-", Slot("d", 2), "-", Slot("d", 4)]
    assert parse_format("key {h12}.") == ["key ", Slot("h", 12), "."]
    assert parse_format("{a2}{d1}") == [Slot("a", 2), Slot("d", 1)]
    assert parse_format("plain") == ["plain"]


@pytest.mark.parametrize("bad", ["{x3}", "{d0}", "{d}", "{d3", "d3}", "{D3}", "{d-1}", "{d03}",
                                 "a{b", "{{d3}}", "{ d3}"])
def test_malformed_formats_raise(bad):
    with pytest.raises(LlmMiaError, match="malformed secret format"):
        parse_format(bad)
    with pytest.raises(LlmMiaError):
        space_size(bad)


def test_non_string_format_raises():
    with pytest.raises(LlmMiaError):
        parse_format(3)


@pytest.mark.parametrize("fmt, pools", [
    ("{d1}-{h1}", [DIGITS, "-", HEX]),
    ("{a2}", [LETTERS, LETTERS]),
    ("x{d2}y", ["x", DIGITS, DIGITS, "y"]),
    ("{h1}{d1}{a1}", [HEX, DIGITS, LETTERS]),
])
def test_enumerate_space_matches_itertools_product(fmt, pools):
    expected = ["".join(t) for t in itertools.product(*pools)]
    got = enumerate_space(fmt, limit=10**6)
    assert got == expected
    assert got == sorted(got)  # lexicographic order
    assert len(set(got)) == len(got) == space_size(fmt)
    assert [secret_at(fmt, i) for i in range(len(got))] == got


def test_enumerate_space_limit():
    assert enumerate_space("{d2}", limit=100)[-1] == "99"
    with pytest.raises(LlmMiaError, match="more than the limit"):
        enumerate_space("{d3}", limit=999)


def test_secret_at_bounds():
    assert secret_at("{d3}-{d2}-{d4}", 10**9 - 1) == "999-99-9999"
    assert secret_at("{d3}-{d2}-{d4}", 123456789) == "123-45-6789"
    for bad in (-1, 10**9, 1.0, True):
        with pytest.raises(LlmMiaError):
            secret_at("{d3}-{d2}-{d4}", bad)


# ----------------------------------------------------------------------------------- sampling

def test_sampling_is_deterministic_and_in_space():
    fmt = "{d3}-{d2}-{d4}"
    a = sample_candidates(fmt, 200, random.Random(7))
    b = sample_candidates(fmt, 200, random.Random(7))
    c = sample_candidates(fmt, 200, random.Random(8))
    assert a == b and a != c
    assert all(matches_format(x, fmt) for x in a)
    assert sample_secret(fmt, random.Random(7)) == a[0]
    assert sample_candidates(fmt, 0, random.Random(0)) == []
    with pytest.raises(LlmMiaError):
        sample_candidates(fmt, -1, random.Random(0))


def test_sampling_is_uniform_over_small_space():
    draws = sample_candidates("{h1}{d1}", 8000, random.Random(0))
    counts = Counter(draws)
    assert set(counts) == set(enumerate_space("{h1}{d1}", limit=160))  # nothing excluded
    expected = 8000 / 160
    chi2 = sum((counts[k] - expected) ** 2 / expected for k in counts)
    assert chi2 < 230  # 159 dof: p ~ 2e-4 under uniformity


def test_sampling_of_literal_only_format():
    assert sample_candidates("ab", 3, random.Random(0)) == ["ab", "ab", "ab"]


@pytest.mark.parametrize("value, fmt, ok", [
    ("123-45-6789", "{d3}-{d2}-{d4}", True),
    ("123-45-678", "{d3}-{d2}-{d4}", False),
    ("12a-45-6789", "{d3}-{d2}-{d4}", False),
    ("123-45-6789\n", "{d3}-{d2}-{d4}", False),
    ("\u0661\u0662\u0663-45-6789", "{d3}-{d2}-{d4}", False),  # Arabic-Indic digits are not [0-9]
    ("0af", "{h3}", True),
    ("0AF", "{h3}", False),
    ("0ag", "{h3}", False),
    ("zz", "{a2}", True),
    ("a.b", "a.b", True),
    ("axb", "a.b", False),  # literal dot, not a regex wildcard
    (123, "{d3}", False),
])
def test_matches_format(value, fmt, ok):
    assert matches_format(value, fmt) is ok


def test_luhn_known_values():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("79927398710")
    assert not luhn_valid("") and not luhn_valid("0") and not luhn_valid("4111-1111")


# ------------------------------------------------------------------------------ Secret records

def _secret(**over) -> Secret:
    rec = dict(id="canary-r16-0", kind="canary", text="The PIN of Jane Roe is 123456.",
               prefix="The PIN of Jane Roe is ", secret="123456", suffix=".", format="{d6}",
               space_size=10**6, count=16, fields={})
    rec.update(over)
    return Secret.from_dict(rec)


def test_secret_round_trip(tmp_path):
    big = _secret(id="big", text="k " + "f" * 32 + ".", prefix="k ", secret="f" * 32,
                  format="{h32}", space_size=16**32)
    secrets = [_secret(), big]
    path = tmp_path / "secrets.json"
    save_secrets(path, secrets)
    assert load_secrets(path) == secrets
    assert json.loads(path.read_text())[1]["space_size"] == 2**128  # exact, not a float
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # no temp file left
    assert Secret.from_dict(secrets[0].to_dict()) == secrets[0]


def _write(tmp_path, obj) -> str:
    path = tmp_path / "secrets.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _one_line_error(path, match) -> str:
    with pytest.raises(LlmMiaError, match=match) as info:
        load_secrets(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_load_secrets_corrupt_json(tmp_path):
    _one_line_error(_write(tmp_path, '[{"id": "a",'), "corrupt JSON")


def test_load_secrets_not_a_list(tmp_path):
    _one_line_error(_write(tmp_path, {"id": "a"}), "expected a JSON list")


def test_load_secrets_missing_key_names_record(tmp_path):
    good = _secret().to_dict()
    bad = dict(good, id="b")
    del bad["space_size"]
    msg = _one_line_error(_write(tmp_path, [good, bad]), "missing key")
    assert "record 1" in msg and "space_size" in msg


def test_load_secrets_with_the_readme_keys_derives_id_suffix_and_fields(tmp_path):
    """A hand-written secrets.json with only the keys the README lists loads: id is
    "<kind>-<record index>", suffix is what text holds after prefix + secret, fields empty."""
    recs = [{"text": "The PIN of Jane Roe is 123456.", "prefix": "The PIN of Jane Roe is ", "secret": "123456",
             "format": "{d6}", "space_size": 10**6, "kind": "canary", "count": 4},
            {"text": "Key ab12", "prefix": "Key ", "secret": "ab12", "format": "{a2}{d2}",
             "space_size": 26**2 * 100, "kind": "canary", "count": 0}]
    got = load_secrets(_write(tmp_path, recs))
    assert [(s.id, s.suffix, s.fields) for s in got] == [("canary-0", ".", {}), ("canary-1", "", {})]
    assert got[0].text == "The PIN of Jane Roe is 123456." and got[0].count == 4


@pytest.mark.parametrize("change, match", [
    ({"count": 10**30}, "more than 1,000,000,000 insertions"),
    ({"prefix": "", "text": "123456."}, "prefix of 'canary-r16-0' is empty"),
    ({"prefix": "  ", "text": "  123456."}, "prefix of 'canary-r16-0' is empty"),
    ({"format": "123456", "space_size": 1}, "has no random field"),
])
def test_load_secrets_refuses_counts_and_spaces_it_cannot_use(tmp_path, change, match):
    rec = dict(_secret().to_dict(), **change)
    msg = _one_line_error(_write(tmp_path, [rec]), match)
    assert "record 0" in msg


@pytest.mark.parametrize("change, match", [
    ({"text": "The PIN of Jane Roe is 123457."}, "not prefix \\+ secret \\+ suffix"),
    ({"secret": "12345", "text": "The PIN of Jane Roe is 12345."}, "does not match its format"),
    ({"space_size": 999}, "space_size"),
    ({"count": True}, "count must be"),
    ({"count": -1}, "count must be"),
    ({"kind": "password"}, "kind must be"),
    ({"format": "{x6}"}, "malformed secret format"),
    ({"fields": {"ssn": 123}}, "fields"),
    ({"extra": 1}, "unknown key"),
])
def test_load_secrets_invalid_record(tmp_path, change, match):
    rec = dict(_secret().to_dict(), **change)
    msg = _one_line_error(_write(tmp_path, [rec]), match)
    assert "record 0" in msg


def test_load_secrets_duplicate_id(tmp_path):
    rec = _secret().to_dict()
    _one_line_error(_write(tmp_path, [rec, rec]), "duplicate id")


def test_load_secrets_missing_file(tmp_path):
    with pytest.raises(LlmMiaError, match="not found"):
        load_secrets(tmp_path / "nope.json")


def test_save_secrets_invalid_writes_nothing(tmp_path):
    s = _secret()
    s.text = "tampered"
    with pytest.raises(LlmMiaError):
        save_secrets(tmp_path / "s.json", [s])
    with pytest.raises(LlmMiaError, match="duplicate"):
        save_secrets(tmp_path / "s.json", [_secret(), _secret()])
    assert list(tmp_path.iterdir()) == []


def test_make_canary():
    template = {"prefix_template": "The PIN of {name} is ", "format": "{d6}", "suffix": "."}
    s = make_canary("canary-r1-0", template, "Jane Roe", random.Random(3), count=1)
    assert s.prefix == "The PIN of Jane Roe is " and s.suffix == "."
    assert s.text == s.prefix + s.secret + s.suffix and matches_format(s.secret, "{d6}")
    assert s.secret == sample_secret("{d6}", random.Random(3))
    with pytest.raises(LlmMiaError, match="name"):
        make_canary("x", dict(template, prefix_template="The PIN is "), "Jane", random.Random(0), count=1)


def test_partial_recovery_by_hand():
    from llm_mia.data.secrets import partial_recovery, random_positions

    assert random_positions("{d2}-{h1}") == [(0, 10), (1, 10), (3, 16)]
    # the example: 4 of 6 digits in place, 10 ** 2 members left
    assert partial_recovery("{d2}-{d2}-{d2}", "73-19-55", "73-19-19-5") == (4, pytest.approx(math.log2(100)))
    assert partial_recovery("{d2}-{d2}-{d2}", "73-19-55", "73-19-55") == (6, 0.0)
    assert partial_recovery("{d2}-{d2}-{d2}", "73-19-55", "") == (0, pytest.approx(math.log2(10**6)))
    # shifted by one character: only the last digit (5 over 5) is in place; literals never count
    assert partial_recovery("{d2}-{d2}-{d2}", "73-19-55", " 73-19-55")[0] == 1
    # mixed alphabets: hex char recovered, both digits lost -> log2(10 * 10)
    assert partial_recovery("{d2}-{h1}", "07-c", "18-c") == (1, pytest.approx(math.log2(100)))
    assert partial_recovery("{a2}", "qz", "q") == (1, pytest.approx(math.log2(26)))
    with pytest.raises(LlmMiaError):
        partial_recovery("{d2}", "7x", "7x")
