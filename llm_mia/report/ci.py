"""How a gate check's status becomes CI output: one table read by the SARIF and JUnit writers, so a
status cannot be reported one way in one file and another way in the other, and the text cleaning
that keeps what is written valid XML / SARIF."""

from __future__ import annotations

import math
import re

#: check status -> (JUnit element or None for a passing case, JUnit type, SARIF level or None for no result,
#: the word a SARIF message starts with). Inconclusive and not measured are skipped tests: nothing was shown
#: to pass, so no dashboard may count them as passed.
OUTCOMES: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    "passed": (None, None, None, None),
    "failed": ("failure", "LimitExceeded", "rule", None),
    "inconclusive": ("skipped", "Inconclusive", "warning", "INCONCLUSIVE"),
    "not measured": ("skipped", "NotMeasured", "note", "NOT MEASURED"),
    "error": ("error", "Unanswerable", "error", "ERROR"),
}

_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def outcome(status: str) -> tuple[str | None, str | None, str | None, str | None]:
    """The :data:`OUTCOMES` row of ``status``; an unknown status is reported as an error, never as a pass."""
    return OUTCOMES.get(status, OUTCOMES["error"])


def clean_text(value) -> str:
    """``str(value)`` with every character XML 1.0 cannot hold (control characters, lone surrogates)
    replaced by U+FFFD, so the text is valid in JUnit XML and SARIF (JSON read by XML-minded tools)."""
    return _XML_BAD.sub("\ufffd", str(value))


def interval_text(check: dict) -> str:
    """A check's one-sided confidence bounds (``check["interval"]``: (low, high), :class:`Check`) as
    ``"[low, high]"`` (3 significant digits; inf and NaN spelled out), or "" when the check has none (an
    observed count, a check not measured): the same text in SARIF, JUnit and the model card."""
    iv = check.get("interval")
    if not iv or len(iv) != 2:
        return ""

    def num(v) -> str:
        if v is None:
            return "NaN"
        v = float(v)
        return "inf" if math.isinf(v) and v > 0 else "-inf" if math.isinf(v) else "NaN" if math.isnan(v) else f"{v:.3g}"

    return f"[{num(iv[0])}, {num(iv[1])}]"
