"""Pattern-based detectors for personal data in what a model emits.

Seven types, each a pattern plus a validator (precision over recall where they conflict, but every
value Faker's ``en_US`` provider writes is found):

========  ===============================================================  ====================
type      what is matched                                                  ``normalized``
========  ===============================================================  ====================
email     ``local@domain.tld`` (local part ASCII or Latin letters, ASCII   lower-cased
          domain labels)
phone     ``phonenumbers.PhoneNumberMatcher`` (region "US", leniency       E.164 digits (country
          POSSIBLE), so Faker's ``(460)648-7647x5938``, ``+1-641-985-      code first), then
          8398``, ``281.256.5938x7784`` and ``001-...`` forms are found;   ``x`` + extension
          an unformatted digit run must also be VALID or NANP-shaped       when there is one
          (NXXNXXXXXX, N = 2-9); never part of a decimal number
          (``3.14159265358``) or a version (``3.11.7``)
ssn       ``ddd-dd-dddd`` or ``ddd dd dddd``, area not 000 / 666 / 9xx,    the 9 digits
          group not 00, serial not 0000 (the SSA rules Faker's ``ssn()``
          follows); not inside a longer digit/dash run
card      13-19 digits, contiguous or in 4-4-4-4(-1..3) / 4-6-4 / 4-6-5    the digits
          groups separated by single spaces or dashes, Luhn-valid; also
          12 contiguous digits with a Maestro prefix (Faker writes those)
iban      2 capital letters, 2 check digits, then the country's BBAN,      the compact IBAN
          contiguous or in groups of 4 separated by single spaces; the     (no spaces)
          country's length (ISO 13616 registry) and the mod-97 check
          (ISO 7064) must hold
ipv4      dotted quad, each part 0-255, validated by ``ipaddress``; only   ``ipaddress``'s
          globally routable addresses (``is_global``: no private,          compressed form
          loopback, documentation or reserved ranges, which identify
          nobody); not part of a longer dotted number, not after
          "version" / "v" / "release"
ipv6      hex groups and colons validated by ``ipaddress``, at least 3     compressed form
          non-empty groups (so slices such as ``1::2`` are not taken),
          globally routable only
========  ===============================================================  ====================

:func:`find_pii` returns non-overlapping hits sorted by start; where two detectors claim
overlapping text the longer span wins, then the type earlier in the table. Offsets are indices
into the Python string (code points), so ``text[hit.start:hit.end] == hit.value`` for any text.
With ``presidio=True`` and `presidio-analyzer <https://microsoft.github.io/presidio/>`_ plus a spaCy
model installed (the optional extra ``llm_mia[presidio]``), person names and locations are added
as types ``person`` and ``location``; :func:`pii_detectors` says which detectors run here.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

import phonenumbers
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher

__all__ = ["PII_TYPES", "PRESIDIO_TYPES", "PiiHit", "find_pii", "iban_valid", "luhn_valid", "pii_detectors",
           "pii_values"]

PII_TYPES: tuple[str, ...] = ("email", "iban", "card", "ssn", "phone", "ipv6", "ipv4")
#: Types added by Presidio (``find_pii(..., presidio=True)``) when it is installed: its entity -> our type.
PRESIDIO_TYPES: dict[str, str] = {"PERSON": "person", "LOCATION": "location"}
_PRIORITY = {t: i for i, t in enumerate((*PII_TYPES, *PRESIDIO_TYPES.values()))}


@dataclass(frozen=True)
class PiiHit:
    """One detected value.

    Attributes:
        type: one of :data:`PII_TYPES` ("email", "card", "ssn", "phone").
        value: the matched text, exactly ``text[start:end]``.
        start: offset of the first character (code points, 0-based).
        end: offset just past the last character.
        normalized: canonical form for comparing values across texts: lower-cased email; digits
            only for ssn and card; E.164 digits for phone (``"12025550143"``), followed by ``x``
            and the extension digits when there is an extension (``"12025550143x123"``).
    """

    type: str
    value: str
    start: int
    end: int
    normalized: str


# ---------------------------------------------------------------------------- validators
def luhn_valid(number: str) -> bool:
    """True when ``number``'s digits pass the Luhn (mod 10) check used by payment cards.

    Spaces and dashes are ignored. Returns False for any other non-digit character, for fewer than
    two digits, and for the empty string. Source: ISO/IEC 7812-1 annex B.
    """
    digits = number.replace(" ", "").replace("-", "")
    if len(digits) < 2 or not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


#: IBAN length per country (ISO 13616 registry): the 2-letter code, then the whole IBAN's length.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_valid(iban: str) -> bool:
    """True when ``iban`` (spaces ignored) has its country's registered length and passes ISO 7064 mod 97-10.

    The check: move the first four characters to the end, replace each letter by two digits
    (A = 10 ... Z = 35), and the resulting integer modulo 97 must be 1. Lower-case letters, an
    unknown country code or any character other than A-Z / 0-9 give False.
    """
    compact = iban.replace(" ", "")
    if not re.fullmatch(r"[A-Z]{2}[0-9]{2}[A-Z0-9]+", compact) or IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ssn_valid(area: str, group: str, serial: str) -> bool:
    return area != "000" and area != "666" and area[0] != "9" and group != "00" and serial != "0000"


# ---------------------------------------------------------------------------- patterns
# Local part: ASCII letters/digits, "._%+-" and Latin letters with diacritics (so "Äbc.x@..." is
# taken whole, while CJK text glued to an address does not become part of it). Domain: ASCII.
_L = "A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_EMAIL = re.compile(
    rf"[{_L}](?<![{_L}._%+-][{_L}])(?:[{_L}._%+-]{{0,62}}[{_L}_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![A-Za-z0-9-])"
)
# Not preceded by a letter/digit, nor by "digit-"; not followed by a letter/digit, nor by "-digit".
# (Patterns start with a plain digit and check the look-behinds after it: much faster to scan.
# SSN and card digits are ASCII [0-9]; phonenumbers itself also reads other scripts' digits.)
_SSN = re.compile(r"([0-9](?<!\w[0-9])(?<![0-9]-[0-9])[0-9]{2})([- ])([0-9]{2})\2([0-9]{4})(?!\w)(?!-[0-9])")
# Maximal runs of digit groups joined by single spaces or dashes, not part of a decimal number nor
# glued to a preceding letter.
# The look-ahead (at least 12 digits) lets the regex engine skip short numbers without Python work.
_DIGIT_RUN = re.compile(r"[0-9](?<!\w[0-9])(?<!\d[.,][0-9])(?=(?:[ -]?[0-9]){11})[0-9]*(?:[ -][0-9]+)*(?![0-9])")
_GROUP = re.compile(r"[0-9]+")
_ANY_DIGIT = re.compile(r"\d")
# "001" is how Faker (and some countries) write the international prefix before +1 numbers.
_IDD_001 = re.compile(r"(?<![\w+.()-])001(?=[-. ]\(?\d|\(\d)")


# Maestro issuer prefixes (as in Faker's credit-card provider): the only cards accepted with 12 digits.
_MAESTRO_PREFIXES = ("5018", "5020", "5038", "56", "57", "58", "6304", "6759", "6761", "6762", "6763", "0604", "6390")


def _card_layout_ok(groups: list[str]) -> bool:
    if len(groups) == 1:
        g = groups[0]
        return 13 <= len(g) <= 19 or (len(g) == 12 and g.startswith(_MAESTRO_PREFIXES))
    lens = [len(g) for g in groups]
    if lens in ([4, 6, 4], [4, 6, 5]):  # Diners 14 / Amex 15
        return True
    total = sum(lens)
    return 13 <= total <= 19 and all(x == 4 for x in lens[:-1]) and 1 <= lens[-1] <= 4


def _card_hits(text: str) -> list[PiiHit]:
    hits = []
    for run in _DIGIT_RUN.finditer(text):
        end_run = run.end()
        if text[end_run : end_run + 1] in (".", ",") and text[end_run + 1 : end_run + 2].isdigit():
            continue  # a decimal number such as 1234567890123.5
        groups = [(g.start() + run.start(), g.end() + run.start()) for g in _GROUP.finditer(run.group())]
        i = 0
        while i < len(groups):
            found = False
            for j in range(len(groups), i, -1):  # longest first
                parts = [text[a:b] for a, b in groups[i:j]]
                if _card_layout_ok(parts) and luhn_valid("".join(parts)):
                    s, e = groups[i][0], groups[j - 1][1]
                    hits.append(PiiHit("card", text[s:e], s, e, "".join(parts)))
                    i, found = j, True
                    break
            if not found:
                i += 1
    return hits


def _ssn_hits(text: str) -> list[PiiHit]:
    hits = []
    for m in _SSN.finditer(text):
        area, group, serial = m.group(1), m.group(3), m.group(4)
        if _ssn_valid(area, group, serial):
            hits.append(PiiHit("ssn", m.group(), m.start(), m.end(), area + group + serial))
    return hits


def _email_hits(text: str) -> list[PiiHit]:
    return [PiiHit("email", m.group(), m.start(), m.end(), m.group().lower()) for m in _EMAIL.finditer(text)]


_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})([0-9]{2})((?: ?[A-Z0-9]){8,32})")


def _iban_hits(text: str) -> list[PiiHit]:
    hits = []
    for m in _IBAN.finditer(text):
        need = IBAN_LENGTHS.get(m.group(1))
        if need is None:
            continue
        # Walk the BBAN up to the registered length; the IBAN must end where a group ends.
        rest, start_rest = m.group(3), m.start(3)
        n, k = 0, 0
        while k < len(rest) and n < need - 4:
            n += rest[k] != " "
            k += 1
        end = start_rest + k
        if n != need - 4 or (end < len(text) and text[end].isalnum()):
            continue
        value = text[m.start():end]
        groups = value[4:].split(" ")
        spaced = value[4:5] == " "
        if spaced:  # "GB82 WEST 1234 ...": groups of 4, the last 1-4
            ok = groups[0] == "" and all(len(g) == 4 for g in groups[1:-1]) and 1 <= len(groups[-1]) <= 4
        else:
            ok = len(groups) == 1
        compact = value.replace(" ", "")
        if ok and iban_valid(compact):
            hits.append(PiiHit("iban", value, m.start(), end, compact))
    return hits


_IPV4 = re.compile(r"(?<![\w.])(?<!\d\.)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![\w]|\.[0-9])")
_VERSION_BEFORE = re.compile(r"\b(?:version|ver\.?|release|rev\.?|v)[:\s]*$", re.IGNORECASE)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:]*(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![\w:]|\.[0-9])")


def _ip_hits(text: str, want4: bool, want6: bool) -> list[PiiHit]:
    hits = []
    if want4:
        for m in _IPV4.finditer(text):
            if _VERSION_BEFORE.search(text[max(0, m.start() - 10):m.start()]):
                continue  # "version 1.2.3.4"
            try:
                addr = ipaddress.IPv4Address(m.group())
            except ValueError:  # a part > 255 or a leading zero
                continue
            if addr.is_global:
                hits.append(PiiHit("ipv4", m.group(), m.start(), m.end(), addr.compressed))
    if want6:
        for m in _IPV6.finditer(text):
            value = m.group()
            if value.endswith(":") and not value.endswith("::"):
                value = value[:-1]  # "... 2001:4860::8888: the DNS" -- sentence punctuation
            if sum(1 for g in value.split(":") if g) < 3:
                continue
            try:
                addr = ipaddress.IPv6Address(value)
            except ValueError:
                continue
            if addr.is_global:
                hits.append(PiiHit("ipv6", value, m.start(), m.start() + len(value), addr.compressed))
    return hits


def _in_decimal(text: str, start: int, end: int) -> bool:
    before = start >= 2 and text[start - 1] in ".," and text[start - 2].isdigit()
    after = text[end : end + 1] in (".", ",") and text[end + 1 : end + 2].isdigit()
    return before or after


def _nanp_shaped(number: phonenumbers.PhoneNumber) -> bool:
    """+1 number of 10 national digits shaped NXX-NXX-XXXX (N = 2-9), as Faker en_US writes them."""
    nat = str(number.national_number)
    return number.country_code == 1 and len(nat) == 10 and nat[0] in "23456789" and nat[3] in "23456789"


# A stretch of digits and phone punctuation; the matcher only looks at windows around these.
# The look-ahead requires 7 digits (no phone number has fewer).
_PHONE_CANDIDATE = re.compile(r"\d(?=(?:[\s().\-/]*\d){6})[\d\s().\-/]*\d")
_CONTEXT_BEFORE, _CONTEXT_AFTER = 8, 16  # room for "+1 (", "001-" and " ext. 12345"


def _phone_windows(text: str) -> list[tuple[int, int]]:
    """Merged [start, end) windows around digit stretches holding >= 7 digits."""
    windows: list[tuple[int, int]] = []
    for m in _PHONE_CANDIDATE.finditer(text):
        a, b = max(0, m.start() - _CONTEXT_BEFORE), min(len(text), m.end() + _CONTEXT_AFTER)
        if windows and a <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(b, windows[-1][1]))
        else:
            windows.append((a, b))
    return windows


def _phone_hits(text: str, region: str) -> list[PiiHit]:
    # PhoneNumberMatcher parses every digit group it meets (~10 us each), so it only scans small
    # windows around stretches that can hold a phone number; its own boundary checks look at the
    # neighbouring characters only, which the windows keep.
    hits = []
    for a, b in _phone_windows(text):
        window = text[a:b]
        # Rewrite "001" (3 chars) as " +1" (3 chars) so offsets are unchanged; remember where.
        idd = {m.start() for m in _IDD_001.finditer(window)}
        scan = _IDD_001.sub(" +1", window) if idd else window
        for m in PhoneNumberMatcher(scan, region, leniency=Leniency.POSSIBLE):
            start, end = m.start, m.end
            if start - 1 in idd and scan[start] == "+":
                start -= 1  # include the "001" of the original text
            start, end = start + a, end + a
            raw = text[start:end]
            if _in_decimal(text, start, end):
                continue
            if raw.isdigit() and not (phonenumbers.is_valid_number(m.number) or _nanp_shaped(m.number)):
                continue  # an unformatted digit run needs more than the right length
            norm = phonenumbers.format_number(m.number, PhoneNumberFormat.E164).lstrip("+")
            if m.number.extension:
                norm += "x" + m.number.extension
            hits.append(PiiHit("phone", raw, start, end, norm))
    return hits


# ---------------------------------------------------------------------------- public API
@functools.lru_cache(maxsize=1)
def _presidio_engine():
    """(engine, None) when Presidio and a spaCy model load, else (None, the reason)."""
    try:
        from presidio_analyzer import AnalyzerEngine  # optional extra
    except ImportError:
        return None, "presidio-analyzer is not installed (pip install 'llm_mia[presidio]')"
    try:
        return AnalyzerEngine(supported_languages=["en"]), None
    except Exception as e:  # no spaCy model, a broken install: patterns only
        return None, f"presidio-analyzer could not start ({type(e).__name__}: {' '.join(str(e).split())[:120]})"


def pii_detectors(*, presidio: bool = True) -> dict:
    """Which detectors :func:`find_pii` runs here.

    Returns ``{"patterns": [the PII_TYPES], "presidio": [its types] or [], "presidio_note": why
    not, or None}``. With ``presidio=False`` Presidio is not even loaded.
    """
    engine, why = _presidio_engine() if presidio else (None, "not requested")
    return {"patterns": list(PII_TYPES), "presidio": list(PRESIDIO_TYPES.values()) if engine else [],
            "presidio_note": why}


def _presidio_hits(text: str) -> list[PiiHit]:
    engine, _ = _presidio_engine()
    if engine is None:
        return []
    out = []
    for r in engine.analyze(text=text, language="en", entities=list(PRESIDIO_TYPES)):
        value = text[r.start:r.end]
        out.append(PiiHit(PRESIDIO_TYPES[r.entity_type], value, r.start, r.end, " ".join(value.split())))
    return out


def find_pii(text: str, *, types: Iterable[str] | None = None, region: str = "US",
             presidio: bool = False) -> list[PiiHit]:
    """Detect e-mail addresses, IBANs, payment-card numbers, US SSNs, phone numbers and public IP
    addresses in ``text`` (and person names / locations with ``presidio=True`` when installed).

    Args:
        text: any string (unicode fine; offsets are code-point indices).
        types: subset of :data:`PII_TYPES` to look for; default all.
        region: default region for phone numbers written without a country code (ISO 3166
            alpha-2, as ``phonenumbers`` expects).
        presidio: also run Presidio's name and location recognizers when it can be loaded (see
            :func:`pii_detectors`); silently patterns only otherwise.

    Returns:
        Non-overlapping :class:`PiiHit` list sorted by ``start``. Overlaps between detectors are
        resolved by keeping the longer span, then the type earlier in :data:`PII_TYPES`.

    Raises:
        ValueError: on an unknown type name.
    """
    wanted = set(PII_TYPES if types is None else types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII type(s) {sorted(unknown)}; known: {', '.join(PII_TYPES)}")
    hits: list[PiiHit] = []
    if "email" in wanted and "@" in text:
        hits += _email_hits(text)
    if _ANY_DIGIT.search(text) is not None:
        if "card" in wanted:
            hits += _card_hits(text)
        if "ssn" in wanted:
            hits += _ssn_hits(text)
        if "phone" in wanted:
            hits += _phone_hits(text, region)
        if "iban" in wanted:
            hits += _iban_hits(text)
        if ("ipv4" in wanted and "." in text) or ("ipv6" in wanted and ":" in text):
            hits += _ip_hits(text, "ipv4" in wanted, "ipv6" in wanted)
    if presidio:
        hits += _presidio_hits(text)
    # Greedy: longest first, then type priority, then position; keep what does not overlap.
    hits.sort(key=lambda h: (-(h.end - h.start), _PRIORITY[h.type], h.start))
    chosen: list[PiiHit] = []
    for h in hits:
        if all(h.end <= c.start or c.end <= h.start for c in chosen):
            chosen.append(h)
    chosen.sort(key=lambda h: h.start)
    return chosen


def pii_values(text: str, *, region: str = "US") -> set[tuple[str, str]]:
    """The set of ``(type, normalized value)`` pairs of every PII hit in ``text``.

    Two texts "carry the same personal data" when these sets are equal; used by
    :func:`llm_mia.dedup.dedup` to never merge samples that differ in a value.
    """
    return {(h.type, h.normalized) for h in find_pii(text, region=region)}
