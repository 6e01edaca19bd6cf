"""Spans that must come out of a translation byte for byte: URLs, e-mail addresses, @mentions,
#hashtags and numbers (with their separators, and a currency or percent sign attached).

A sentence is translated whole first. When its translation lost or changed one of its spans (MT
models do: "€18.10" -> "18h10" is CTranslate2 #693), it is translated again with each span
replaced by a one-digit placeholder (`with_placeholders`: the multi model at step 6,500 copied a
"7" inserted at random into 120 Tatoeba sentences 50 times, a raw span 11 times, `XYZ1` or
`⟨1⟩` never), and the spans are put back where the placeholders came out, each exactly once.
Where that fails too, the text between the spans is translated piece by piece and the spans are
put back between the pieces as they were (`split`): they always survive, at some cost in fluency.
"""

from __future__ import annotations

import re

_SPAN = re.compile(
    r"""
      (?:https?://|www\.)[^\s<>"']+[^\s<>"'.,;:!?)\]}]      # URL
    | [\w.+-]+@[\w-]+(?:\.[\w-]+)+                           # e-mail address
    | (?<![\w@])@\w{1,40}                                    # @mention
    | (?<![\w#&])\#\w+                                       # #hashtag
    | (?<![\w.,])[€$£¥]?\d+(?:[.,:/'’]\d+)*(?:\s?[%€$£])?     # number, with its sign
    | (?<!\S)(\S+(?:\s+\S+){0,2}?)(?:\s+\1){3,}(?!\w)            # 1-3 words said 4+ times in a row
    | \S*(\S)\2{5,}\S*                                       # a word with a run of 6+ of one character
    | \S{64,}                                                # a "word" of 64+ characters (no language has them)
    """,
    re.VERBOSE,
)
# Spans no model can translate and every model decodes to its length limit (a 5000-character
# "xxx..." came back as 8,128 tokens in 1.5 s of the worker): such pieces are not even tried whole.
_DEGENERATE = re.compile(r"(\S)\1{5,}|\S{64,}|(?<!\S)(\S+(?:\s+\S+){0,2}?)(?:\s+\2){3,}(?!\w)")


def spans(text: str) -> list[str]:
    """The protected spans of `text`, in order."""
    return [m.group(0) for m in _SPAN.finditer(text)]


def degenerate(text: str) -> bool:
    """Whether `text` holds a span that is not worth a translation attempt (split at once)."""
    return _DEGENERATE.search(text) is not None


def kept(source: str, translation: str) -> bool:
    """Whether every protected span of `source` is in `translation` as often as in the source."""
    found = spans(source)
    return all(translation.count(s) >= found.count(s) for s in set(found))


def split(text: str) -> list[tuple[str, bool]]:
    """`text` as consecutive parts (part, is_span); joined, the parts give `text` back."""
    parts: list[tuple[str, bool]] = []
    pos = 0
    for m in _SPAN.finditer(text):
        if m.start() > pos:
            parts.append((text[pos : m.start()], False))
        parts.append((m.group(0), True))
        pos = m.end()
    if pos < len(text):
        parts.append((text[pos:], False))
    return parts


def assemble(parts: list[tuple[str, bool]], translated: list[str]) -> str:
    """The parts, each text part that `texts_to_translate` gave replaced by its translation (in
    `translated`, in order) with its surrounding whitespace kept; spans as they were."""
    it = iter(translated)
    out = []
    for part, is_span in parts:
        if is_span or not needs_translation(part):
            out.append(part)
            continue
        lead, trail = part[: len(part) - len(part.lstrip())], part[len(part.rstrip()) :]
        out.append(lead + next(it) + trail)
    return "".join(out)


def needs_translation(part: str) -> bool:
    """A text part with a letter in it (punctuation and spaces between two spans stay)."""
    return any(ch.isalpha() for ch in part)


def texts_to_translate(parts: list[tuple[str, bool]]) -> list[str]:
    return [p.strip() for p, is_span in parts if not is_span and needs_translation(p)]


_DIGITS = "789654"


def with_placeholders(text: str) -> tuple[str, list[str]] | None:
    """`text` with each span replaced by its own one-digit placeholder, and the spans in order;
    None when it has more spans than placeholders."""
    found = list(_SPAN.finditer(text))
    if not found or len(found) > len(_DIGITS):
        return None
    out, pos = [], 0
    for m, digit in zip(found, _DIGITS):
        out += [text[pos : m.start()], digit]
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), [m.group(0) for m in found]


def restore(translation: str, spans_in_order: list[str]) -> str | None:
    """The spans put back at their placeholders in `translation`; None unless every placeholder
    is there exactly once and no other digit is."""
    digits = [ch for ch in translation if ch.isdigit()]
    if sorted(digits) != sorted(_DIGITS[: len(spans_in_order)]):
        return None
    back = dict(zip(_DIGITS, spans_in_order))
    return "".join(back.get(ch, ch) for ch in translation)
