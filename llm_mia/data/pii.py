"""Pattern-based detectors for personal data in what a model emits.

Every detector runs on the text after NFKC normalisation (fullwidth ``＠`` and digits, NBSP, thin
and other Unicode spaces become their ASCII forms) with Unicode dashes (U+2010-2015, U+2212) read
as ``-``; each hit is mapped back to the span of the original text, so ``text[hit.start:hit.end]
== hit.value`` always holds, while ``hit.normalized`` is the value's canonical form.

Seven types, each a pattern plus a validator (precision over recall where they conflict, but every
value Faker's ``en_US`` provider writes is found):

========  ===============================================================  ====================
type      what is matched                                                  ``normalized``
========  ===============================================================  ====================
email     ``local@domain.tld``; local part and domain labels ASCII or      lower-cased local
          Latin letters with diacritics (IDN ``müller@bücher.de``), or     part, ``@``, the
          punycode labels (``xn--bcher-kva.de``)                           domain in Unicode
                                                                           (IDNA/UTS 46)
phone     ``phonenumbers.PhoneNumberMatcher`` (leniency POSSIBLE) in each  E.164 digits (country
          of ``regions`` (default :data:`DEFAULT_REGIONS`, the first one  code first), then
          preferred). A number with a country code reads the same in all  ``x`` + extension
          regions. A national one is taken by the first region whose      when there is one
          national format groups its digits as written ("020 7946 0958":
          GB, "01 99 00 12 34": FR), else by the first region (any
          POSSIBLE number; an unformatted digit run only when VALID or
          NANP-shaped NXXNXXXXXX), else by a later region where it is
          VALID, written with the trunk prefix and the area code as its
          first group (rules in ``_national_reading``); ``hit.region``
          records which. Never glued to a word, inside a longer run of
          digit groups, part of a decimal number (``3.14159265358``) or a
          version (``3.11.7``)
ssn       ``ddd-dd-dddd`` or ``ddd dd dddd``, area not 000 / 666 / 9xx,    the 9 digits
          group not 00, serial not 0000 (the SSA rules Faker's ``ssn()``
          follows); not inside a longer digit/dash run
card      13-19 digits, contiguous or in 4-4-4-4(-1..3) / 4-6-4 / 4-6-5    the digits
          groups separated by single spaces or dashes, Luhn-valid, AND an
          issuer range of that length (:data:`CARD_IIN`: Visa 4, Mastercard
          51-55 / 2221-2720, Amex 34/37, ...) or a card word just before
          ("card", "visa", "MC", "exp", ...); 12 contiguous digits only
          with a Maestro prefix. Luhn alone passes 1 in 10 random numbers
          (millisecond timestamps, order numbers).
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
into the Python string (code points). With ``presidio=True`` and `presidio-analyzer
<https://microsoft.github.io/presidio/>`_ plus a spaCy model installed (the optional extra
``llm_mia[presidio]``), person names and locations are added as types ``person`` and
``location``; :func:`pii_detectors` says which detectors run here. Presidio failing to start in
any way (an exception, or ``SystemExit`` from spaCy's model download offline) leaves the patterns
alone, with the reason in ``pii_detectors()["presidio_note"]``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import idna
import phonenumbers
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher

from llm_mia.core.errors import LlmMiaError

__all__ = ["CARD_IIN", "DEFAULT_REGIONS", "PII_TYPES", "PRESIDIO_TYPES", "PiiHit", "find_pii", "iban_valid",
           "luhn_valid", "parse_regions", "pii_detectors", "pii_values"]

PII_TYPES: tuple[str, ...] = ("email", "iban", "card", "ssn", "phone", "ipv6", "ipv4")
#: Types added by Presidio (``find_pii(..., presidio=True)``) when it is installed: its entity -> our type.
PRESIDIO_TYPES: dict[str, str] = {"PERSON": "person", "LOCATION": "location"}
_PRIORITY = {t: i for i, t in enumerate((*PII_TYPES, *PRESIDIO_TYPES.values()))}
#: Phone regions tried by default (ISO 3166 alpha-2), in order of preference for ambiguous numbers.
DEFAULT_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "BR")


def parse_regions(regions: str | Iterable[str] | None) -> tuple[str, ...]:
    """Phone regions as a tuple of upper-case ISO 3166 alpha-2 codes, duplicates dropped.

    Accepts a comma-separated string (``"US,GB"``), an iterable of codes, or None
    (:data:`DEFAULT_REGIONS`). A locale (``"en_GB"``, ``"pt-BR"``) stands for its region.

    Raises:
        LlmMiaError: an empty list, or a code ``phonenumbers`` does not know.
    """
    if regions is None:
        return DEFAULT_REGIONS
    items = regions.split(",") if isinstance(regions, str) else list(regions)
    out: list[str] = []
    for item in items:
        code = re.split(r"[_-]", str(item).strip())[-1].upper()
        if not code:
            continue
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise LlmMiaError(f"unknown phone region '{str(item).strip()}' (use ISO 3166 codes such as US, GB, DE)")
        if code not in out:
            out.append(code)
    if not out:
        raise LlmMiaError("no phone region given (use ISO 3166 codes such as US,GB,DE)")
    return tuple(out)


@dataclass(frozen=True)
class PiiHit:
    """One detected value.

    Attributes:
        type: one of :data:`PII_TYPES` (or a Presidio type, see :data:`PRESIDIO_TYPES`).
        value: the matched text, exactly ``text[start:end]`` of the original text.
        start: offset of the first character (code points, 0-based).
        end: offset just past the last character.
        normalized: canonical form for comparing values across texts: e-mail lower-cased with
            its domain in Unicode (IDNA); digits only for ssn and card; the compact IBAN; E.164
            digits for phone (``"12025550143"``), followed by ``x`` and the extension digits when
            there is an extension (``"12025550143x123"``).
        region: phone only: the region whose numbering plan read the number (for one written
            with a country code, the country's main region); None for the other types.
    """

    type: str
    value: str
    start: int
    end: int
    normalized: str
    region: str | None = None


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
# Local part and domain labels: ASCII letters/digits and Latin letters with diacritics (so
# "Äbc.x@..." and IDN domains such as "bücher.de" are taken whole, while CJK text glued to an address
# does not become part of it); the local part also "._%+-". Punycode labels ("xn--...") are ASCII.
_L = "A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_LETTERS = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"
_EMAIL = re.compile(
    rf"[{_L}](?<![{_L}._%+-][{_L}])(?:[{_L}._%+-]{{0,62}}[{_L}_%+-])?"
    rf"@(?:[{_L}](?:[{_L}-]{{0,61}}[{_L}])?\.)+(?:[{_LETTERS}]{{2,24}}|xn--[A-Za-z0-9-]{{1,59}})"
    rf"(?![{_L}-])"
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


#: Issuer identification number ranges (ISO/IEC 7812-1; the networks' published BIN ranges): first
#: digits from lo to hi (as strings of one length), and the card lengths the network issues there.
#: JCB holds 3528-3589; all of 35 is taken because Faker (which writes the planted cards) uses it.
CARD_IIN: tuple[tuple[str, str, frozenset[int], str], ...] = tuple(
    (lo, hi, frozenset(lengths), brand) for lo, hi, lengths, brand in (
        ("4", "4", (13, 16, 19), "Visa"),
        ("51", "55", (16,), "Mastercard"), ("2221", "2720", (16,), "Mastercard"),
        ("34", "34", (15,), "American Express"), ("37", "37", (15,), "American Express"),
        ("300", "305", (14, 15, 16, 17, 18, 19), "Diners Club"), ("3095", "3095", (14, 15, 16, 17, 18, 19), "Diners Club"),
        ("36", "36", (14, 15, 16, 17, 18, 19), "Diners Club"), ("38", "39", (14, 15, 16, 17, 18, 19), "Diners Club"),
        ("6011", "6011", (16, 17, 18, 19), "Discover"), ("644", "649", (16, 17, 18, 19), "Discover"),
        ("65", "65", (16, 17, 18, 19), "Discover / RuPay"), ("622126", "622925", (16, 17, 18, 19), "Discover"),
        ("35", "35", (16, 17, 18, 19), "JCB"), ("2131", "2131", (15,), "JCB"), ("1800", "1800", (15,), "JCB"),
        ("62", "62", (16, 17, 18, 19), "UnionPay"), ("81", "81", (16, 17, 18, 19), "UnionPay"),
        ("2200", "2204", (16, 17, 18, 19), "Mir"), ("1", "1", (15,), "UATP"),
        ("60", "60", (16,), "RuPay"), ("508", "508", (16,), "RuPay"), ("9792", "9792", (16,), "Troy"),
        ("506099", "506198", (16, 18, 19), "Verve"), ("650002", "650027", (16, 18, 19), "Verve"),
        ("5019", "5019", (16,), "Dankort"), ("636", "636", (16, 17, 18, 19), "InterPayment"),
        ("5018", "5018", range(12, 20), "Maestro"), ("5020", "5020", range(12, 20), "Maestro"),
        ("5038", "5038", range(12, 20), "Maestro"), ("5893", "5893", range(12, 20), "Maestro"),
        ("56", "58", range(12, 20), "Maestro"), ("6304", "6304", range(12, 20), "Maestro"),
        ("6759", "6759", range(12, 20), "Maestro"), ("6761", "6763", range(12, 20), "Maestro"),
        ("0604", "0604", range(12, 20), "Maestro"), ("6390", "6390", range(12, 20), "Maestro"),
    ))
# A word that says the number is a card, within a few words before it.
_CARD_CONTEXT = re.compile(
    r"\b(?:cards?|credit|debit|visa|master\s?card|mc|amex|american\s+express|discover|jcb|diners|maestro|"
    r"unionpay|cc|ccn|pan|cvv|cvc|exp(?:iry|ires)?|kreditkarte|karte|carte|tarjeta|cart[aã]o)\b[^0-9]{0,24}$",
    re.IGNORECASE)


def _card_brand(digits: str) -> str | None:
    """The network whose issuer range (:data:`CARD_IIN`) holds ``digits`` at its length, else None."""
    n = len(digits)
    for lo, hi, lengths, brand in CARD_IIN:
        if n in lengths and lo <= digits[:len(lo)] <= hi:
            return brand
    return None


def _card_layout_ok(groups: list[str]) -> bool:
    if len(groups) == 1:
        g = groups[0]
        return 13 <= len(g) <= 19 or (len(g) == 12 and _card_brand(g) == "Maestro")
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
                digits = "".join(parts)
                if not (_card_layout_ok(parts) and luhn_valid(digits)):
                    continue
                s, e = groups[i][0], groups[j - 1][1]
                if _card_brand(digits) or _CARD_CONTEXT.search(text, max(0, s - 40), s):
                    hits.append(PiiHit("card", text[s:e], s, e, digits))
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


@functools.lru_cache(maxsize=4096)
def _email_canonical(address: str) -> str:
    """``local@domain`` -> lower-cased local part, ``@``, the domain in Unicode (IDNA 2008 / UTS 46
    mapping), so ``Müller@BÜCHER.de`` and ``müller@xn--bcher-kva.de`` are one value."""
    local, _, domain = address.rpartition("@")
    if domain.isascii() and "xn--" not in domain.lower():
        return local.lower() + "@" + domain.lower()  # what UTS 46 does to an ASCII domain
    try:
        domain = idna.decode(idna.encode(domain, uts46=True))
    except UnicodeError:  # not a valid IDN (e.g. "--" in a label: idna.IDNAError): compare it as written
        domain = domain.lower()
    return local.lower() + "@" + domain


def _email_hits(text: str) -> list[PiiHit]:
    return [PiiHit("email", m.group(), m.start(), m.end(), _email_canonical(m.group())) for m in _EMAIL.finditer(text)]


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
# (The look-ahead: the first two colons come within a group's 4 hex digits, so words that merely
# start with a-f fail at once; an address whose first group is longer is not valid anyway.)
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:]*(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![\w:]|\.[0-9])")


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


def _in_digit_run(text: str, start: int, end: int) -> bool:
    """The span continues a run of digit groups: "1234 0342 3667 1276" holds no phone number."""
    before = start >= 2 and text[start - 1] in " -." and text[start - 2].isdigit()
    after = text[end:end + 1] in (" ", "-", ".") and text[end + 1:end + 2].isdigit()
    return before or after


def _nanp_shaped(number: phonenumbers.PhoneNumber) -> bool:
    """+1 number of 10 national digits shaped NXX-NXX-XXXX (N = 2-9), as Faker en_US writes them."""
    nat = str(number.national_number)
    return number.country_code == 1 and len(nat) == 10 and nat[0] in "23456789" and nat[3] in "23456789"


# A stretch of digits and phone punctuation; the matcher only looks at windows around these.
# The look-ahead requires 7 digits (no phone number has fewer).
_PHONE_CANDIDATE = re.compile(r"\d(?=(?:[\s().\-/]*\d){6})[\d\s().\-/]*\d")
_CONTEXT_BEFORE, _CONTEXT_AFTER = 8, 16  # room for "+1 (", "001-" and " ext. 12345"


def _phone_windows(text: str, claimed: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Merged [start, end) windows around digit stretches holding >= 7 digits, each with its
    stretches. A stretch inside a ``claimed`` span (a card or SSN hit, which wins over any phone
    reading of the same digits) is left out."""
    windows: list[tuple[int, int, list[tuple[int, int]]]] = []
    for m in _PHONE_CANDIDATE.finditer(text):
        s, e = m.span()
        if (s == 0 or text[s - 1] not in "+(") and any(cs <= s and e <= ce for cs, ce in claimed):
            continue
        a, b = max(0, s - _CONTEXT_BEFORE), min(len(text), e + _CONTEXT_AFTER)
        if windows and a <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(b, windows[-1][1]), windows[-1][2] + [(s, e)])
        else:
            windows.append((a, b, [(s, e)]))
    return windows


