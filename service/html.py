"""`format: "html"`: translate the text of an HTML fragment, keep its markup.

Parsed with BeautifulSoup (Python's html.parser underneath). What is translated: the text of
each block (a paragraph, a list item, a cell, ...) as one unit, so a sentence broken by inline
tags (`Hallo <b>Welt</b>!`) is translated as one sentence. The inline elements are then put back
around their own words: where each one's separate translation is found in the sentence's
translation (in order, case-insensitively), or else around the longest run of the sentence's
words that are all in that separate translation, one of them in no other text node's (a word
translated alone often comes back as a phrase: "heute" -> "This is today", placed on "today");
where neither is found, the block falls back to translating its text nodes one by one, as
LibreTranslate does. Measured with the shipped model (README): "Ich habe <b>heute</b> keine
Zeit." -> "I have no time <b>today</b>." (the exact search alone fell back to "I have a lot.
<b>This is today</b> There's no time."). Left untouched: `script`, `style`, `code`,
`pre`, `textarea`, comments, CDATA, and every element marked `translate="no"` or
`class="notranslate"`. Kept as written, untranslated, where Python's parser would hand them over
as text or turn them into U+FFFD: a comment, CDATA section, declaration or tag left open at the
end of the input (HTML reads an open comment to the end; it stays last, after the end tags), and
a character reference that names no character (`&#0;`, `&#x110000;`, a surrogate, a control).
Comments, CDATA and such references inside a sentence stay in its block, after its translation.
Translations are inserted as text, never as markup, so the output holds no tag or attribute that
was not in the input. Blocks nested more than MAX_DEPTH deep are refused (400); the walk itself
needs no recursion.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bs4 import BeautifulSoup, Comment, NavigableString, Tag
from bs4.builder._htmlparser import BeautifulSoupHTMLParser, HTMLParserTreeBuilder
from bs4.element import CData, Declaration, Doctype, PreformattedString, ProcessingInstruction

from service.errors import bad_request

SKIP = {"script", "style", "code", "pre", "textarea", "template", "svg", "math", "noscript"}
INLINE = {
    "a", "abbr", "b", "bdi", "bdo", "cite", "data", "dfn", "em", "font", "i", "kbd", "mark", "q", "s",
    "samp", "small", "span", "strong", "sub", "sup", "time", "u", "var", "del", "ins",
}  # fmt: skip


class _AsWritten(PreformattedString):
    """Markup kept byte for byte and never translated: an unterminated comment, CDATA section,
    declaration or tag at the end of the input, a character reference that names no character."""

    PREFIX = SUFFIX = ""


_NOT_TEXT = (Comment, CData, Declaration, Doctype, ProcessingInstruction, _AsWritten)
_C1_UNMAPPED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}  # the C1 controls HTML does not read as windows-1252


def _names_no_character(name: str) -> bool:
    """Whether the numeric character reference `&#name;` names nothing a text can hold: NUL, a
    surrogate or a number past U+10FFFF (a browser shows U+FFFD), or a control character
    other than white space (a browser shows nothing)."""
    try:
        code = int(name[1:], 16) if name[:1] in "xX" else int(name)
    except ValueError:
        return False
    return (
        code > 0x10FFFF
        or 0xD800 <= code <= 0xDFFF
        or (code < 0x20 and chr(code) not in "\t\n\f\r")
        or code == 0x7F
        or code in _C1_UNMAPPED
    )


class _Parser(BeautifulSoupHTMLParser):
    """Python's html.parser where it would lose or translate what is not text. It hands an
    unterminated `<!--`, `<![CDATA[`, `<!...`, `<?...` or tag at the end of the input back as
    text (HTML reads each to the end as a comment, or drops it), and drops what follows an
    unclosed `<script>` or `<style>`; bs4 turns a reference that names no character into U+FFFD
    or a control character, which translation drops. Here each is kept as written, untranslated
    (a reference without its `;` gets one), and the script's text stays in the script."""

    def handle_charref(self, name: str) -> None:
        if _names_no_character(name):
            self._as_written(f"&#{name};")
        else:
            super().handle_charref(name)

    def close(self) -> None:
        rest = self.rawdata  # what the parser has left: from an unterminated construct on
        if rest.startswith("<") and not self.cdata_elem:
            self.rawdata = ""
            soup = self.soup
            soup.endData()
            while soup.currentTag is not soup:  # the tail goes last, after every end tag
                soup.popTag()
            self._as_written(rest)
        elif rest and self.cdata_elem:  # an unclosed <script> or <style>: its content to the end
            self.rawdata = ""
            self.handle_data(rest)
        super().close()

    def _as_written(self, markup: str) -> None:
        self.soup.endData()
        self.soup.handle_data(markup)
        self.soup.endData(_AsWritten)


