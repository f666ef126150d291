"""Secret spaces, planted secrets and the ``secrets.json`` record.

A *format* is a string such as ``"{d3}-{d2}-{d4}"``: ``{dN}`` stands for N random decimal digits,
``{hN}`` for N lowercase hex characters, ``{aN}`` for N lowercase ASCII letters, and every other
character is literal. The set of strings a format can produce is its *space* (the randomness
space R of Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing Unintended Memorization
in Neural Networks", USENIX Security, where a canary is a format s[r] filled with r drawn uniformly
from R). Exposure ranks a planted secret among candidates drawn from that same space, so every
sampler here is exactly uniform over the space.

Members of a space are ordered lexicographically (digits < hex letters, ``a`` < ``z``); because
every member has the same length and the literals sit at fixed positions, this is also the
mixed-radix order of :func:`secret_at`.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import string
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import read_json, write_json

ALPHABETS = {"d": string.digits, "h": string.digits + "abcdef", "a": string.ascii_lowercase}
KINDS = ("canary", "pii")
MAX_COUNT = 10**9  # insertions of one secret: more is a typo, and fails late in integer-typed stages
_SLOT = re.compile(r"\{([dha])([1-9][0-9]*)\}")


class Slot(NamedTuple):
    """One random field of a format: ``kind`` in ``"d"``, ``"h"``, ``"a"``; ``length`` >= 1 chars."""

    kind: str
    length: int

    @property
    def alphabet(self) -> str:
        return ALPHABETS[self.kind]


Part = str | Slot


@lru_cache(maxsize=256)
def _parse(fmt: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    pos = 0
    for m in _SLOT.finditer(fmt):
        parts.append(fmt[pos:m.start()])
        parts.append(Slot(m.group(1), int(m.group(2))))
        pos = m.end()
    parts.append(fmt[pos:])
    for p in parts:
        if isinstance(p, str) and ("{" in p or "}" in p):
            bad = re.search(r"\{[^{}]*\}?|\}", p).group(0)
            raise LlmMiaError(f"malformed secret format {fmt!r}: {bad!r} is not a field; "
                              "use {dN} (digits), {hN} (hex) or {aN} (letters) with N >= 1")
    return tuple(p for p in parts if p != "")


def parse_format(fmt: str) -> list[Part]:
    """Split a secret format into literal strings and :class:`Slot` fields, in order.

    ``"{d3}-{d2}"`` -> ``[Slot("d", 3), "-", Slot("d", 2)]``; a format without fields is one literal
    (its space has one member). Raises :class:`LlmMiaError` for any ``{`` or ``}`` that is not a
    well-formed field (``"{x3}"``, ``"{d0}"``, ``"{d}"``, ``"{d3"``) or a non-string format.
    Source: the canary format s[r] of Carlini et al. 2019 (The Secret Sharer).
    """
    if not isinstance(fmt, str):
        raise LlmMiaError(f"secret format must be a string, got {type(fmt).__name__}")
    return list(_parse(fmt))


def _slots(fmt: str) -> list[Slot]:
    return [p for p in parse_format(fmt) if isinstance(p, Slot)]


def space_size(fmt: str) -> int:
    """Exact number of distinct strings the format can produce (|R|), as a Python int.

    ``"{d3}-{d2}-{d4}"`` -> 10**9, ``"{h2}"`` -> 256, ``"ab"`` -> 1. Raises :class:`LlmMiaError`
    for a malformed format. Source: |R| in the exposure definition of Carlini et al. 2019.
    """
    size = 1
    for s in _slots(fmt):
        size *= len(s.alphabet) ** s.length
    return size


def secret_at(fmt: str, index: int) -> str:
    """The ``index``-th member (0-based) of the format's space in lexicographic order.

    ``secret_at("{d2}", 7)`` -> ``"07"``. Raises :class:`LlmMiaError` if ``index`` is outside
    ``[0, space_size(fmt))`` or the format is malformed.
    """
    size = space_size(fmt)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise LlmMiaError(f"index {index!r} is outside the space of {fmt!r} (size {size})")
    chars: list[str] = []
    for part in reversed(parse_format(fmt)):  # least significant position last in the string
        if isinstance(part, str):
            chars.append(part[::-1])
            continue
        for _ in range(part.length):
            index, digit = divmod(index, len(part.alphabet))
            chars.append(part.alphabet[digit])
    return "".join(chars)[::-1]


def sample_secret(fmt: str, rng: random.Random) -> str:
    """One member of the format's space, drawn uniformly with ``rng`` (a ``random.Random``).

    Deterministic for a given ``rng`` state; consumes one ``rng.randrange`` call. Raises
    :class:`LlmMiaError` for a malformed format. Source: r drawn uniformly from R, Carlini et al. 2019.
    """
    return secret_at(fmt, rng.randrange(space_size(fmt)))


def sample_candidates(fmt: str, n: int, rng: random.Random) -> list[str]:
    """``n`` independent uniform draws from the space (with replacement), a list of length ``n``.

    Nothing is excluded, so a planted secret may itself be drawn: that is the reference
    distribution exposure assumes. Raises :class:`LlmMiaError` if ``n`` < 0 or the format is
    malformed. Source: the sampled-candidate exposure estimate of Carlini et al. 2019.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise LlmMiaError(f"number of candidates must be a non-negative int, got {n!r}")
    size = space_size(fmt)
    return [secret_at(fmt, rng.randrange(size)) for _ in range(n)]


