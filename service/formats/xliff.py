"""XLIFF (.xliff, .xlf; versions 1.2 and 2.0, lxml): each source without a translation gets
one, its inline codes kept.

XLIFF 1.2: each `trans-unit` (not `translate="no"`, nor in a group or file that is) whose
`target` is missing or empty gets a `target` after its `source` with `state="needs-review-
translation"` and `state-qualifier="mt-suggestion"` (1.2's own words for a machine translation
awaiting review). XLIFF 2.0: each `segment` of such a `unit` gets a `target` and
`state="translated"` (2.0 has no state for a draft: "translated" is the one that claims no
review; "reviewed" and "final" would). The file's target language (`target-language` of 1.2's
`file`, 2.0's `trgLang`) is set where missing and the route names it. Targets there already are
kept, as is everything else of the file.

Inline codes: a source without them is translated as text; with them, as an HTML fragment
through `format: "html"`'s path: a paired code with text inside (1.2 `g`, `mrk`; 2.0 `pc`,
`mrk`) a `<span>` put back around its own words, any other (`x`, `ph`, `bpt`/`ept`, `sc`/`ec`,
...) a `<code>` kept whole where its stand-in comes out; a code the translation lost is put at
the end of the target, so none is ever dropped.
"""

from __future__ import annotations

import copy
import html
from typing import Any

from service.errors import bad_request
from service.formats import zipxml
from service.formats.base import Format, Job

_NS = "urn:oasis:names:tc:xliff:document:"
_PAIRED = {"g", "mrk", "pc"}


def _local(element: Any) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _translatable(element: Any) -> bool:
    """Neither the element nor a group or file around it says `translate="no"`."""
    return all(e.get("translate") != "no" for e in (element, *element.iterancestors()))


class _Document:
    """A checked XLIFF document and the sources to translate (with where each target goes)."""

    def __init__(self, data: bytes, ext: str, max_elements: int) -> None:
        zipxml.check_xml(data, max_elements, ext)
        self.root = zipxml.parse(data, "the document", ext)
        ns = self.root.tag[1:].split("}")[0] if self.root.tag.startswith("{") else ""
        version = ns[len(_NS) :] if ns.startswith(_NS) else self.root.get("version", "")
        if _local(self.root) != "xliff" or version[:1] not in ("1", "2"):
            raise bad_request(f"not a valid {ext} file (not an XLIFF 1.2 or 2.0 document)")
        self.ns, self.v2 = (f"{{{ns}}}" if ns else ""), version.startswith("2")
        # (the element the source and target are in: a trans-unit or a segment, its source)
        self.todo: list[tuple[Any, Any]] = []
        holders = self.root.iter(f"{self.ns}segment" if self.v2 else f"{self.ns}trans-unit")
        for holder in holders:
            source, target = holder.find(f"{self.ns}source"), holder.find(f"{self.ns}target")
            if source is None or not "".join(source.itertext()).strip() or not _translatable(holder):
                continue
            if target is not None and "".join(target.itertext()).strip():
                continue  # translated already: kept
            self.todo.append((holder, source))

    def texts(self) -> tuple[list[str], list[str]]:
        """The plain sources' texts and the others' HTML fragments (in `todo` order)."""
        plain, fragments = [], []
        for _, source in self.todo:
            if len(source):
                fragments.append(_fragment(source, []))
            else:
                plain.append(source.text or "")
        return plain, fragments

    def write(self, plain: list[str], fragments: list[str], target: str | None) -> bytes:
        from lxml import etree

        p, f = iter(plain), iter(fragments)
        for holder, source in self.todo:
            element = holder.find(f"{self.ns}target")
            if element is None:
                element = source.makeelement(f"{self.ns}target", {})
                anchor = holder.find(f"{self.ns}seg-source")
                anchor = source if anchor is None else anchor
                before = anchor.getprevious()
                indent = anchor.getparent().text if before is None else before.tail
                element.tail = anchor.tail
                anchor.addnext(element)
                if indent is not None and not indent.strip():  # on a line of its own, as the source
                    anchor.tail = indent
            for child in list(element):
                element.remove(child)
            for name in ("{http://www.w3.org/XML/1998/namespace}space",):
                if source.get(name) is not None:
                    element.set(name, source.get(name))
            if len(source):
                codes: list[Any] = []
                _fragment(source, codes)
                element.text = None
                _fill(element, next(f), codes)
                _trim(element, source)
            else:
                element.text = next(p)
            if self.v2:
                holder.set("state", "translated")
            else:
                element.set("state", "needs-review-translation")
                element.set("state-qualifier", "mt-suggestion")
        if target:
            if self.v2 and not self.root.get("trgLang"):
                self.root.set("trgLang", target)
            for file in [] if self.v2 else self.root.iter(f"{self.ns}file"):
                if not file.get("target-language"):
                    file.set("target-language", target)
        return etree.tostring(self.root.getroottree(), xml_declaration=True, encoding="UTF-8")