class _Builder(HTMLParserTreeBuilder):
    def feed(self, markup: Any, _parser_class: type[BeautifulSoupHTMLParser] = _Parser) -> None:
        super().feed(markup, _parser_class)


T = TypeVar("T")
# Blocks nested deeper are refused: Chromium's parser stops nesting at 512 too. (Python's
# html.parser does not close a <p> at the next one, so 512 unclosed paragraphs reach it.)
MAX_DEPTH = 512


def _skipped(tag: Tag) -> bool:
    classes: list[str] | str = tag.get("class") or []  # type: ignore[assignment]
    return (
        tag.name in SKIP
        or str(tag.get("translate", "")).lower() == "no"
        or "notranslate" in (classes if isinstance(classes, list) else [classes])
    )


@dataclass
class _Run:
    """Consecutive inline content of one block: text nodes and simple inline elements."""

    nodes: list[NavigableString | Tag]

    def text(self) -> str:
        return "".join(_text(n) for n in self.nodes)

    def strings(self) -> list[NavigableString]:
        return [s for n in self.nodes for s in (_strings(n) if isinstance(n, Tag) else [n])]

    def has_tags(self) -> bool:
        return any(isinstance(n, Tag) for n in self.nodes)


def _runs(root: Tag) -> list[_Run]:
    """Every run of translatable inline content under `root`, in document order. The walk keeps
    its own stack (no recursion: a page nested thousands deep cannot exhaust Python's), and a
    block nested more than `MAX_DEPTH` elements deep is refused (400)."""
    runs: list[_Run] = []
    current: list[NavigableString | Tag] = []

    def flush() -> None:
        if current and any(s.strip() for s in _Run(current).strings()):
            runs.append(_Run(list(current)))
        current.clear()

    stack = [iter(list(root.children))]  # the children still to visit of each open block
    while stack:
        child = next(stack[-1], None)
        if child is None:  # the end of a block
            stack.pop()
            flush()
        elif isinstance(child, _NOT_TEXT):
            continue
        elif isinstance(child, NavigableString):
            current.append(child)
        elif isinstance(child, Tag):
            if _skipped(child):
                flush()
            elif child.name in INLINE and not any(
                isinstance(d, Tag) and (d.name not in INLINE or _skipped(d)) for d in child.descendants
            ):
                current.append(child)  # an inline element of text and inline elements only
            else:
                if len(stack) >= MAX_DEPTH:
                    raise bad_request(f"HTML nested more than {MAX_DEPTH} elements deep (an unclosed <p> nests too)")
                flush()
                stack.append(iter(list(child.children)))
    return runs


_SPACE = re.compile(r"^(\s*)(.*?)(\s*)$", re.S)


def _keep_space(original: str, translated: str) -> str:
    lead, _, trail = _SPACE.match(original).groups()  # type: ignore[union-attr]
    return f"{lead}{translated.strip()}{trail}" if translated.strip() else original


Links = list[tuple[int, int, int, int]]  # (translation start, end, source start, end), characters
Align = Callable[[list[tuple[str, str]]], Awaitable[list[Links]]]


Offload = Callable[..., Awaitable[Any]]  # (function, *args) -> its result, computed off the event loop