def enumerate_space(fmt: str, limit: int) -> list[str]:
    """Every member of the space, in lexicographic order (a list of length ``space_size(fmt)``).

    Raises :class:`LlmMiaError` if ``space_size(fmt) > limit`` (to avoid an accidental 10**9-item
    list) or the format is malformed. Source: exact rank over all of R, Carlini et al. 2019.
    """
    size = space_size(fmt)
    if size > limit:
        raise LlmMiaError(f"the space of {fmt!r} has {size} members, more than the limit {limit}")
    choices = []
    for part in parse_format(fmt):
        choices.extend([part] if isinstance(part, str) else [part.alphabet] * part.length)
    return ["".join(t) for t in itertools.product(*choices)]


def index_of(fmt: str, value: str) -> int:
    """Inverse of :func:`secret_at`: the 0-based lexicographic index of ``value`` in the format's space.

    Raises :class:`LlmMiaError` if ``value`` is not a member of the space or the format is malformed.
    """
    if not matches_format(value, fmt):
        raise LlmMiaError(f"{value!r} is not a member of the space of {fmt!r}")
    index, pos = 0, 0
    for part in parse_format(fmt):
        if isinstance(part, str):
            pos += len(part)
            continue
        for ch in value[pos:pos + part.length]:
            index = index * len(part.alphabet) + part.alphabet.index(ch)
        pos += part.length
    return index


def random_positions(fmt: str) -> list[tuple[int, int]]:
    """``(character offset, alphabet size)`` of every random character of a member of the format's
    space, in order: ``"{d2}-{h1}"`` -> ``[(0, 10), (1, 10), (3, 16)]``. Raises :class:`LlmMiaError`
    for a malformed format."""
    out, pos = [], 0
    for part in parse_format(fmt):
        if isinstance(part, str):
            pos += len(part)
            continue
        out += [(pos + k, len(part.alphabet)) for k in range(part.length)]
        pos += part.length
    return out


