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
`class="notranslate"`. Kept whole inside their sentence: inline elements that name a person, a
tag or a page, as Mastodon, Misskey, Pleroma and Discourse write them (`class="mention"`,
`hashtag`, `u-url`, `h-card`, `rel="tag"`, an element whose text is a URL, e-mail address,
@mention or #hashtag, a link whose text is its own address or ends it), and inline elements not to
be translated (`<code>`, `translate="no"`): the sentence is translated with a protected stand-in
for each (its own text where that is one URL or mention, else `{0}`, `{1}`...: service/protect.py
keeps both byte for byte), and the element goes back, untouched, where its stand-in came out (the
user name of `@<span>anna</span>` was translated as a sentence of its own before).

Kept as written, untranslated, where Python's parser would hand them over as text or turn them
into U+FFFD: a comment, CDATA section, declaration or tag left open at the end of the input (HTML
reads an open comment to the end; it stays last, after the end tags), and a character reference
that names no character (`&#0;`, `&#x110000;`, a surrogate, a control).
Comments, CDATA and such references inside a sentence stay in its block, after its translation.
Translations are inserted as text, never as markup, so the output holds no tag or attribute that
was not in the input. Blocks nested more than MAX_DEPTH deep are refused (400); the walk itself
needs no recursion.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bs4 import BeautifulSoup, Comment, NavigableString, Tag
from bs4.builder._htmlparser import BeautifulSoupHTMLParser, HTMLParserTreeBuilder
from bs4.element import CData, Declaration, Doctype, PreformattedString, ProcessingInstruction

from service import protect
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


def _values(tag: Tag, name: str) -> list[str]:
    value: list[str] | str = tag.get(name) or []  # type: ignore[assignment]
    return value if isinstance(value, list) else value.split()


def _skipped(tag: Tag) -> bool:
    return tag.name in SKIP or str(tag.get("translate", "")).lower() == "no" or "notranslate" in _values(tag, "class")


# Link markup of the fediverse and forums: Mastodon and Pleroma `<span class="h-card"><a class="u-url
# mention">@<span>anna</span></a></span>`, `<a class="mention hashtag" rel="tag">#<span>x</span></a>`;
# Discourse `<a class="mention">`, `mention-group`, `hashtag`, `hashtag-cooked` (an icon and the name).
NAMING = {"mention", "mention-group", "hashtag", "hashtag-cooked", "u-url", "h-card"}


def _atomic(tag: Tag, by_text: bool = True) -> bool:
    """An inline element kept whole inside its sentence: one that names a person, a tag or a page
    (`NAMING` classes, `rel="tag"`; `by_text`: its text a URL, address, mention or hashtag, a link
    whose text is its address, ends it or is its host), or one not to be translated (`_skipped`)."""
    if tag.name not in INLINE and tag.name != "code":
        return False
    if tag.name == "code" or (
        tag.attrs and (_skipped(tag) or NAMING.intersection(_values(tag, "class")) or "tag" in _values(tag, "rel"))
    ):
        return True
    text = _short_text(tag) if by_text else None
    if not text or any(ch.isspace() for ch in text):
        return False
    if protect.reference(text):
        return True
    href = str(tag.get("href") or "") if tag.name == "a" else ""
    core = text.rstrip("…")  # a shortened address ("example.com/very/lo…")
    return bool(href) and (
        text == href
        or ((href.endswith(core) or core in href) and ("/" in core or "." in core.strip(".")))
        or urlsplit(href).netloc.lower().removeprefix("www.") == core.lower().removeprefix("www.")
    )


def _short_text(tag: Tag, most: int = 2048, nodes: int = 64) -> str | None:
    """The element's text, stripped; None when it is longer than `most` characters or `nodes`
    nodes (no address is: Mastodon's shortened link is 7): read lazily, so that a large element
    costs no more than that."""
    out, n = [], 0
    for k, node in enumerate(tag.descendants):
        if k >= nodes:
            return None
        if isinstance(node, NavigableString) and not isinstance(node, _NOT_TEXT):
            out.append(str(node))
            n += len(node)
            if n > most:
                return None
    return "".join(out).strip()


@dataclass
class _Run:
    """Consecutive inline content of one block: text nodes, simple inline elements, and elements
    kept whole (`_atomic`) with the stand-in that goes to the model for each (set by `_read`)."""

    nodes: list[NavigableString | Tag]
    kept: dict[int, tuple[str, str]] = field(default_factory=dict)  # id(element) -> (stand-in, text)

    def __post_init__(self) -> None:
        self.whole = {id(n) for n in self.nodes if isinstance(n, Tag) and _atomic(n)}

    def text(self) -> str:
        return "".join(_text(n) for n in self.nodes)

    def strings(self) -> list[NavigableString]:
        """The text nodes to translate (an element kept whole has none)."""
        return [s for n in self.nodes if id(n) not in self.whole for s in (_strings(n) if isinstance(n, Tag) else [n])]

    def has_tags(self) -> bool:
        return any(isinstance(n, Tag) for n in self.nodes)

    def masked(self) -> str:
        """The run's text with each element kept whole replaced by its stand-in."""
        return "".join(self._masked(n) for n in self.nodes)

    def _masked(self, node: NavigableString | Tag) -> str:
        text = _text(node)
        if id(node) not in self.kept:
            return text
        standin, core = self.kept[id(node)]
        return text.replace(core, standin, 1) if core else standin

    def choose_standins(self) -> None:
        """A stand-in for each element kept whole: its text where that is one protected URL,
        address, mention or hashtag found once in the run, else the first `{k}` not in the run."""
        full, k = self.text(), 0
        for node in self.nodes:
            if id(node) not in self.whole:
                continue
            core = _text(node).strip()
            if protect.reference(core) and full.count(core) == 1:
                self.kept[id(node)] = (core, core)
                continue
            while f"{{{k}}}" in full:
                k += 1
            self.kept[id(node)] = (f"{{{k}}}", core)
            k += 1


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
            if _atomic(child):
                current.append(child)  # kept whole, inside its sentence
            elif _skipped(child):
                flush()
            elif child.name in INLINE and not any(
                isinstance(d, Tag) and (d.name not in INLINE or _atomic(d, by_text=False)) for d in child.descendants
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
        _Translated(run, whole.strip(), [next(rest) for _ in originals], originals)
        for run, whole, originals in zip(runs, out[:n_wholes], nodes)
    ]
    aligning = [t for t in tagged if t.restored and t.restored[0] and _element_spans(t.run)]
    pairs = [(t.run.text().strip(), t.restored[0]) for t in aligning if t.restored]
    for t, links in zip(aligning, await align(pairs) if align and pairs else []):
        t.links = links
    return await run_sync(_write_back, soup, tagged)


@dataclass
class _Translated:
    """A run and its translation: whole (with the stand-ins), its text nodes' one by one (the
    originals beside), and the word alignment of the whole where one was asked for."""

    run: _Run
    whole: str
    translated: list[str]
    originals: list[str]
    links: Links = field(default_factory=list)

    def __post_init__(self) -> None:
        self.restored = _restored(self.whole, list(self.run.kept.values()))


def _restored(whole: str, kept: list[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]] | None:
    """`whole` with each stand-in (its first occurrence) replaced by the text of its element, and
    where each element's text is in it; None when a stand-in is missing or two overlap."""
    found = sorted((whole.find(standin), k) for k, (standin, _) in enumerate(kept))
    if any(at < 0 for at, _ in found):
        return None
    out, places, cursor = [], [(0, 0)] * len(kept), 0
    for at, k in found:
        standin, core = kept[k]
        if at < cursor:
            return None
        out.append(whole[cursor:at])
        start = sum(len(piece) for piece in out)
        out.append(core)
        places[k] = (start, start + len(core))
        cursor = at + len(standin)
    out.append(whole[cursor:])
    return "".join(out), places


def _read(html: str) -> tuple[BeautifulSoup, list[_Run], list[str], int, list[list[str]]]:
    """The parsed page, its runs, and the texts to translate in one batch: each run's whole text
    (a stand-in for each element kept whole) and, where it has inline elements, each of its text
    nodes (to place the elements, or for the fallback; a run of plain text is translated once);
    how many are whole runs; each run's nodes."""
    soup = BeautifulSoup(html, builder=_Builder())
    runs = _runs(soup)
    for r in runs:
        r.choose_standins()
    wholes = [r.masked() for r in runs]
    nodes = [[str(s) for s in r.strings()] if r.has_tags() else [] for r in runs]
    return soup, runs, wholes + [t for ts in nodes for t in ts], len(wholes), nodes


def _write_back(soup: BeautifulSoup, tagged: list[_Translated]) -> str:
    """Each run replaced by its translation, the inline elements placed (each element kept
    whole where its stand-in came out); the page's markup."""
    for t in tagged:
        run = t.run
        if not run.has_tags():  # plain text: its translation replaces it
            _write(run, t.whole, [])
            continue
        spans = None
        if t.restored is not None:
            whole, places = t.restored
            held = [n for n in run.nodes if isinstance(n, Tag) and id(n) in run.kept]
            kept = [(a, b, n) for (a, b), n in zip(places, held)]
            if whole and t.links:
                spans = _merged(kept, _aligned(run, whole, t.links))
            if spans is None:
                spans = _merged(kept, _searched(run, whole, t.translated))
        if spans is not None:
            _write(run, whole, spans)
        else:  # text node by text node; the elements kept whole stay as they are
            for s, original, tr in zip(run.strings(), t.originals, t.translated):
                s.replace_with(NavigableString(_keep_space(original, tr)))
    return soup.decode(formatter="minimal")


def _merged(kept: list[Span], placed: list[Span] | None) -> list[Span] | None:
    """The elements kept whole and the others placed, in order; None where two overlap."""
    if placed is None:
        return None
    spans = sorted([*kept, *placed], key=lambda x: (x[0], x[1]))
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return None
    return spans


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
    """Each inline element of `run` (but those kept whole) and its characters in the run's text,
    stripped."""
    text = run.text()
    at = -(len(text) - len(text.lstrip()))
    spans = []
    for node in run.nodes:
        n = len(_text(node))
        if isinstance(node, Tag) and id(node) not in run.whole:
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
    """Each inline element (but those kept whole) around its own words: the translation of the
    element's text, found in `whole` in order, case-insensitively, or else its words
    (`_words_of`). None when one is not found."""
    spans: list[Span] = []
    k, pos, low = 0, 0, whole.lower()
    for node in run.nodes:
        if not isinstance(node, Tag):
            k += 1
            continue
        if id(node) in run.whole:  # placed by its stand-in; its text nodes are not translated
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
    its span, in the order of the spans (an element kept whole as it is); the run's leading and
    trailing space stay."""
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
        strings = _strings(tag) if id(tag) not in run.whole else []
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
