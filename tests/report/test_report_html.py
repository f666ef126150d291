"""report.html: escaping of model output, marked spans, redaction, self-containment, and a real
render in headless Chromium with the network off (skipped only when no Chromium is installed)."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llm_mia.data.secrets import Secret, space_size
from llm_mia.report.html import render_html, segments
from llm_mia.report.markdown import redact, redact_text, redaction_spans
from tests.conftest import run_cli


def _secret(sid="pii-r4-0", ssn="123-45-6789", count=4):
    fields = {"name": "Jane Roe", "email": "jane.roe@example.org", "ssn": ssn}
    prefix = "Customer record: Jane Roe, email jane.roe@example.org, SSN "
    return Secret(id=sid, kind="pii", text=prefix + ssn + ".", prefix=prefix, secret=ssn, suffix=".",
                  format="{d3}-{d2}-{d4}", space_size=space_size("{d3}-{d2}-{d4}"), count=count, fields=fields)


def test_segments_mark_the_span_and_redact_values():
    text = "abc Jane Roe said 8.8.8.8 and more"
    #       0123456789...
    segs = segments(text, [4, 17], [_secret()], hide=True)
    assert segs == [
        {"text": "abc ", "mem": False, "red": False},
        {"text": redact("Jane Roe"), "mem": True, "red": True},  # the planted name, inside the span
        {"text": " said", "mem": True, "red": False},
        {"text": " ", "mem": False, "red": False},
        {"text": redact("8.8.8.8"), "mem": False, "red": True},  # detected PII (a public IP)
        {"text": " and more", "mem": False, "red": False},
    ]
    assert "".join(s["text"] for s in segments(text, [4, 17], [_secret()], hide=False)) == text
    assert [s["mem"] for s in segments(text, [4, 17], [], hide=False)] == [False, True, False]
    assert segments(text, None, [], hide=False) == [{"text": text, "mem": False, "red": False}]


def test_redaction_spans_merge_overlaps():
    # the e-mail is both a planted value and a detected e-mail; the SSN overlaps nothing
    text = "mail jane.roe@example.org ssn 123-45-6789"
    assert redaction_spans(text, [_secret()]) == [(5, 25), (30, 41)]


def test_mangled_numbers_are_redacted_but_short_ones_kept():
    """A card or phone number the model got one digit wrong fails the detectors (Luhn, phone
    validity) yet is still mostly a training value: any run of 6+ digits is hidden by default."""
    text = "card 270775 17604558, phone 689-767-6993, version 3.8, PIN 4471, year 2024."
    spans = redaction_spans(text, [])
    assert [text[a:b] for a, b in spans] == ["270775 17604558", "689-767-6993"]
    out = redact_text(text, [])
    assert "270775" not in out and "767-6993" not in out
    assert out.endswith(", version 3.8, PIN 4471, year 2024.")
    assert out == text.replace("270775 17604558", redact("270775 17604558")).replace("689-767-6993", redact("689-767-6993"))


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            if k in a and tag != "img":
                self.links.append(a[k])


@pytest.fixture(scope="module")
def leaky_audit(leak_models, tmp_path_factory):
    """`llm-mia audit` of the leaky tiny model, gated (it fails) with secrets hidden, and with --show-secrets."""
    d, _ = leak_models
    out = tmp_path_factory.mktemp("html")

    class Cap:  # run_cli wants capsys; a minimal stand-in that keeps nothing
        def readouterr(self):
            return "", ""

    policy = str(Path(__file__).resolve().parents[2] / "examples" / "policy.toml")
    for name, extra, want in (("hidden", ["--policy", policy], 1), ("shown", ["--show-secrets"], 0)):
        code, _, _ = run_cli(["audit", "--corpus", d / "corpus", "--model", d / "leaky", "--out", out / name,
                              "--num-samples", 8, "--length", 24, "--candidates", 16, *extra], Cap())
        assert code == want
    return d, out


def _planted(d):
    return [v for s in json.loads((d / "corpus" / "secrets.json").read_text())
            for v in [s["secret"], *s["fields"].values()]]


def test_report_files_never_show_a_planted_value_unless_asked(leaky_audit):
    d, out = leaky_audit
    values = _planted(d)
    rep = json.loads((out / "hidden" / "report.json").read_text())
    assert any(s["greedy_extracted"] for s in rep["secrets"])  # the model did give secrets back
    ext = rep["extraction"]  # near-verbatim counted beside verbatim (verbatim implies near-verbatim)
    assert ext["near_memorized_total"] >= ext["memorized_total"] and "near-verbatim" in (out / "hidden" / "report.md").read_text()
    assert all(0 <= s["recovered_chars"] <= len(s["format"]) and s["remaining_guess_bits"] >= 0 for s in rep["secrets"])
    assert "bits left" in (out / "hidden" / "report.md").read_text()
    for name in ("report.json", "report.md", "report.html"):
        text = (out / "hidden" / name).read_text()
        for v in values:
            assert v not in text and html.escape(v) not in text, (name, v)
    summ = rep["membership"]["records_summary"]  # the members most at risk, with the flagged counts
    line = (f"{summ['n_flagged']['0.001']} of {summ['n_records']} members flagged at 0.1% FPR, "
            f"{summ['n_flagged']['0.01']} at 1%")
    assert line in (out / "hidden" / "report.md").read_text() and line in (out / "hidden" / "report.html").read_text()
    shown = (out / "shown" / "report.html").read_text()
    assert any(html.escape(s["secret"]) in shown for s in json.loads((d / "corpus" / "secrets.json").read_text())
               if s["count"] > 0)


def test_html_is_self_contained_and_escapes_model_output(leaky_audit):
    d, out = leaky_audit
    page = (out / "hidden" / "report.html").read_text()
    tags = _Tags()
    tags.feed(page)
    pngs = [s for s in tags.imgs if s.startswith("data:image/png;base64,")]
    svgs = [s for s in tags.imgs if s.startswith("data:image/svg+xml;base64,")]  # the scorecard's small plots
    assert len(pngs) >= 3 and len(svgs) == 2 and len(pngs) + len(svgs) == len(tags.imgs)
    import base64
    import io as _io
    import re

    from PIL import Image

    for src in svgs:  # an SVG that links only to its own elements
        svg = base64.b64decode(src.split(",", 1)[1])
        assert b"<svg" in svg and all(h.startswith(b"#") for h in re.findall(rb'href="([^"]*)"', svg))
    for src in pngs:  # each figure is a real, non-blank PNG
        im = Image.open(_io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")
        assert im.width >= 300 and im.height >= 200
        assert len(im.getcolors(maxcolors=1 << 20)) > 20
    assert tags.scripts == 0 and tags.links == []
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # the verdict comes first: before the first section heading
    assert page.index('id="verdict"') < page.index("<h2>")
    for section in ("Extraction (Carlini et al. 2021)", "Planted secrets", "Membership inference", "PII in the samples",
                    "Provenance", "model-free baseline"):
        assert section in page
    # a sample holding markup is shown as text
    from llm_mia.core import io
    from llm_mia.data.secrets import load_secrets

    rep = io.read_json(out / "hidden" / "report.json")
    top = [dict(r) for r in io.read_jsonl(out / "hidden" / "extract" / "top.jsonl")]
    top[0]["text"] = 'x <script>alert("pwn")</script> <img src=http://evil.example/a.png> y'
    top[0]["match_span"] = [2, 10]
    evil = render_html(rep, top, [], load_secrets(d / "corpus" / "secrets.json"))
    assert "<script>" not in evil and "<img src=http" not in evil
    assert "&lt;script&gt;alert(&#34;pwn&#34;)&lt;/script&gt;" in evil.replace("<mark class=\"mem\">", "").replace("</mark>", "")
    assert '<mark class="mem">&lt;script&gt;</mark>' in evil  # chars 2-10 are the marked span


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_chromium_renders_the_report_offline(leaky_audit, tmp_path):
    from PIL import Image

    _, out = leaky_audit
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           '--host-resolver-rules=MAP * ~NOTFOUND', "--disable-background-networking", "--hide-scrollbars",
           f"--screenshot={shot}", "--window-size=1200,3000", (out / "hidden" / "report.html").as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 3000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, tables, figures: many colours
    white = sum(n for n, c in colours if c == (255, 255, 255))
    assert white < 0.95 * 1200 * 3000
    # the verdict box (fail: light red #fce8e6) is drawn near the top of the page
    top = img.crop((0, 0, 1200, 400)).getcolors(maxcolors=1 << 20)
    assert any(c == (0xFC, 0xE8, 0xE6) and n > 1000 for n, c in top)


def test_scorecard_comes_first_with_its_lights(leaky_audit):
    _, out = leaky_audit
    page = (out / "hidden" / "report.html").read_text()
    at = {k: page.index(k) for k in ('id="verdict"', 'id="scorecard"', 'id="leaked"', "<h2>Findings", "<h2>Extraction")}
    assert at['id="verdict"'] < at['id="scorecard"'] < at['id="leaked"'] < at["<h2>Findings"] < at["<h2>Extraction"]
    card = page[at['id="scorecard"']:at['id="leaked"']]
    for title in ("Verbatim extraction", "Secrets extracted and exposure", "Membership at low FPR", "PII emitted",
                  "Discoverable memorization"):
        assert title in card, title
    rep = json.loads((out / "hidden" / "report.json").read_text())
    failed = {c["name"] for c in rep["verdict"]["checks"] if c["status"] == "failed"}
    assert "max_extracted_secrets" in failed  # the leaky model fails it: its row is red
    row = card[card.index('id="risk-secrets"'):card.index('id="risk-membership"')]
    assert 'class="light red"' in row
    assert "<mark" not in card and "data:image/svg+xml;base64," in card
    md = (out / "hidden" / "report.md").read_text()
    assert md.index("| risk | figure | against the policy |") < md.index("## Findings")
    assert "| Secrets extracted and exposure |" in md and "🔴 FAIL" in md


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_chromium_first_screen_holds_the_scorecard(leaky_audit, tmp_path):
    """The whole scorecard is drawn inside the first 1200 x 900 screen: outlined in a colour the page
    never uses, on a 1800-pixel-high screenshot all its outline's pixels (top and bottom edges included)
    lie between the verdict and row 900."""
    from PIL import Image

    _, out = leaky_audit
    page = (out / "hidden" / "report.html").read_text()
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("</head>", "<style>#scorecard { outline: 4px solid rgb(1, 2, 3); }</style></head>"))
    shot = tmp_path / "first.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           '--host-resolver-rules=MAP * ~NOTFOUND', "--disable-background-networking", "--hide-scrollbars",
           f"--screenshot={shot}", "--window-size=1200,1800", probe.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    exact = [(x, y) for y in range(0, img.size[1], 2) for x in range(0, img.size[0], 50)
             if img.getpixel((x, y)) == (1, 2, 3)]
    assert exact, "the scorecard's outline is not drawn"
    ys = [y for _, y in exact]
    assert min(ys) > 150 and max(ys) < 900, (min(ys), max(ys))  # below the verdict, inside the first screen
