"""EPUB books (.epub): every XHTML document of the book (its OPF manifest's
`application/xhtml+xml` items: chapters, the navigation document) translated through
`format: "html"`'s path (service/html.py), every other member (images, styles, fonts, the NCX
table of contents) copied as it was; the book's language (`dc:language`, `xml:lang`/`lang` of
each translated document) set to the target where the route names it.

Checked first as the other zips (zipxml.check_zip: size, ratio, element count; XHTML may name
its DTD, as EPUB 2 documents do, but no internal subset and no entity). Each document is parsed
by lxml (no entity resolved, nothing loaded); its `<svg>` and `<math>` elements are set aside
(Python's HTML parser lowercases names: `viewBox` would become `viewbox`) and put back as they
were after its text is translated; the result is checked to be XML again (where the HTML path
left it otherwise, lxml's recovering parser mends it). A document lxml cannot read goes through
the HTML path as it is.
"""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import unquote

from service.errors import bad_request
from service.formats import zipxml
from service.formats.base import Format, Job, Limits

WHAT = ".epub"
MEMBERS = (".xml", ".xhtml", ".html", ".htm", ".opf", ".ncx", ".svg", ".smil")
_OPF = "{http://www.idpf.org/2007/opf}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_KEEP = "transerve-keep-{}"
_SET_ASIDE = ("svg", "math")
_SKIP = {"script", "style", "svg", "math", "code", "pre"}
_BLOCKS = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "td", "th", "caption", "figcaption",
    "blockquote", "title", "div", "section", "aside", "header", "footer",
}  # fmt: skip


class _Book:
    """A checked book: its zip, its OPF package document (path and tree), and its XHTML
    documents (member name -> the text to translate, and the subtrees set aside in it)."""

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.zip = zipxml.check_zip(data, limits.max_elements, WHAT, MEMBERS, doctype=True)
        names = set(self.zip.namelist())
        if "META-INF/container.xml" not in names:
            raise bad_request("not a valid .epub file (no META-INF/container.xml: another kind of zip)")
        if "mimetype" in names and zipxml.read(self.zip, "mimetype").strip() != b"application/epub+zip":
            raise bad_request("not a valid .epub file (its mimetype is not application/epub+zip)")
        container = zipxml.parse(zipxml.read(self.zip, "META-INF/container.xml"), "META-INF/container.xml", WHAT)
        rootfile = container.find(f".//{_CONTAINER}rootfile")
        self.opf_name = rootfile.get("full-path", "") if rootfile is not None else ""
        if self.opf_name not in names:
            raise bad_request("not a valid .epub file (its container names no package document in it)")
        self.opf = zipxml.parse(zipxml.read(self.zip, self.opf_name), self.opf_name, WHAT)
        base = posixpath.dirname(self.opf_name)
        self.documents: dict[str, tuple[str, list[bytes], bool]] = {}  # name -> (text, set aside, XML?)
        blocks, chars = 0, 0
        for item in self.opf.iter(f"{_OPF}item"):
            name = posixpath.normpath(posixpath.join(base, unquote(item.get("href", ""))))
            if item.get("media-type") != "application/xhtml+xml" or name not in names or name in self.documents:
                continue
            raw = zipxml.read(self.zip, name)
            try:
                root = _parse(raw)
            except Exception:  # noqa: BLE001 - not XML: the HTML path reads it as HTML, as a reader might
                text = raw.decode("utf-8", "replace")
                self.documents[name] = (text, [], False)
                blocks, chars = blocks + 1, chars + len(text)
                continue
            b, c = _measure(root)
            blocks, chars = blocks + b, chars + c
            self.documents[name] = (*_set_aside(root), True)
        limits.check_counts(blocks, chars)

    def write(self, translated: dict[str, str], target: str | None) -> bytes:
        replaced = {}
        for name, page in translated.items():
            _, kept, xml = self.documents[name]
            for k, subtree in enumerate(kept):
                page = page.replace(f"<!--{_KEEP.format(k)}-->", subtree.decode(), 1)
            replaced[name] = _as_xml(page, target) if xml else page.encode()
        if target:
            for language in self.opf.iter(f"{_DC}language"):
                language.text = target
            replaced[self.opf_name] = _tostring(self.opf)
        return zipxml.rewrite(self.zip, replaced)


def _parse(raw: bytes) -> Any:
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False)
    return etree.fromstring(raw, parser)


def _local(element: Any) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _measure(root: Any) -> tuple[int, int]:
    """The blocks with text of a document and the characters of its text (outside scripts,
    styles, code)."""
    blocks = chars = 0
    stack = [(root, False)]
    while stack:
        element, skipped = stack.pop()
        skipped = skipped or _local(element) in _SKIP
        if not skipped:
            own = (element.text or "").strip()
            chars += len(own)
            blocks += _local(element) in _BLOCKS and bool("".join(element.itertext()).strip())
        chars += len((element.tail or "").strip())
        stack += [(child, skipped) for child in element]
    return blocks, chars


def _set_aside(root: Any) -> tuple[str, list[bytes]]:
    """The document as XML text with each `<svg>`/`<math>` replaced by a comment, and those."""
    from lxml import etree

    kept: list[bytes] = []
    for element in [e for e in root.iter() if _local(e) in _SET_ASIDE]:
        if any(_local(a) in _SET_ASIDE for a in element.iterancestors()):
            continue  # inside one set aside already
        kept.append(etree.tostring(element, with_tail=False))
        marker = etree.Comment(_KEEP.format(len(kept) - 1))
        marker.tail = element.tail
        element.getparent().replace(element, marker)
    return _tostring(root).decode(), kept


def _tostring(root: Any) -> bytes:
    from lxml import etree

    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="utf-8")


def _as_xml(page: str, target: str | None) -> bytes:
    """A translated XHTML document as XML (mended by lxml's recovering parser where the HTML path
    left it otherwise), its root's language the target's where given."""
    from lxml import etree

    data = page.encode()
    try:
        root = _parse(data)
    except etree.XMLSyntaxError:
        parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, recover=True)
        root = etree.fromstring(data, parser)
        if root is None:
            return data
    else:
        if not target:
            return data
    if target:
        if root.get(_XML_LANG) is not None:
            root.set(_XML_LANG, target)
        if root.get("lang") is not None:
            root.set("lang", target)
    return _tostring(root)


async def translate_epub(job: Job) -> bytes:
    book: _Book = await job.offload(_Book, job.data, job.limits)
    names = list(book.documents)
    pages = await job.translate_as([book.documents[n][0] for n in names], True) if names else []
    return await job.offload(book.write, dict(zip(names, pages)), job.target)


FORMATS = [
    Format(
        (".epub",),
        ("application/epub+zip",),
        "EPUB book: its XHTML documents translated with their markup kept, everything else copied",
        translate_epub,
    )
]
