"""PII findings of an audit: attribution to planted secrets, training counts, Lukas et al. precision / recall."""

from __future__ import annotations

import pytest

from llm_mia.pii_findings import pii_findings, planted_values
from llm_mia.secrets import Secret, space_size

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