def _valid(number: phonenumbers.PhoneNumber, region: str) -> bool:
    """phonenumbers' VALID for the number read in ``region`` (any region of its country code)."""
    if phonenumbers.is_valid_number_for_region(number, region):
        return True
    return len(phonenumbers.region_codes_for_country_code(number.country_code)) > 1 and phonenumbers.is_valid_number(number)


@functools.cache
def _trunk_prefix(region: str) -> str:
    """The region's national (trunk) prefix, "0" for GB/DE/FR/IN/BR, "1" for the US; "" if none."""
    md = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return (md.national_prefix or "") if md is not None else ""


_DIGITS = re.compile(r"\d+")


def _with_trunk_prefix(raw: str, number: phonenumbers.PhoneNumber, region: str) -> bool:
    """``raw`` (no country code) starts with ``region``'s trunk prefix and has at most 12 digits
    before any extension (a longer run is an id more often than a national number)."""
    trunk = _trunk_prefix(region)
    digits = "".join(_DIGITS.findall(raw))
    if number.extension and digits.endswith(number.extension):
        digits = digits[:-len(number.extension)]
    return bool(trunk) and digits.startswith(trunk) and len(digits) <= 12


def _national_groups(number: phonenumbers.PhoneNumber) -> list[str]:
    """Digit groups of the number's national format, extension left out ("020 7946 0958" -> 3)."""
    bare = phonenumbers.PhoneNumber(country_code=number.country_code, national_number=number.national_number,
                                    italian_leading_zero=number.italian_leading_zero,
                                    number_of_leading_zeros=number.number_of_leading_zeros)
    return _DIGITS.findall(phonenumbers.format_number(bare, PhoneNumberFormat.NATIONAL))