def partial_recovery(fmt: str, secret: str, guess: str) -> tuple[int, float]:
    """How much of ``secret``'s random part ``guess`` reproduces in place, and what is left to guess.

    ``guess`` is aligned with ``secret`` character by character (its i-th character is compared with
    the secret's i-th; a shorter guess recovers nothing past its end). Returns ``(recovered_chars,
    remaining_guess_bits)``: the random characters of the secret that ``guess`` holds at their
    position, and log2 of the number of members of the space that agree with the secret on those
    characters (the product of the alphabet sizes of the random characters not recovered; 0.0 when
    all are recovered, log2 |R| when none is). Example: format ``"{d2}-{d2}-{d2}"``, secret
    ``"73-19-55"``, guess ``"73-19-19"`` -> ``(4, log2 100 = 6.64)``. Bits. The attacker's work left
    after a partial extraction, in the randomness-space terms of Carlini et al. 2019 (sec. 3).

    Raises:
        LlmMiaError: ``secret`` is not a member of the format's space, or a malformed format.
    """
    if not matches_format(secret, fmt):
        raise LlmMiaError(f"{secret!r} is not a member of the space of {fmt!r}")
    recovered, bits = 0, 0.0
    for pos, size in random_positions(fmt):
        if pos < len(guess) and guess[pos] == secret[pos]:
            recovered += 1
        else:
            bits += math.log2(size)
    return recovered, bits


