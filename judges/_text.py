"""Pure string helpers shared by the judges: find a final answer, normalize it.

Nothing here knows about items or verdicts, so each helper can be tested on its own.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
# "The answer is 42", "the final answer is: $42$", "Answer: 42", "**Answer:** 42".
_PHRASE = re.compile(r"\b(?:final\s+)?answer\s*(?:is\b\s*:?|:)(?:\*\*)?[ \t]*([^\n]*)",
                     re.IGNORECASE)
# A sentence end: the answer "42. So we are done." is "42", but "3.5" stays whole.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# A plain number, optionally with thousands separators and a trailing percent sign.
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?%?")
_TRAILING_PUNCT = ".,;!"


def extract_answer(response: str) -> str | None:
    """Return the final answer stated in ``response``, or ``None`` if it states none.

    Formats are tried in priority order and the *last* occurrence of the first format
    found wins: ``<answer>...</answer>``, ``\\boxed{...}`` (nested braces allowed),
    GSM8K's ``#### 42``, then phrases such as "The answer is 42" or "Answer: 42".
    The result is stripped of surrounding whitespace but otherwise untouched; pass it
    through :func:`normalize_answer` before comparing.
    """
    for finder in (_last_answer_tag, _last_boxed, _last_gsm8k, _last_phrase):
        found = finder(response)
        if found is not None:
            return found.strip()
    return None


def _last_answer_tag(text: str) -> str | None:
    blocks = _ANSWER_TAG.findall(text)
    return blocks[-1] if blocks else None


def _last_boxed(text: str) -> str | None:
    # Braces nest (\boxed{\frac{1}{2}}), so a regex cannot find the closing one;
    # walk back from the last \boxed{ to the first one whose braces balance.
    for match in reversed(list(_BOXED_OPEN.finditer(text))):
        depth = 1
        for pos in range(match.end(), len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end():pos]
    return None


def _last_gsm8k(text: str) -> str | None:
    answers = _GSM8K.findall(text)
    return answers[-1] if answers else None


def _last_phrase(text: str) -> str | None:
    for match in reversed(list(_PHRASE.finditer(text))):
        answer = match.group(1)
        end = _SENTENCE_END.search(answer)
        if end is not None:
            answer = answer[:end.start()]
        # "the answer is" with nothing after it states no answer; look further back.
        if answer.strip():
            return answer
    return None


def normalize_answer(text: str) -> str:
    """Canonicalize an answer so that equal answers compare equal as strings.

    Whitespace is stripped and collapsed, case is lowered, and surrounding ``$``,
    ``**`` and trailing ``.,;!`` are removed. Each number loses its thousands
    separators and is canonicalized with :class:`decimal.Decimal`, so "42.0", "+42",
    "042" and "42" are all "42" and "0.50" is "0.5". A "%" sign is kept.
    """
    if _plain_integer(text):  # most references and answers: already canonical
        return text
    text = " ".join(text.split()).lower()
    # Repeat until stable: markers can nest in any order, e.g. "**$42$.**".
    previous = None
    while text != previous:
        previous = text
        text = text.strip().rstrip(_TRAILING_PUNCT).strip("$").strip()
        # Each end on its own: "**The answer is 42**" leaves "42**" to clean up.
        text = text.removeprefix("**").removesuffix("**")
    return " ".join(_canonical_number(token) for token in text.split())


def _plain_integer(text: str) -> bool:
    """True for ASCII digits without a leading zero, short enough for Decimal's 28-digit
    precision: the form the canonical one is, so normalizing would give it back."""
    return (text.isdigit() and len(text) <= 20 and text.isascii()
            and (text[0] != "0" or len(text) == 1))


def _canonical_number(token: str) -> str:
    """``token`` in canonical decimal form if it is a number, else unchanged."""
    if _plain_integer(token):
        return token
    if not any(ch.isdigit() for ch in token) or not _NUMBER.fullmatch(token):
        return token
    percent = "%" if token.endswith("%") else ""
    try:
        value = Decimal(token.rstrip("%").replace(",", ""))
    except InvalidOperation:
        return token
    if value == 0:
        return "0" + percent  # Decimal keeps the sign of "-0"; an answer should not.
    # normalize() drops trailing zeros; format "f" avoids exponents like "1E+2".
    return format(value.normalize(), "f") + percent