def _trim(element: Any, source: Any) -> None:
    """No white space at the end of the target where the source has none there (the HTML path
    may leave a space after a code)."""
    end = (source[-1].tail if len(source) else source.text) or ""
    if end == end.rstrip():
        if len(element) and element[-1].tail:
            element[-1].tail = element[-1].tail.rstrip() or None
        elif not len(element) and element.text:
            element.text = element.text.rstrip()


def _paired(element: Any) -> bool:
    """A code whose text is translated with the sentence (not a protected one)."""
    return _local(element) in _PAIRED and element.get("translate") != "no" and element.get("mtype") != "protected"


def _fragment(element: Any, codes: list[Any]) -> str:
    """`element`'s content as an HTML fragment: a `<span id="iN">` for each paired code, a
    `<code id="iN">` for each other; `codes` gets the codes in that order."""
    out = [html.escape(element.text or "", quote=False)]
    for child in element:
        if isinstance(child.tag, str):
            codes.append(child)
            k = len(codes) - 1
            if _paired(child):
                out.append(f'<span id="i{k}">{_fragment(child, codes)}</span>')
            else:
                out.append(f'<code id="i{k}"></code>')
        out.append(html.escape(child.tail or "", quote=False))
    return "".join(out)


def _fill(element: Any, fragment: str, codes: list[Any]) -> None:
    """`element`'s content from a translated fragment: each span or code back as the code it
    stands for; the codes that are not paired ones and that the translation lost at the end (a
    lost paired code's words are gone with it)."""
    from bs4 import BeautifulSoup, NavigableString, Tag

    placed: set[int] = set()

    def add_text(parent: Any, text: str) -> None:
        if len(parent):
            parent[-1].tail = (parent[-1].tail or "") + text
        else:
            parent.text = (parent.text or "") + text

    def build(parent: Any, node: Any) -> None:
        for child in node.contents:
            if isinstance(child, NavigableString):
                add_text(parent, str(child))
                continue
            if not isinstance(child, Tag):
                continue
            ident = str(child.get("id", ""))
            k = int(ident[1:]) if ident[:1] == "i" and ident[1:].isdigit() else -1
            if not 0 <= k < len(codes) or k in placed:
                add_text(parent, child.get_text())
                continue
            placed.add(k)
            code = copy.deepcopy(codes[k])
            code.tail = None
            if _paired(codes[k]):
                for c in list(code):
                    code.remove(c)
                code.text = None
                build(code, child)
            parent.append(code)

    build(element, BeautifulSoup(fragment, "html.parser"))
    for k, code in enumerate(codes):  # a code the translation lost (not a paired one's text): at the end
        if k not in placed and not _paired(code):
            lost = copy.deepcopy(code)
            lost.tail = None
            element.append(lost)


async def translate_xliff(job: Job) -> bytes:
    document = await job.offload(_Document, job.data, job.ext, job.limits.max_elements)
    plain, fragments = document.texts()
    job.limits.check(["".join(source.itertext()) for _, source in document.todo])
    done_plain = await job.plain(plain)
    done_fragments = await job.translate_as(fragments, True) if fragments else []
    return await job.offload(document.write, done_plain, done_fragments, job.target)


FORMATS = [
    Format(
        (".xliff", ".xlf"),
        ("application/xliff+xml", "application/x-xliff+xml"),
        "XLIFF 1.2 or 2.0: sources without a translation translated (inline codes kept), marked for review",
        translate_xliff,
    )
]
