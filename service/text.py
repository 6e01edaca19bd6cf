"""Splitting long texts into sentences (keeping line breaks) and putting translations back. An
ICU message (`{n, plural, one {# file. Delete it?} other {...}}`) is never split: the stages
translate its branches (service/protect.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from service.protect import messages

# A sentence ends at . ! ? (and CJK 。！？) followed by whitespace, or right after a CJK mark.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=\S)|(?<=[。！？])\s*(?=\S)")
_CLAUSE_BREAK = re.compile(r"(?<=[,;:，；：、])\s*")
_NO_SPACE_LANGS = {"zh", "ja"}


@dataclass(frozen=True)
class Segment:
    text: str  # to translate ("" for pure whitespace)
    sep: str  # what followed it in the source (whitespace, line breaks)
    cut: bool = False  # cut off in the middle of a word: the next piece follows with nothing between
    in_cut_word: bool = False  # a piece of a word longer than the model takes (not worth translating)


def split_text(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[Segment]:
    """Split into sentences, keeping each line break; a sentence longer than `max_tokens` is
    cut at clause marks, then at spaces, then hard, so every piece fits the model."""
    segments: list[Segment] = []
    lines = re.split(r"(\r?\n+)", text)
    for k in range(0, len(lines), 2):
        line = lines[k]
        newline = lines[k + 1] if k + 1 < len(lines) else ""
        stripped = line.strip()
        if not stripped:
            segments.append(Segment("", line + newline))
            continue
        lead = line[: len(line) - len(line.lstrip())]
        if lead:
            segments.append(Segment("", lead))
        pieces = _split_sentences(stripped)
        trail = line[len(line.rstrip()) :]
        for i, (sentence, sep) in enumerate(pieces):
            parts = fit(sentence, max_tokens, count_tokens)
            seps = _separators(sentence, parts)
            broken = [not a or not b for a, b in zip(["x", *seps], [*seps, "x"])]  # a "" on either side
            segments += [Segment(p, sep, not sep, cut) for p, sep, cut in zip(parts[:-1], seps, broken)]
            last = trail + newline if i == len(pieces) - 1 else sep
            segments.append(Segment(parts[-1], last, in_cut_word=broken[-1]))
    return segments


def _separators(sentence: str, parts: list[str]) -> list[str]:
    """What stood between consecutive `parts` of `sentence` ("" where a word was cut)."""
    seps, pos = [], 0
    for k in range(len(parts) - 1):
        at = sentence.find(parts[k], pos)
        nxt = sentence.find(parts[k + 1], at + len(parts[k])) if at >= 0 else -1
        if at < 0 or nxt < 0:
            seps.append(" ")
            continue
        seps.append(sentence[at + len(parts[k]) : nxt])
        pos = at + len(parts[k])
    return seps


def _breaks(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    """The matches of `pattern` in `text` outside its ICU messages."""
    inside = messages(text)
    return [m for m in pattern.finditer(text) if not any(a < m.start() < b for a, b in inside)]


def _split_sentences(line: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    for m in _breaks(_SENTENCE_END, line):
        out.append((line[pos : m.start()], m.group(0)))
        pos = m.end()
    out.append((line[pos:], ""))
    return [(s, sep) for s, sep in out if s]


def fit(sentence: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Pieces of `sentence` of at most `max_tokens` tokens each."""
    if count_tokens(sentence) <= max_tokens:
        return [sentence]
    for splitter in (_CLAUSE_BREAK, re.compile(r"\s+")):
        cuts = [0, *(k for m in _breaks(splitter, sentence) for k in (m.start(), m.end())), len(sentence)]
        parts = [p for p in (sentence[a:b] for a, b in zip(cuts[::2], cuts[1::2])) if p]
        if len(parts) > 1:
            return _greedy_join(parts, max_tokens, count_tokens, " " if splitter.pattern == r"\s+" else "")
    # No break points (e.g. one enormous word): cut by characters, halving until it fits.
    mid = len(sentence) // 2
    return fit(sentence[:mid], max_tokens, count_tokens) + fit(sentence[mid:], max_tokens, count_tokens)


def _greedy_join(parts: list[str], max_tokens: int, count_tokens: Callable[[str], int], glue: str) -> list[str]:
    out: list[str] = []
    current = ""
    for part in parts:
        candidate = f"{current}{glue}{part}" if current else part
        if current and count_tokens(candidate) > max_tokens:
            out.append(current)
            current = part
        else:
            current = candidate
    if current:
        out.append(current)
    return [q for p in out for q in (fit(p, max_tokens, count_tokens) if count_tokens(p) > max_tokens else [p])]


def join_segments(segments: list[Segment], translations: list[str], target_lang: str) -> str:
    """Reassemble translated pieces with the source's separators. Sentences of a language
    written without spaces (zh) get a space between them in one written with spaces, and the
    other way round."""
    out = []
    for k, (seg, tr) in enumerate(zip(segments, translations)):
        sep = seg.sep
        followed = k + 1 < len(segments) and segments[k + 1].text
        if seg.cut:
            sep = ""
        elif target_lang in _NO_SPACE_LANGS and sep and not sep.strip(" "):
            sep = ""
        elif sep == "" and seg.text and followed:
            sep = " "
        out.append(tr + sep)
    return "".join(out)