async def inline(function: Callable[..., T], *args: Any) -> T:
    """An `Offload` that runs `function` at once, here."""
    return function(*args)


async def translate_html(
    html: str,
    translate: Callable[[list[str]], Awaitable[list[str]]],
    align: Align | None = None,
    offload: Offload | None = None,
) -> str:
    """`html` with its text translated by `translate` (one call for the whole fragment).
    `align` (source, translation) -> the word alignment of each pair, where the model gives one
    (forced decoding, runtime/translator.align): inline elements go around the words aligned
    with theirs first, then where the word search finds them. `offload(function, *args)` runs
    the parsing and the writing back elsewhere (a file's page: in the file job's thread); without
    it they run inline."""
    run_sync = offload or inline
    soup, runs, texts, n_wholes, nodes = await run_sync(_read, html)
    todo = [t.strip() for t in texts if t.strip()]
    done = iter(await translate(todo) if todo else [])
    out = [next(done) if t.strip() else t for t in texts]
    rest = iter(out[n_wholes:])
    tagged = [
        (run, whole.strip(), [next(rest) for _ in originals], originals)
        for run, whole, originals in zip(runs, out[:n_wholes], nodes)
    ]
    pairs = [(run.text().strip(), whole) for run, whole, originals, _ in tagged if originals and whole]
    links = await align(pairs) if align and pairs else []
    return await run_sync(_write_back, soup, tagged, links)


def _read(html: str) -> tuple[BeautifulSoup, list[_Run], list[str], int, list[list[str]]]:
    """The parsed page, its runs, and the texts to translate in one batch: each run's whole text
    and, where it has inline elements, each of its text nodes (to place the elements, or for the
    fallback; a run of plain text is translated once); how many are whole runs; each run's nodes."""
    soup = BeautifulSoup(html, builder=_Builder())
    runs = _runs(soup)
    wholes = [r.text() for r in runs]
    nodes = [[str(s) for s in r.strings()] if r.has_tags() else [] for r in runs]
    return soup, runs, wholes + [t for ts in nodes for t in ts], len(wholes), nodes


def _write_back(soup: BeautifulSoup, tagged: list[tuple[_Run, str, list[str], list[str]]], links: list[Links]) -> str:
    """Each run replaced by its translation (`tagged`: run, whole translation, its text nodes'
    translations, their originals), the inline elements placed; the page's markup."""
    aligned = iter(links)
    for run, whole, translated, originals in tagged:
        if not originals:  # plain text: its translation replaces it
            _write(run, whole, [])
            continue
        spans = _aligned(run, whole, next(aligned, [])) if whole else None
        spans = spans or _searched(run, whole, translated)
        if spans is not None:
            _write(run, whole, spans)
        else:
            for s, original, t in zip(run.strings(), originals, translated):
                s.replace_with(NavigableString(_keep_space(original, t)))
    return soup.decode(formatter="minimal")


_WORD = re.compile(r"\w+(?:['’]\w+)*")


def _words_of(own: str, others: list[str], whole: str, pos: int) -> tuple[int, int] | None:
    """Where an inline element's words are in the sentence's translation `whole` (lowercased)
    from `pos` on, when its own translation `own` is not there as it is (a word translated
    alone often comes out as a phrase: "heute" -> "This is today"): the longest run of
    consecutive words of `whole` that are all words of `own`, with at least one that no other
    text node's translation (`others`) has; None when there is none."""
    mine = {w.lower() for w in _WORD.findall(own)}
    theirs = {w.lower() for t in others for w in _WORD.findall(t)}
    best: tuple[int, int] | None = None
    start = end = -1
    key = False
    for m in [*_WORD.finditer(whole, pos), None]:
        if m is not None and m.group() in mine:
            if start < 0:
                start, key = m.start(), False
            end, key = m.end(), key or m.group() not in theirs
            continue
        if start >= 0 and key and (best is None or end - start > best[1] - best[0]):
            best = (start, end)
        start = -1
    return best


