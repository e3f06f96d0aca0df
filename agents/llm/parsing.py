"""Reading a number out of a model's free-text answer, robustly and without silent defaults.

Rule: if the text has an answer marker ("ANSWER:", "Answer -", ...), the first number after the
last marker is the answer; otherwise the text must contain exactly one distinct number. Anything
else (no number, several different numbers, out of range, not a whole number where one is
required, not finite) is invalid with a reason that the retry message quotes back to the model.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A number: optional sign, digits with optional thousands commas and decimals (or ".5"), optional
# exponent; not part of a longer token, so "1,5" (a decimal comma?) and "3/4" are no number.
NUMBER = re.compile(r"(?<![\w.,/])[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
                    r"(?![.,/]?\d)")
MARKER = re.compile(r"answer\s*(?:[:=]|-(?!\d))", re.IGNORECASE)     # "Answer -5" keeps its sign


@dataclass(frozen=True)
class Parsed:
    value: float | None
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def _numbers(text: str) -> list[float]:
    out = []
    for match in NUMBER.finditer(text):
        try:
            value = float(match.group().replace(",", ""))
        except ValueError:
            continue
        if math.isfinite(value):  # 1e999 overflows to inf: not a usable number
            out.append(value)
    return out


def parse_number(text, low: float, high: float, integer: bool = False) -> Parsed:
    """The answer in `text` if it is one number in [low, high] (whole if `integer`)."""
    if not isinstance(text, str) or not text.strip():
        return Parsed(None, "the reply is empty")
    text = text[:10_000]
    markers = list(MARKER.finditer(text))
    if markers:
        found = _numbers(text[markers[-1].end():])[:1]
    else:
        found = sorted(set(_numbers(text)))
        if len(found) > 1:
            shown = ", ".join(f"{v:g}" for v in found[:4])
            return Parsed(None, f"the reply has several numbers ({shown}) instead of one answer")
    if not found:
        return Parsed(None, "the reply has no number")
    value = found[0]
    if not low <= value <= high:
        return Parsed(None, f"{value:g} is outside the allowed range {low:g} to {high:g}")
    if integer and not float(value).is_integer():
        return Parsed(None, f"{value:g} is not a whole number")
    return Parsed(float(value))


def correction(error: str, low: float, high: float, integer: bool = False) -> str:
    """The user message sent back after an invalid answer."""
    kind = "a whole number" if integer else "a number"
    return (f"That answer could not be used: {error}. Reply with {kind} from {low:g} to {high:g} "
            "and nothing else.")
