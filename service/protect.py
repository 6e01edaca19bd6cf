"""Spans that must come out of a translation byte for byte: URLs, e-mail addresses, @mentions,
#hashtags, numbers (with their separators, and a currency or percent sign attached), and the
placeholders of software strings (`placeholders`): `{0}`, `{name}`, `{{count}}`, `%s`, `%d`,
`%1$s`, `%(name)s`, `%{name}`, `${var}`, `$var`, `:name`, `<0>`/`</0>` and other tags, `&lt;b&gt;`
and entities, template tags (`{% if %}`), and ICU messages (`{n, plural, one {# file} other {#
files}}`).

A sentence is translated whole first. When its translation lost or changed one of its spans (MT
models do: "€18.10" -> "18h10" is CTranslate2 #693), or holds a placeholder a different number
of times than the source, it is translated again with each span replaced by a one-digit
placeholder (`with_placeholders`: the multi model at step 6,500 copied a "7" inserted at random
into 120 Tatoeba sentences 50 times, a raw span 11 times, `XYZ1` or `⟨1⟩` never), and the spans
are put back where the placeholders came out, each exactly once. Where that fails too, the text
between the spans is translated piece by piece and the spans are put back between the pieces as
they were (`split`): they always survive, at some cost in fluency.

An ICU plural/select message is a span whose structure is kept and whose words are translated:
`branches` cuts it into its structure (`{count, plural, one {`, `} other {`, `}}`, kept) and the
text of each branch (`# file`, `# files`: translated as sentences of their own, `#` a span in
them; a message nested in a branch is a span of that branch's text). The sentence around it is
translated with the message as a placeholder, and the message put back rebuilt (`assemble`'s
`replace`). `{` `}` inside ICU quotes (`'{'`) are text, as ICU reads them.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence

_URL = r"""(?:https?://|www\.)[^\s<>"']+[^\s<>"'.,;:!?)\]}]"""
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_MENTION = r"(?<![\w@])@\w{1,40}(?:@[\w-]+(?:\.[\w-]+)+)?"  # @user, and @user@server.example
_HASHTAG = r"(?<![\w#&])\#\w+"
# The placeholders of software strings (gettext, ICU, i18next, Qt, Android/iOS, Python, Ruby,
# Laravel, Django/Jinja, Fluent, WML): byte for byte, and as often as in the source. Names are
# ASCII: in Chinese the next word follows without a space (`$nick点`).
_PLACEHOLDER = r"""
      \{\{\{[^{}]*\}\}\}                                      # {{{raw}}}
    | \{\{[^{}]*\}\}                                          # {{count}}, {{ site_name }}
    | \{[%\#][^{}]*[%\#]\}                                    # {% comment %}, {# note #}
    | [\#%$]\{[^{}]*\}                                        # #{ruby}, %{name}, ${var}
    | \{\s*\$?[\w.-]*\s*(?:![rsa])?(?:[:,][^{}]*)?\}         # {0} {name} {} {0:.2f} {n, number} { $x }
    | %\([\w.-]*\)[-+\#0]*\d*(?:\.\d+)?[A-Za-z]               # %(name)s
    | %(?:\d+\$)?(?:[-+\#0']*(?:\d+|\*)?\.(?:\d+|\*)|[-+\#0']*(?:\d+|\*)|[+\#0']*)(?:hh|ll|[hlLqjzt])?[A-Za-z@%]
                                                              # %s %1$s %-5d %+d %.2f %@ %% (not %-Zeichen)
    | %L?\d+(?![A-Za-z0-9_])                                  # %1 (Qt)
    | \$t\([^()]*\)                                           # $t(key) (i18next nesting)
    | \$[A-Za-z0-9_@]+\$(?![A-Za-z0-9_])                     # $USER$ (Chrome extension messages.json)
    | \$[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|\|\.?|\$)[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*\|?  # $var, $unit.name| (WML)
    | \$\d+(?![.,]?\d)                                        # $1 (MediaWiki; $5.99 is a price)
    | (?<![\w:/]):[A-Za-z_][A-Za-z0-9_]*                      # :name (Laravel, Rails)
    | </?[A-Za-z0-9][\w:.-]*(?:\s[^<>]*)?/?>                  # <0>, </0>, <br/>, <b>
    | <%[^%]*%>                                               # <%= erb %>
    | &lt;/?[\w:.-]+(?:\s(?:(?!&[lg]t;)[^<>])*)?/?&gt;        # &lt;b&gt;
    | &(?:[A-Za-z][A-Za-z0-9]{1,31}|\#\d{1,7}|\#[xX][0-9A-Fa-f]{1,6});  # &amp; &#160;
    | (?<![\w&\#])\#(?![\w\#{])                               # #, an ICU plural's number
"""
_SPAN = re.compile(
    rf"""
      {_URL}                                                 # URL
    | (?P<placeholder>{_PLACEHOLDER})
    | {_EMAIL}                                               # e-mail address
    | {_MENTION}                                             # @mention
    | {_HASHTAG}                                             # #hashtag
    | (?<![\w.,])[€$£¥]?\d+(?:[.,:/'’]\d+)*(?:\s?[%€$£])?     # number, with its sign
    | (?<!\S)(?P<rep>\S+(?:\s+\S+){{0,2}}?)(?:\s+(?P=rep)){{3,}}(?!\w)  # 1-3 words said 4+ times in a row
    | \S*(?P<ch>\S)(?P=ch){{5,}}\S*                          # a word with a run of 6+ of one character
    | \S{{64,}}                                              # a "word" of 64+ characters (no language has them)
    """,
    re.VERBOSE,
)
# Placeholders alone (a URL's `{id}` is part of the URL): found wherever they are, also inside a
# span of the expression above that is not one (a run of 64+ characters without a space).
_PLACEHOLDERS = re.compile(rf"{_URL}|(?P<placeholder>{_PLACEHOLDER})", re.VERBOSE)
_REFERENCE = re.compile(rf"{_URL}|{_EMAIL}|{_MENTION}|{_HASHTAG}")
# Spans no model can translate and every model decodes to its length limit (a 5000-character
# "xxx..." came back as 8,128 tokens in 1.5 s of the worker): such pieces are not even tried whole.
_DEGENERATE = re.compile(r"(\S)\1{5,}|\S{64,}|(?<!\S)(\S+(?:\s+\S+){0,2}?)(?:\s+\2){3,}(?!\w)")
# Cheap tests that let most sentences skip the expressions above (`_may_match`): every
# alternative of `_SPAN` but the last three, and every ICU message, needs one of these characters
# or strings (a URL's scheme has its ":"; `\\d` is any Unicode decimal digit, as in the patterns);
# the last three (and `_DEGENERATE`) need six of one character in a row, 64 non-spaces in a row,
# or a word said at least three times (the first word of a unit said 4+ times ends in a space in
# its first three copies).
_TRIGGER = re.compile(r"[{}%$:<&#@\d]|www\.")
_RUN_OR_LONG = re.compile(r"(\S)\1{5}|\S{64}")


def _may_repeat(text: str) -> bool:
    """Whether some word of `text` (split at whitespace, as `\\s` reads it) is there 3+ times."""
    words = text.split()
    if len(set(words)) > len(words) - 2:
        return False
    return max(Counter(words).values()) >= 3


def _may_degenerate(text: str) -> bool:
    """False only where `_DEGENERATE` (and the same three alternatives of `_SPAN`) cannot match."""
    return _RUN_OR_LONG.search(text) is not None or _may_repeat(text)


def _may_match(text: str, pattern: re.Pattern[str]) -> bool:
    """False only where `pattern` (`_SPAN` or `_PLACEHOLDERS`) and `messages` find nothing in `text`."""
    if _TRIGGER.search(text) is not None:
        return True
    return pattern is _SPAN and _may_degenerate(text)


# ICU: `{arg, plural|select|selectordinal,` opens a message; each branch is a selector (`one`,
# `=0`, `other`, after an optional `offset:1`) and its text in braces.
_ICU_HEAD = re.compile(r"\{\s*[\w.]+\s*,\s*(?:plural|selectordinal|select)\s*,")
_ICU_BRANCH = re.compile(r"\s*(?:offset\s*:\s*\d+\s*)?(?:=\s*-?\d+(?:\.\d+)?|[\w-]+)\s*\{")


# Messages nested deeper are kept whole, untranslated: each level is one more pass of the stages.
MAX_NESTING = 4


def _icu_end(text: str, at: int) -> int | None:
    """The end of the balanced `{...}` that opens at `at`, ICU quotes skipped; None if unclosed."""
    depth, i, n = 0, at, len(text)
    while i < n:
        ch = text[i]
        if ch == "'" and i + 1 < n and text[i + 1] == "'":
            i += 2
            continue
        if ch == "'" and i + 1 < n and text[i + 1] in "{}#|":
            close = text.find("'", i + 1)
            if close < 0:
                return None
            i = close + 1
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def messages(text: str) -> list[tuple[int, int]]:
    """Where the ICU plural/select messages of `text` are (start, end), outermost only."""
    out: list[tuple[int, int]] = []
    pos = 0
    while (m := _ICU_HEAD.search(text, pos)) is not None:
        end = _icu_end(text, m.start())
        if end is None:
            break
        out.append((m.start(), end))
        pos = end
    return out


def branches(message: str) -> list[tuple[str, bool]]:
    """An ICU message as consecutive parts (part, is_structure), as `split` gives them: its
    structure (kept) and the text of each branch (translated); joined, the message back. A
    message that does not read as one, or nests more than `MAX_NESTING` messages (two braces a
    level), is all structure: kept whole, untranslated."""
    head = _ICU_HEAD.match(message)
    if head is None or _depth(message) > 2 * MAX_NESTING:
        return [(message, True)]
    parts: list[tuple[str, bool]] = []
    fixed, pos = 0, head.end()
    while (m := _ICU_BRANCH.match(message, pos)) is not None:
        end = _icu_end(message, m.end() - 1)
        if end is None:
            return [(message, True)]
        parts.append((message[fixed : m.end()], True))
        if end - 1 > m.end():
            parts.append((message[m.end() : end - 1], False))
        fixed, pos = end - 1, end
    if not parts or message[pos:].strip() != "}":
        return [(message, True)]
    parts.append((message[fixed:], True))
    return parts


def _depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "{}":
            depth += 1 if ch == "{" else -1
            deepest = max(deepest, depth)
    return deepest


def _found(
    text: str, pattern: re.Pattern[str] = _SPAN, terms: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int, bool]]:
    """Every protected span of `text` (start, end, is a placeholder), in order: the ICU messages,
    and the matches of `pattern` outside them; and the `terms` (glossary terms, service/glossary.py:
    spans whose replacement is their target) that overlap none of them."""
    out = list(_remembered(text, pattern) if len(text) <= _REMEMBERED_CHARS else _scan(text, pattern))
    if terms:
        free = [(a, b, False) for a, b in terms if not any(a < e and s < b for s, e, _ in out)]
        out = sorted(out + free)
    return out