def _strings(tag: Tag) -> list[NavigableString]:
    return [s for s in tag.find_all(string=True) if not isinstance(s, _NOT_TEXT)]


def _text(node: NavigableString | Tag) -> str:
    """A run node's text: its strings but no comment, CDATA or markup kept as written."""
    return "".join(_strings(node)) if isinstance(node, Tag) else str(node)


Span = tuple[int, int, Tag]  # an inline element and the characters of the translation it goes around


def _element_spans(run: _Run) -> list[tuple[int, int, Tag]]:
    """Each inline element of `run` and its characters in the run's text, stripped."""
    text = run.text()
    at = -(len(text) - len(text.lstrip()))
    spans = []
    for node in run.nodes:
        n = len(_text(node))
        if isinstance(node, Tag):
            spans.append((at, at + n, node))
        at += n
    return spans


def _aligned(run: _Run, whole: str, links: Links) -> list[Span] | None:
    """Each inline element around the words of `whole` aligned with its own: a word of the
    translation belongs to the element into which most of its pieces' links point (links into
    the text outside every element count against it), and the element goes from its first word
    to its last. None when an element gets no word or two elements' words interleave."""
    elements = _element_spans(run)
    if not links or not elements:
        return None
    words: list[list[tuple[int, int]]] = [[] for _ in elements]
    for m in _WORD.finditer(whole):
        votes = [0] * (len(elements) + 1)  # the last: outside every element
        for t0, t1, s0, s1 in links:
            if t0 < m.end() and t1 > m.start():
                inside = [k for k, (a, b, _) in enumerate(elements) if s0 < b and s1 > a]
                votes[inside[0] if inside else -1] += 1
        best = max(range(len(elements)), key=lambda k: votes[k])
        if votes[best] and votes[best] >= votes[-1]:
            words[best].append((m.start(), m.end()))
    if not all(words):
        return None
    spans = sorted(((w[0][0], w[-1][1], tag) for w, (_, _, tag) in zip(words, elements)), key=lambda x: x[0])
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return None
    return spans


def _searched(run: _Run, whole: str, translated: list[str]) -> list[Span] | None:
    """Each inline element around its own words: the translation of the element's text, found
    in `whole` in order, case-insensitively, or else its words (`_words_of`). None when one is
    not found."""
    spans: list[Span] = []
    k, pos, low = 0, 0, whole.lower()
    for node in run.nodes:
        if not isinstance(node, Tag):
            k += 1
            continue
        n = len(_strings(node))
        own = " ".join(t.strip() for t in translated[k : k + n] if t.strip()).strip(" .,;:!?")
        others = translated[:k] + translated[k + n :]
        k += n
        at = low.find(own.lower(), pos) if own else -1
        found = (at, at + len(own)) if at >= 0 else _words_of(own, others, low, pos)
        if found is None:
            return None
        spans.append((*found, node))
        pos = found[1]
    return spans


def _write(run: _Run, whole: str, spans: list[Span]) -> None:
    """Replace the run by `whole` (its translation, stripped) with each inline element around
    its span, in the order of the spans; the run's leading and trailing space stay."""
    text = run.text()
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
    anchor = NavigableString("")
    run.nodes[0].insert_before(anchor)
    for node in run.nodes:
        node.extract()
    pieces: list[NavigableString | Tag] = [NavigableString(lead)] if lead else []
    cursor = 0
    for start, end, tag in spans:
        if start > cursor:
            pieces.append(NavigableString(whole[cursor:start]))
        strings = _strings(tag)
        for extra in strings[1:]:
            extra.extract()
        if strings:
            strings[0].replace_with(NavigableString(whole[start:end]))
        pieces.append(tag)
        cursor = end
    if cursor < len(whole):
        pieces.append(NavigableString(whole[cursor:]))
    if trail:
        pieces.append(NavigableString(trail))
    for piece in pieces:
        anchor.insert_before(piece)
    anchor.extract()