def _national_reading(raw: str, number: phonenumbers.PhoneNumber, region: str, ri: int) -> tuple | None:
    """How well a number written without a country code reads in ``region`` (the ``ri``-th region):
    a sort key (lower is better), or None when this region does not take it.

    Grouped as the region's national format groups it ("020 7946 0958" in GB, not DE's "02079
    460958"): key (0, ri). Otherwise the first region takes any POSSIBLE number (an unformatted
    digit run only when VALID or NANP-shaped); a later region only a VALID number written with its
    trunk prefix, of at most 12 digits (a longer run is an id more often than a national number),
    unformatted or with the area code as its first group ("0221 123 456 78" in DE, not the door
    code "0217-7403"), and an invalid but well-grouped one only with its trunk prefix (GB's drama
    range "07700 900123", not an 8-digit local "4825-4212" in BR).
    """
    written = _DIGITS.findall(raw)
    if ri == 0:
        want = _national_groups(number)
        if len(want) > 1 and written[:len(want)] == want:
            return (0, ri)
        valid = _valid(number, region)
        return None if raw.isdigit() and not (valid or _nanp_shaped(number)) else (1, not valid, ri)
    trunk = _with_trunk_prefix(raw, number, region)
    valid = None
    if not trunk:  # only a valid number grouped as written
        valid = _valid(number, region)
        if not valid:
            return None
    want = _national_groups(number)
    if len(want) > 1 and written[:len(want)] == want:
        return (0, ri)
    if trunk and (raw.isdigit() or written[0] == want[0]) and (valid if valid is not None else _valid(number, region)):
        return (1, False, ri)
    return None