def _scan(text: str, pattern: re.Pattern[str]) -> tuple[tuple[int, int, bool], ...]:
    """`_found` without terms."""
    if not _may_match(text, pattern):
        return ()
    out: list[tuple[int, int, bool]] = []
    pos = 0
    for start, end in [*messages(text), (len(text), len(text))]:
        out += [(m.start(), m.end(), m.group("placeholder") is not None) for m in pattern.finditer(text, pos, start)]
        if end > start:
            out.append((start, end, True))
        pos = end
    return tuple(out)


# A sentence's spans are looked for when it is planned and again when its translation is
# checked: the last texts' scans are kept (sentence-sized texts only, so that the memory stays small).
_REMEMBERED_CHARS = 2000
_remembered = functools.lru_cache(maxsize=1024)(_scan)


def terms_free(text: str, terms: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The `terms` of `text` that overlap none of its protected spans (those a span wins)."""
    found = _found(text)
    return [(a, b) for a, b in terms if not any(a < e and s < b for s, e, _ in found)]


def spans(text: str) -> list[str]:
    """The protected spans of `text`, in order."""
    return [text[a:b] for a, b, _ in _found(text)]


def placeholders(text: str) -> list[str]:
    """The placeholders of `text` (format specifiers, tags, ICU messages...), in order: what a
    translation must hold exactly as often as its source."""
    return [text[a:b] for a, b, placeholder in _found(text, _PLACEHOLDERS) if placeholder]


def reference(text: str) -> bool:
    """Whether `text` is one URL, e-mail address, @mention or #hashtag and nothing else."""
    return _REFERENCE.fullmatch(text) is not None


def degenerate(text: str) -> bool:
    """Whether `text` holds a span that is not worth a translation attempt (split at once)."""
    return _may_degenerate(text) and _DEGENERATE.search(text) is not None


def kept(source: str, translation: str) -> bool:
    """Whether every protected span of `source` is in `translation` as often as in the source,
    each of its placeholders exactly as often (a `%s` more breaks the program that formats it),
    and each pair of tags around words (`<0>here</0>`) still around some."""
    found = spans(source)
    if not found:
        return True
    if not all(translation.count(s) >= found.count(s) for s in set(found)):
        return False
    want = Counter(placeholders(source))
    if want and Counter(p for p in placeholders(translation) if p in want) != want:
        return False
    return not _emptied(source, translation, [(found[i], found[j]) for i, j in _tag_pairs(found)])


_TAG = re.compile(r"(?:<|&lt;)(/?)([A-Za-z0-9][\w:.-]*)")


def _tag_pairs(found: list[str]) -> list[tuple[int, int]]:
    """The spans that open and close one element (`<0>`, `</0>`; `&lt;b&gt;`, `&lt;/b&gt;`), as
    (open, close) indices into `found`."""
    pairs: list[tuple[int, int]] = []
    open_at: dict[str, list[int]] = {}
    for k, span in enumerate(found):
        m = _TAG.match(span)
        if m is None or span.endswith(("/>", "/&gt;")):
            continue
        if not m.group(1):
            open_at.setdefault(m.group(2), []).append(k)
        elif open_at.get(m.group(2)):
            pairs.append((open_at[m.group(2)].pop(), k))
    return pairs


def _emptied(source: str, translation: str, pairs: list[tuple[str, str]]) -> bool:
    """Whether a pair of markers (tags, or their placeholder digits) around words in `source` is
    around none in `translation` (the model dropped the link text of `Click <0>here</0>`)."""

    def filled(text: str, a: str, b: str) -> bool:
        i = text.find(a)
        j = text.find(b, i + len(a)) if i >= 0 else -1
        return j >= 0 and needs_translation(text[i + len(a) : j])

    return any(filled(source, a, b) and not filled(translation, a, b) for a, b in pairs)


def split(text: str, terms: Sequence[tuple[int, int]] = ()) -> list[tuple[str, bool]]:
    """`text` as consecutive parts (part, is_span); joined, the parts give `text` back. `terms`:
    more spans (start, end), as `_found` takes them."""
    parts: list[tuple[str, bool]] = []
    pos = 0
    for start, end, _ in _found(text, terms=terms):
        if start > pos:
            parts.append((text[pos:start], False))
        parts.append((text[start:end], True))
        pos = end
    if pos < len(text):
        parts.append((text[pos:], False))
    return parts


def unprotected(text: str) -> str:
    """What of `text` a model may translate: the text between its spans and the branch texts
    of its ICU messages (each part on its own line)."""
    out: list[str] = []
    for part, is_span in split(text):
        if not is_span:
            out.append(part)
        elif part.startswith("{") and _ICU_HEAD.match(part):
            out += [unprotected(t) for t, fixed in branches(part) if not fixed]
    return "\n".join(out)


def assemble(parts: list[tuple[str, bool]], translated: list[str], replace: dict[str, str] | None = None) -> str:
    """The parts, each text part that `texts_to_translate` gave replaced by its translation (in
    `translated`, in order) with its surrounding whitespace kept; spans as they were, or as
    `replace` has them (an ICU message with its branches translated). A translation that would
    run into a span it stood apart from in the source (`#` + "Dějj!" for `#` + "!/bin/sh": a
    hashtag) gives way to the part as it was."""
    it = iter(translated)
    out = []
    for k, (part, is_span) in enumerate(parts):
        if is_span or not needs_translation(part):
            out.append(replace.get(part, part) if is_span and replace else part)
            continue
        lead, trail = part[: len(part) - len(part.lstrip())], part[len(part.rstrip()) :]
        text = lead + next(it) + trail
        after_span, before_span = k > 0 and parts[k - 1][1], k + 1 < len(parts) and parts[k + 1][1]
        if (after_span and _joins(text[:1]) and not _joins(part[:1])) or (
            before_span and _joins(text[-1:]) and not _joins(part[-1:])
        ):
            text = part
        out.append(text)
    return "".join(out)


def _joins(ch: str) -> bool:
    """A letter or digit of a script written with spaces: next to a span, it reads as part of it."""
    return ch.isalnum() and ord(ch) < 0x2E80


def needs_translation(part: str) -> bool:
    """A text part with a letter in it (punctuation and spaces between two spans stay)."""
    return any(ch.isalpha() for ch in part)


def texts_to_translate(parts: list[tuple[str, bool]]) -> list[str]:
    return [p.strip() for p, is_span in parts if not is_span and needs_translation(p)]


_DIGITS = "789654"


def with_placeholders(text: str, terms: Sequence[tuple[int, int]] = ()) -> tuple[str, list[str]] | None:
    """`text` with each span (and each of `terms`, as `_found` takes them) replaced by its own
    one-digit placeholder, and the spans in order; None when it has no span, more spans than
    placeholders, or no words outside its spans."""
    found = _found(text, terms=terms)
    if not found or len(found) > len(_DIGITS):
        return None
    out, pos = [], 0
    for (start, end, _), digit in zip(found, _DIGITS):
        out += [text[pos:start], digit]
        pos = end
    out.append(text[pos:])
    marked = "".join(out)
    if not needs_translation(marked):
        return None
    return marked, [text[a:b] for a, b, _ in found]


def _glued(marked: str, translation: str) -> bool:
    """Whether a placeholder digit in `translation` runs into a letter or digit that it stood
    apart from in `marked` ("7 expandiert" -> "7th", "7 NOQA" -> "7QAA"): the span put back
    would read as another word, number or placeholder (`$HOMEth`, `#QAA`). A script written
    without spaces (zh, ja) may join it."""
    for k, ch in enumerate(translation):
        if ch not in _DIGITS:
            continue
        at = marked.find(ch)
        before, after = translation[k - 1 : k], translation[k + 1 : k + 2]
        if (_joins(before) and not _joins(marked[at - 1 : at])) or (
            _joins(after) and not _joins(marked[at + 1 : at + 2])
        ):
            return True
    return False


def restore(translation: str, spans_in_order: list[str], marked: str = "") -> str | None:
    """The spans put back at their placeholders in `translation`; None unless every placeholder
    is there exactly once and no other digit is, and (given the `marked` text that was
    translated) each pair of tags around words there is around words in `translation`."""
    digits = [ch for ch in translation if ch.isdigit()]
    if sorted(digits) != sorted(_DIGITS[: len(spans_in_order)]):
        return None
    pairs = [(_DIGITS[i], _DIGITS[j]) for i, j in _tag_pairs(spans_in_order)]
    if marked and (_emptied(marked, translation, pairs) or _glued(marked, translation)):
        return None
    back = dict(zip(_DIGITS, spans_in_order))
    return "".join(back.get(ch, ch) for ch in translation)
