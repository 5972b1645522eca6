"""PII detectors for the data gate and for outputs (EvalGate): emails, phone numbers, payment cards (Luhn
checked), national ids (US SSN, UK NINO) and IPv4 addresses.

Rule-based on purpose: the detector libraries that do better (Presidio and friends) need NLP models
fetched at run time, which a trainer pod cannot do. Patterns favour precision: a number is a card only if
it passes the Luhn check, an SSN only outside the never-issued ranges, a phone only with 10 to 15 digits.

Speed: each detector has an anchor, a short pattern that every one of its matches contains and that the
regex engine scans for quickly; a text without the anchor skips the detector's full pattern (most texts
have no run of six digits, and no `@`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])"  # not inside a longer number
    r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}"
    r"(?![ .-]?\d)"
)
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
NINO = re.compile(
    r"\b(?![DFIQUV])[A-CEGHJ-PR-TW-Z](?![DFIOQUV])[A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
)
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and luhn(digits) and len(set(digits)) > 1


def _phone(match: str) -> bool:
    return 10 <= len(re.sub(r"\D", "", match)) <= 15


DETECTORS: dict[str, tuple[re.Pattern[str], Callable[[str], bool] | None]] = {
    "email": (EMAIL, None),
    "credit_card": (CARD, _card),
    "national_id": (re.compile(f"{SSN.pattern}|{NINO.pattern}"), None),
    "phone": (PHONE, _phone),
    "ip_address": (IPV4, None),
}


# A substring every match of the detector contains (a necessary condition, never a test of its own).
ANCHORS: dict[str, re.Pattern[str]] = {
    "email": re.compile("@"),
    "credit_card": re.compile(r"\d(?:[ -]?\d){12}"),
    "national_id": re.compile(r"\d\d[ -]?\d\d[ -]?\d\d"),
    "phone": re.compile(r"\d{3}[\s.-]?\d{3}"),
    "ip_address": re.compile(r"\d\.\d"),
}
# contained in the card, national id and phone anchors: one scan rules out all three
SIX_DIGITS = re.compile(r"\d(?:[\s.-]?\d){5}")
NEED_SIX_DIGITS = frozenset({"credit_card", "national_id", "phone"})


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    text: str


def find(text: str, kinds: Collection[str]) -> list[Finding]:
    """Findings of `kinds` in `text`, earlier kinds first claiming a span (a card is not also a phone)."""
    found: list[Finding] = []
    six_digits: bool | None = None
    for kind, (pattern, check) in DETECTORS.items():
        if kind not in kinds:
            continue
        if kind in NEED_SIX_DIGITS:
            if six_digits is None:
                six_digits = SIX_DIGITS.search(text) is not None
            if not six_digits:
                continue
        if ANCHORS[kind].search(text) is None:
            continue
        for match in pattern.finditer(text):
            if check is not None and not check(match.group()):
                continue
            if any(f.start < match.end() and match.start() < f.end for f in found):
                continue
            found.append(Finding(kind, match.start(), match.end(), match.group()))
    return sorted(found, key=lambda f: f.start)


def redact(text: str, kinds: Collection[str]) -> str:
    """`text` with each finding replaced by `[KIND]`."""
    for finding in reversed(find(text, kinds)):
        text = text[: finding.start] + f"[{finding.kind.upper()}]" + text[finding.end :]
    return text