@functools.cache
def _always_trunk(region: str) -> bool:
    """Every number type's example number in ``region`` is written nationally with its trunk
    prefix (GB, FR: "0..."; not DE, whose UAN example "16412345" has none, nor the US)."""
    trunk = _trunk_prefix(region)
    if not trunk or trunk == "1":
        return False
    for t in range(phonenumbers.PhoneNumberType.VOICEMAIL + 1):
        n = phonenumbers.example_number_for_type(region, t)
        if n is not None and not phonenumbers.format_number(n, PhoneNumberFormat.NATIONAL).lstrip("(").startswith(trunk):
            return False
    return True


def _phone_hits(text: str, regions: Sequence[str], claimed: Sequence[tuple[int, int]] = ()) -> list[PiiHit]:
    # PhoneNumberMatcher parses every digit group it meets (~10 us each), so it only scans small
    # windows around stretches that can hold a phone number; its own boundary checks look at the
    # neighbouring characters only, which the windows keep. Each region's matcher runs on each
    # window (unless the first region's reading already covers every stretch as written); a span
    # read by several regions takes the first region whose national format groups the digits as
    # written ("07700 900123": GB, although phonenumbers holds that drama range invalid and DE's
    # plan also takes it), else a valid reading, else the first region.
    best: dict[tuple[int, int], tuple[tuple, PiiHit]] = {}
    for a, b, stretches in _phone_windows(text, claimed):
        window = text[a:b]
        # Rewrite "001" (3 chars) as " +1" (3 chars) so offsets are unchanged; remember where.
        idd = {m.start() for m in _IDD_001.finditer(window)}
        scan = _IDD_001.sub(" +1", window) if idd else window
        settled: list[tuple[int, int]] = []  # spans read as written (or international) by some region
        for ri, region in enumerate(regions):
            spans = [(a, b)]
            if ri:  # later regions: only the stretches still open, each in its own window
                open_ = [(s, e) for s, e in stretches if not any(x <= s and e <= y for x, y in settled)]
                if _always_trunk(region):  # (GB, FR: a national number there starts with its "0")
                    open_ = [(s, e) for s, e in open_ if text.startswith(_trunk_prefix(region), s)]
                if not open_:
                    continue
                spans = [(a, b)] if len(open_) == len(stretches) else [
                    (max(a, s - _CONTEXT_BEFORE), min(b, e + _CONTEXT_AFTER)) for s, e in open_]
            for m, off in ((m, w0) for w0, w1 in spans
                           for m in PhoneNumberMatcher(scan[w0 - a:w1 - a], region, leniency=Leniency.POSSIBLE)):
                start, end = m.start + off - a, m.end + off - a  # (in scan)
                intl = scan[start] == "+"
                if start - 1 in idd and intl:
                    start -= 1  # include the "001" of the original text
                start, end = start + a, end + a
                if ri and (start, end) in best and best[(start, end)][0][0] == 0:
                    continue  # an earlier region already reads it as written
                if _in_decimal(text, start, end) or (start and text[start - 1].isalnum()) or _in_digit_run(text, start, end):
                    continue  # part of a decimal number or a longer run of digit groups, or glued to a word
                raw, number = text[start:end], m.number
                if intl:
                    key = (0, ri)
                    where = phonenumbers.region_code_for_number(number) or phonenumbers.region_code_for_country_code(
                        number.country_code)
                    where = None if where == phonenumbers.UNKNOWN_REGION else where
                else:
                    key, where = _national_reading(raw, number, region, ri), region
                    if key is None:
                        continue
                if key[0] == 0:  # read as written: no later region reads this stretch better
                    settled.append((start, end))
                if (start, end) in best and best[(start, end)][0] <= key:
                    continue
                norm = phonenumbers.format_number(number, PhoneNumberFormat.E164).lstrip("+")
                if number.extension:
                    norm += "x" + number.extension
                best[(start, end)] = (key, PiiHit("phone", raw, start, end, norm, where))
    return [h for _, h in best.values()]