def iter_space(fmt: str, *, chunk: int = 4096) -> Iterator[list[str]]:
    """Every member of the space in lexicographic order (the order of :func:`secret_at`), streamed
    as lists of at most ``chunk`` strings, so a space of 10**6 is never held whole.

    Raises :class:`LlmMiaError` for a malformed format or ``chunk`` < 1. Source: exact rank over
    all of R, Carlini et al. 2019, sec. 4.1.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise LlmMiaError(f"chunk must be a positive int, got {chunk!r}")
    choices = []
    for part in parse_format(fmt):
        choices.extend([part] if isinstance(part, str) else [part.alphabet] * part.length)
    it = map("".join, itertools.product(*choices))
    while True:
        block = list(itertools.islice(it, chunk))
        if not block:
            return
        yield block


@lru_cache(maxsize=256)
def _regex(fmt: str) -> re.Pattern:
    pieces = [re.escape(p) if isinstance(p, str) else f"[{re.escape(p.alphabet)}]{{{p.length}}}"
              for p in parse_format(fmt)]
    return re.compile("".join(pieces))


def matches_format(value: str, fmt: str) -> bool:
    """True iff ``value`` is a member of the format's space (full match, ASCII only).

    Raises :class:`LlmMiaError` for a malformed format; a non-string value is simply False.
    """
    return isinstance(value, str) and _regex(fmt).fullmatch(value) is not None


def luhn_valid(number: str) -> bool:
    """True iff ``number`` (ASCII digits only, length >= 2) passes the Luhn mod-10 checksum.

    Used for payment card numbers (ISO/IEC 7812-1, Annex B). Non-digit input is False, no error.
    """
    if not isinstance(number, str) or len(number) < 2 or not (number.isascii() and number.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass
class Secret:
    """One planted (or control) secret: one record of ``secrets.json``.

    ``text`` is the whole sentence inserted into the training documents and always equals
    ``prefix + secret + suffix``; ``secret`` is the random part, a member of ``format``'s space of
    ``space_size`` strings. ``count`` is how many times ``text`` was inserted (0 for controls,
    which are never inserted). ``fields`` holds the Faker values of a PII record (name, email,
    phone, address, ssn, card) and is empty for canaries. ``id`` is unique within a file, e.g.
    ``"canary-r16-0"``, ``"pii-r8-1"``, ``"canary-control-0"``.
    """

    id: str
    kind: str
    text: str
    prefix: str
    secret: str
    suffix: str
    format: str
    space_size: int
    count: int
    fields: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every invariant; raise :class:`LlmMiaError` naming the first one broken."""
        for name in ("id", "kind", "text", "prefix", "secret", "suffix", "format"):
            if not isinstance(getattr(self, name), str):
                raise LlmMiaError(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        if not self.id:
            raise LlmMiaError("id must not be empty")
        if self.kind not in KINDS:
            raise LlmMiaError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("space_size", "count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise LlmMiaError(f"{name} must be a non-negative int, got {v!r}")
        if self.count > MAX_COUNT:
            raise LlmMiaError(f"count of {self.id!r} is {self.count}, more than {MAX_COUNT:,} insertions; "
                              "count is how many times the text was inserted into the training data")
        if not self.prefix.strip():
            raise LlmMiaError(f"prefix of {self.id!r} is empty: exposure and extraction condition on the text "
                              "before the secret, so give the words that precede it in training")
        if not isinstance(self.fields, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.fields.items()):
            raise LlmMiaError("fields must be an object of string values")
        if self.text != self.prefix + self.secret + self.suffix:
            raise LlmMiaError(f"text of {self.id!r} is not prefix + secret + suffix")
        if not matches_format(self.secret, self.format):
            raise LlmMiaError(f"secret of {self.id!r} does not match its format {self.format!r}")
        if space_size(self.format) < 2:
            raise LlmMiaError(f"format of {self.id!r} is {self.format!r}, which has no random field ({{dN}}, {{hN}} "
                              "or {{aN}}): its space has one member, so rank and exposure are undefined")
        if self.space_size != space_size(self.format):
            raise LlmMiaError(f"space_size of {self.id!r} is {self.space_size}, "
                              f"but its format {self.format!r} has {space_size(self.format)}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (all ten keys; ``space_size`` stays an exact int)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Any, *, default_id: str | None = None) -> Secret:
        """Build and validate a Secret from a JSON record of the ten keys.

        ``id``, ``suffix`` and ``fields`` may be left out (a record written by hand with the keys the
        docs list): ``id`` becomes ``default_id`` (``"<kind>-<record index>"`` in
        :func:`load_secrets`), ``suffix`` what ``text`` holds after ``prefix + secret`` (empty when
        it ends there), ``fields`` ``{}``.
        Raises :class:`LlmMiaError` for a non-object, a missing or unknown key, or a broken invariant.
        """
        if not isinstance(record, dict):
            raise LlmMiaError(f"expected an object, got {type(record).__name__}")
        record = dict(record)
        if "id" not in record and default_id is not None:
            record["id"] = default_id
        if "suffix" not in record and all(isinstance(record.get(k), str) for k in ("text", "prefix", "secret")):
            head = record["prefix"] + record["secret"]
            record["suffix"] = record["text"][len(head):] if record["text"].startswith(head) else ""
        record.setdefault("fields", {})
        keys = [f for f in cls.__dataclass_fields__]
        missing = [k for k in keys if k not in record]
        unknown = sorted(set(record) - set(keys))
        if missing:
            raise LlmMiaError(f"missing key(s): {', '.join(missing)}")
        if unknown:
            raise LlmMiaError(f"unknown key(s): {', '.join(unknown)}")
        return cls(**{k: record[k] for k in keys})


def load_secrets(path: str | os.PathLike) -> list[Secret]:
    """Read and strictly validate a ``secrets.json`` file (a JSON list of :class:`Secret` records).

    Returns the secrets in file order. Raises :class:`LlmMiaError` with a one-line message naming
    the file (and the record index where one is at fault) for: a missing file, corrupt JSON, a
    top level that is not a list, a record with missing/unknown keys or wrong types, ``text`` not
    equal to ``prefix + secret + suffix``, a secret outside its format's space, a format without a
    random field, an empty prefix, a wrong ``space_size``, a ``count`` above 10^9, or a duplicate
    id. ``id``, ``suffix`` and ``fields`` may be omitted (see :meth:`Secret.from_dict`).
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise LlmMiaError(f"{path}: expected a JSON list of secrets, got {type(data).__name__}")
    secrets: list[Secret] = []
    seen: set[str] = set()
    for i, record in enumerate(data):
        try:
            kind = record.get("kind") if isinstance(record, dict) else None
            s = Secret.from_dict(record, default_id=f"{kind}-{i}" if isinstance(kind, str) else None)
        except LlmMiaError as e:
            raise LlmMiaError(f"{path}: record {i}: {e}") from None
        if s.id in seen:
            raise LlmMiaError(f"{path}: record {i}: duplicate id {s.id!r}")
        seen.add(s.id)
        secrets.append(s)
    return secrets


def save_secrets(path: str | os.PathLike, secrets: list[Secret]) -> None:
    """Write secrets as a JSON list atomically (temp file + rename); each is validated first.

    Raises :class:`LlmMiaError` for an invalid secret or duplicate ids (nothing is written then).
    """
    ids = [s.id for s in secrets]
    if len(set(ids)) != len(ids):
        raise LlmMiaError(f"duplicate secret ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    for s in secrets:
        s.validate()
    write_json(path, [s.to_dict() for s in secrets])


def make_canary(id: str, template: dict, name: str, rng: random.Random, *, count: int) -> Secret:
    """A canary Secret from one template of ``prompts/canary_templates.json``.

    ``template`` has ``prefix_template`` (containing ``{name}``), ``format`` and ``suffix``; the
    prefix is the template with ``name`` filled in, the secret is drawn uniformly from the format's
    space with ``rng``. Raises :class:`LlmMiaError` for a malformed template.
    Source: canary insertion, Carlini et al. 2019; one prefix per secret (docs design.md).
    """
    check_template(template)
    prefix = template["prefix_template"].replace("{name}", name)
    fmt, suffix = template["format"], template["suffix"]
    secret = sample_secret(fmt, rng)
    return Secret(id=id, kind="canary", text=prefix + secret + suffix, prefix=prefix, secret=secret,
                  suffix=suffix, format=fmt, space_size=space_size(fmt), count=count)


SSN_FORMAT = "{d3}-{d2}-{d4}"


def make_pii(id: str, fake: Any, *, name: str, count: int) -> Secret:
    """A synthetic PII record Secret for the person ``name``, made with a seeded ``faker.Faker``.

    The text is one sentence, ``"Customer record: NAME, STREET, CITY, email EMAIL, phone PHONE,
    card CARD, SSN ddd-dd-dddd."``; ``secret`` is the SSN (format ``{d3}-{d2}-{d4}``), ``fields``
    holds name, email, phone, address, ssn and card (a Luhn-valid number). Raises
    :class:`LlmMiaError` if Faker produces a card that fails the Luhn check or an SSN outside the
    format (a Faker change); never retries silently.
    """
    fields = {
        "name": name,
        "email": re.sub(r"[^a-z.]", "", name.lower().replace(" ", ".")) + "@" + fake.safe_domain_name(),
        "phone": fake.phone_number().split("x")[0],
        "address": f"{fake.street_address()}, {fake.city()}".replace("\n", ", "),
        "ssn": fake.ssn(),
        "card": fake.credit_card_number(),
    }
    if not luhn_valid(fields["card"]):
        raise LlmMiaError(f"Faker produced a card number that fails the Luhn check: {fields['card']}")
    if not matches_format(fields["ssn"], SSN_FORMAT):
        raise LlmMiaError(f"Faker produced an SSN outside {SSN_FORMAT}: {fields['ssn']}")
    prefix = (f"Customer record: {name}, {fields['address']}, email {fields['email']}, "
              f"phone {fields['phone']}, card {fields['card']}, SSN ")
    return Secret(id=id, kind="pii", text=prefix + fields["ssn"] + ".", prefix=prefix,
                  secret=fields["ssn"], suffix=".", format=SSN_FORMAT,
                  space_size=space_size(SSN_FORMAT), count=count, fields=fields)


def check_template(template: Any) -> None:
    """Raise :class:`LlmMiaError` unless ``template`` is a valid canary template object.

    Valid: exactly the string keys ``prefix_template`` (containing ``{name}``), ``format`` (a
    well-formed format with at least one field) and ``suffix``.
    """
    keys = {"prefix_template", "format", "suffix"}
    if not isinstance(template, dict) or set(template) != keys:
        raise LlmMiaError(f"a canary template must be an object with keys {sorted(keys)}, got {template!r}")
    if not all(isinstance(template[k], str) for k in keys):
        raise LlmMiaError(f"canary template values must be strings: {template!r}")
    if "{name}" not in template["prefix_template"]:
        raise LlmMiaError(f"canary prefix_template must contain {{name}}: {template['prefix_template']!r}")
    if space_size(template["format"]) < 2:
        raise LlmMiaError(f"canary format {template['format']!r} has no random field")