# ---------------------------------------------------------------------------- normalisation
# Look-alike separators NFKC keeps: Unicode hyphens and dashes, the minus sign -> "-".
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"})
_NEEDS_MAP = re.compile(r"[\u2010-\u2015\u2212]")
# A non-ASCII run and the character before it (a combining mark composes with its base).
_NON_ASCII_RUN = re.compile(r"[\x00-\x7f]?[^\x00-\x7f]+", re.DOTALL)


def _normalise(text: str) -> tuple[str, list[int] | None, list[int] | None]:
    """``(norm, starts, ends)``: ``text`` in NFKC with dashes as "-", and for each character of
    ``norm`` the [start, end) of the original characters it came from (None, None: unchanged).

    NFKC is applied per base character with its combining marks, which is NFKC of the whole text
    for anything a PII pattern can match, and keeps the map exact."""
    if text.isascii() or (unicodedata.is_normalized("NFKC", text) and not _NEEDS_MAP.search(text)):
        return text, None, None
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for m in _NON_ASCII_RUN.finditer(text):
        parts.append(text[pos:m.start()])
        starts.extend(range(pos, m.start()))
        ends.extend(range(pos + 1, m.start() + 1))
        i, j = m.start(), m.end()
        while i < j:  # one base character and the combining marks after it
            k = i + 1
            while k < j and unicodedata.combining(text[k]):
                k += 1
            piece = unicodedata.normalize("NFKC", text[i:k]).translate(_DASHES)
            parts.append(piece)
            starts.extend([i] * len(piece))
            ends.extend([k] * len(piece))
            i = k
        pos = j
    parts.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return "".join(parts), starts, ends


# ---------------------------------------------------------------------------- public API
@functools.lru_cache(maxsize=1)
def _presidio_engine():
    """(engine, None) when Presidio and a spaCy model load, else (None, the reason)."""
    try:
        from presidio_analyzer import AnalyzerEngine  # optional extra
    except ImportError:
        return None, "presidio-analyzer is not installed (pip install 'llm_mia[presidio]')"
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a broken install, SystemExit from an import-time download
        return None, _presidio_failed(e)
    try:
        return AnalyzerEngine(supported_languages=["en"]), None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # no spaCy model (spaCy's download offline raises SystemExit): patterns only
        return None, _presidio_failed(e)


def _presidio_failed(e: BaseException) -> str:
    return (f"presidio-analyzer could not start ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
            "patterns only")


def pii_detectors(*, presidio: bool = True, regions: str | Iterable[str] | None = None) -> dict:
    """Which detectors :func:`find_pii` runs here with these settings.

    Returns ``{"patterns": [the PII_TYPES], "phone_regions": [the regions, in order],
    "normalization": "NFKC + Unicode dashes", "presidio": [its types] or [], "presidio_note": why
    not, or None}``. With ``presidio=False`` Presidio is not even loaded.

    Raises:
        LlmMiaError: an unknown region (see :func:`parse_regions`).
    """
    engine, why = _presidio_engine() if presidio else (None, "not requested")
    return {"patterns": list(PII_TYPES), "phone_regions": list(parse_regions(regions)),
            "normalization": "NFKC, Unicode dashes as '-'",
            "presidio": list(PRESIDIO_TYPES.values()) if engine else [], "presidio_note": why}


def _presidio_hits(text: str) -> list[PiiHit]:
    engine, _ = _presidio_engine()
    if engine is None:
        return []
    out = []
    for r in engine.analyze(text=text, language="en", entities=list(PRESIDIO_TYPES)):
        value = text[r.start:r.end]
        out.append(PiiHit(PRESIDIO_TYPES[r.entity_type], value, r.start, r.end, " ".join(value.split())))
    return out


def find_pii(text: str, *, types: Iterable[str] | None = None, regions: str | Iterable[str] | None = None,
             presidio: bool = False) -> list[PiiHit]:
    """Detect e-mail addresses, IBANs, payment-card numbers, US SSNs, phone numbers and public IP
    addresses in ``text`` (and person names / locations with ``presidio=True`` when installed).

    The detectors read ``text`` in NFKC with Unicode dashes as "-" (so ``(209)\u00a0555\u2013
    0142`` and ``ada\uff20example.org`` are found); offsets and ``value`` refer to ``text`` itself.

    Args:
        text: any string (unicode fine; offsets are code-point indices).
        types: subset of :data:`PII_TYPES` to look for; default all.
        regions: phone regions for numbers written without a country code (ISO 3166 alpha-2, a
            list or comma-separated; see :func:`parse_regions`); default :data:`DEFAULT_REGIONS`.
        presidio: also run Presidio's name and location recognizers when it can be loaded (see
            :func:`pii_detectors`); patterns only otherwise.

    Returns:
        Non-overlapping :class:`PiiHit` list sorted by ``start``. Overlaps between detectors are
        resolved by keeping the longer span, then the type earlier in :data:`PII_TYPES`.

    Raises:
        ValueError: on an unknown type name. LlmMiaError: on an unknown region.
    """
    wanted = set(PII_TYPES if types is None else types)
    unknown = wanted - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII type(s) {sorted(unknown)}; known: {', '.join(PII_TYPES)}")
    regions = _regions(regions)
    norm, starts, ends = _normalise(text)
    hits: list[PiiHit] = []
    if "email" in wanted and "@" in norm:
        hits += _email_hits(norm)
    if _ANY_DIGIT.search(norm) is not None:
        if "card" in wanted:
            hits += _card_hits(norm)
        if "ssn" in wanted:
            hits += _ssn_hits(norm)
        if "phone" in wanted:  # (digits a card or SSN hit holds are not read again as a phone number)
            hits += _phone_hits(norm, regions, [(h.start, h.end) for h in hits if h.type in ("card", "ssn")])
        if "iban" in wanted:
            hits += _iban_hits(norm)
        if ("ipv4" in wanted and "." in norm) or ("ipv6" in wanted and ":" in norm):
            hits += _ip_hits(norm, "ipv4" in wanted, "ipv6" in wanted)
    if presidio:
        hits += _presidio_hits(norm)
    # Greedy: longest first, then type priority, then position; keep what does not overlap.
    hits.sort(key=lambda h: (-(h.end - h.start), _PRIORITY[h.type], h.start))
    chosen: list[PiiHit] = []
    for h in hits:
        if all(h.end <= c.start or c.end <= h.start for c in chosen):
            chosen.append(h)
    chosen.sort(key=lambda h: h.start)
    if starts is None:
        return chosen
    return [PiiHit(h.type, text[starts[h.start]:ends[h.end - 1]], starts[h.start], ends[h.end - 1], h.normalized,
                   h.region) for h in chosen]


@functools.lru_cache(maxsize=64)
def _regions_cached(regions: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return parse_regions(regions)


def _regions(regions: str | Iterable[str] | None) -> tuple[str, ...]:
    return _regions_cached(regions if regions is None or isinstance(regions, str) else tuple(regions))


def pii_values(text: str, *, regions: str | Iterable[str] | None = None) -> set[tuple[str, str]]:
    """The set of ``(type, normalized value)`` pairs of every PII hit in ``text``.

    Two texts "carry the same personal data" when these sets are equal; used by
    :func:`llm_mia.data.dedup.dedup` to never merge samples that differ in a value.
    """
    return {(h.type, h.normalized) for h in find_pii(text, regions=regions)}
