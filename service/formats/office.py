"""Office documents: Word (.docx, python-docx), OpenDocument text and presentations (.odt, .odp,
odfpy) and PowerPoint (.pptx, its slide XML through lxml).

Each is read into its paragraphs (Word: body and table cells; OpenDocument: paragraphs and
headings, in frames, tables and speaker notes too; PowerPoint: the paragraphs of every slide and
of its speaker notes), the paragraphs are translated, and the file is written back with
everything else as it was: paragraph styles, and formatting that changes inside a paragraph: a
paragraph whose runs (Word, PowerPoint) or spans (OpenDocument) differ in formatting is
translated as an HTML fragment, one `<span>` per run of another formatting than the paragraph's
main one, by the same path as `format: "html"` (service/html.py: translated as one sentence, each
span put back around its own words), and written back as runs/spans with the formatting they came
from. A PowerPoint line break (`a:br`) or field (`a:fld`: a slide number, a date) stays where it
is, between the texts it separates. The zip is checked first (zipxml.check_zip).
"""

from __future__ import annotations

import copy
import html
import io
import re
from collections.abc import Callable
from typing import Any

from service.errors import bad_request
from service.formats import zipxml
from service.formats.base import Format, Job, Limits, TranslateAs

Runs = list[tuple[str, Any]]  # a paragraph as its runs: (text, a hashable key of the run's formatting)
Write = Callable[[list[Runs]], bytes]  # each paragraph's translated runs -> the file's bytes
Reader = Callable[[bytes, Limits], tuple["Paragraphs", Write]]


class Paragraphs:
    """Paragraphs to translate, given as their runs. A paragraph of one formatting comes back as
    one run of it; one of several, through HTML: the runs of its main formatting (the most
    characters) as bare text, every other run as a `<span id="rN">`; the translation's bare text
    takes the main formatting, each span its run's. Made and read back (`pieces`) in the file
    job's thread; only `translate` runs on the event loop."""

    def __init__(self, units: list[Runs], limits: Limits) -> None:
        limits.check(["".join(t for t, _ in runs) for runs in units])
        self.units = units
        self.plain: list[int] = []
        self.marked: list[tuple[int, Any]] = []  # (paragraph, its main formatting)
        self.fragments: list[str] = []
        for k, runs in enumerate(units):
            formats = {f for _, f in runs}
            if len(formats) == 1:
                self.plain.append(k)
                continue
            weight: dict[Any, int] = {}
            for t, f in runs:
                weight[f] = weight.get(f, 0) + len(t)
            main = max(weight, key=lambda f: weight[f])
            esc = [html.escape(t, quote=False) for t, _ in runs]
            self.fragments.append(
                "".join(
                    e if f == main else f'<span id="r{i}">{e}</span>' for i, (e, (_, f)) in enumerate(zip(esc, runs))
                )
            )
            self.marked.append((k, main))

    async def translate(self, translate_as: TranslateAs) -> tuple[list[str], list[str]]:
        """The translations of the plain paragraphs' texts and of the marked ones' fragments."""
        texts = ["".join(t for t, _ in self.units[k]) for k in self.plain]
        plain = await translate_as(texts, False) if texts else []
        return plain, await translate_as(self.fragments, True) if self.fragments else []

    def pieces(self, plain: list[str], fragments: list[str]) -> list[Runs]:
        """Each paragraph as [(text, format)] to write back, from `translate`'s answer."""
        from bs4 import BeautifulSoup, NavigableString, Tag

        out: list[Runs] = [[] for _ in self.units]
        for k, tr in zip(self.plain, plain):
            out[k] = [(tr, self.units[k][0][1])]
        for (k, main), tr in zip(self.marked, fragments):
            runs, got = self.units[k], []
            for node in BeautifulSoup(tr, "html.parser").contents:
                if isinstance(node, NavigableString):
                    got.append((str(node), main))
                elif isinstance(node, Tag):  # a span we made: its run's formatting
                    i = int(str(node.get("id", "r0"))[1:] or 0)
                    got.append((node.get_text(), runs[i][1] if i < len(runs) else main))
            out[k] = [(t, f) for t, f in got if t]
        return out


async def translate_office(job: Job) -> bytes:
    """An office document: read and written in the file job's thread, translated in between."""
    paragraphs, write = await job.offload(READERS[job.ext], job.data, job.limits)
    done = await paragraphs.translate(job.translate_as)
    return await job.offload(lambda: write(paragraphs.pieces(*done)))


def read_docx(data: bytes, limits: Limits) -> tuple[Paragraphs, Write]:
    """A .docx's paragraphs (body and table cells) and how to write their translations back."""
    import docx  # python-docx
    from docx.text.run import Run

    zipxml.check_zip(data, limits.max_elements)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any parse failure of the upload is the client's
        raise bad_request("not a valid .docx file") from None
    paragraphs = list(document.paragraphs)
    for table in document.tables:
        for row in table.rows:
            for cell in row.cells:
                paragraphs += cell.paragraphs
    todo = [(p, runs) for p in paragraphs if p.text.strip() and (runs := [r for r in p.runs if r.text])]
    # a run's formatting: its properties element as XML (runs of equal properties look alike)
    units = [[(r.text, _rpr_key(r._r.rPr)) for r in runs] for _, runs in todo]

    def write(done: list[Runs]) -> bytes:
        for (p, runs), unit, pieces in zip(todo, units, done):
            template: dict[str, Any] = {}
            for r, (_, key) in zip(runs, unit):
                template.setdefault(key, r)
            for text, key in pieces:  # new runs before the first, each a copy of a run of its format
                element = copy.deepcopy(template[key]._r)
                runs[0]._r.addprevious(element)
                Run(element, p).text = text
            for r in runs:
                r.text = ""
        out = io.BytesIO()
        document.save(out)
        return out.getvalue()

    return Paragraphs(units, limits), write


def _rpr_key(rpr: Any) -> str:
    from lxml import etree

    return "" if rpr is None else etree.tostring(rpr).decode()


ODF_TYPES = {
    ".odt": "application/vnd.oasis.opendocument.text",
    ".odp": "application/vnd.oasis.opendocument.presentation",
}


def read_odt(data: bytes, limits: Limits) -> tuple[Paragraphs, Write]:
    """An .odt's paragraphs and headings and how to write their translations back."""
    return _read_odf(data, limits, ".odt")


def read_odp(data: bytes, limits: Limits) -> tuple[Paragraphs, Write]:
    """An .odp's paragraphs (its slides' text boxes, tables and speaker notes) and how to write
    their translations back."""
    return _read_odf(data, limits, ".odp")


def _read_odf(data: bytes, limits: Limits, ext: str) -> tuple[Paragraphs, Write]:
    from odf import teletype, text
    from odf.element import Element
    from odf.opendocument import load

    z = zipxml.check_zip(data, limits.max_elements, ".docx/.odt" if ext == ".odt" else ext)
    # an .odt keeps what it always took; a presentation must say it is one (its `mimetype` member)
    if ext != ".odt" and _mimetype(z) not in (ODF_TYPES[ext], ODF_TYPES[ext] + "-template"):
        raise bad_request(f"not a valid {ext} file (an OpenDocument of another kind, or none)")
    try:
        document = load(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any parse failure of the upload is the client's
        raise bad_request(f"not a valid {ext} file") from None
    paragraphs = [p for kind in (text.P, text.H) for p in document.getElementsByType(kind)]
    todo = [p for p in paragraphs if teletype.extractText(p).strip()]
    span = (text.TEXTNS, "span")
    units = []
    for p in todo:  # direct children: text (the paragraph's own style, "") and spans (their style)
        runs = []
        for child in p.childNodes:
            style = child.getAttribute("stylename") if getattr(child, "qname", None) == span else ""
            runs.append((teletype.extractText(child) if child.nodeType == child.ELEMENT_NODE else str(child), style))
        units.append([(t, f or "") for t, f in runs if t])

    def write(done: list[Runs]) -> bytes:
        for p, pieces in zip(todo, done):
            _empty(p)
            for piece, style in pieces:
                if style:
                    element: Element = text.Span(stylename=style)
                    teletype.addTextToElement(element, piece)
                    p.appendChild(element)
                else:
                    teletype.addTextToElement(p, piece)
        out = io.BytesIO()
        document.write(out)
        return out.getvalue()

    return Paragraphs(units, limits), write


def _mimetype(z: Any) -> str:
    try:
        return zipxml.read(z, "mimetype").decode("ascii", "replace").strip()
    except Exception:  # noqa: BLE001 - no such member: no type
        return ""


def _empty(element: Any) -> None:
    """Remove every child of an odfpy element (its removeChild only takes elements: text nodes
    are taken off the list directly)."""
    for child in list(element.childNodes):
        if child.nodeType == child.ELEMENT_NODE:
            element.removeChild(child)
        else:
            element.childNodes.remove(child)


_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
# the members with a presentation's text: its slides and their speaker notes, in slide order
_SLIDE = re.compile(r"ppt/(slides/slide|notesSlides/notesSlide)(\d+)\.xml")


def read_pptx(data: bytes, limits: Limits) -> tuple[Paragraphs, Write]:
    """A .pptx's paragraphs (slides, then speaker notes) and how to write their translations back:
    each paragraph's runs (`a:r`) between line breaks and fields are one unit, a run's formatting
    its properties (`a:rPr`) as XML; the other members are copied as they are."""
    from lxml import etree

    z = zipxml.check_zip(data, limits.max_elements, ".pptx")
    names = z.namelist()
    if "ppt/presentation.xml" not in names:
        raise bad_request("not a valid .pptx file (no ppt/presentation.xml: another kind of document)")
    found = [(m.group(1), int(m.group(2)), n) for n in names if (m := _SLIDE.fullmatch(n))]
    members = [n for *_, n in sorted(found, key=lambda x: (x[0] != "slides/slide", x[1]))]
    roots = {n: zipxml.parse(zipxml.read(z, n), n, ".pptx") for n in members}
    groups: list[list[Any]] = []  # each unit's runs (a:r elements)
    for n in members:
        for p in roots[n].iter(f"{_A}p"):
            group: list[Any] = []
            for child in [*p, None]:
                if child is not None and child.tag == f"{_A}r":
                    group.append(child)
                    continue
                if "".join(_run_text(r) for r in group).strip():
                    groups.append(group)
                group = []
    units = [[(t, _rpr_key(r.find(f"{_A}rPr"))) for r in g if (t := _run_text(r))] for g in groups]

    def write(done: list[Runs]) -> bytes:
        for group, pieces in zip(groups, done):
            template: dict[str, Any] = {}
            for r in group:
                template.setdefault(_rpr_key(r.find(f"{_A}rPr")), r)
            first = group[0]
            for text, key in pieces:  # new runs before the first, each a copy of a run of its format
                element = copy.deepcopy(template[key])
                element.tail = None
                t = element.find(f"{_A}t")
                if t is None:
                    t = etree.SubElement(element, f"{_A}t")
                t.text = text
                first.addprevious(element)
            for r in group:
                r.getparent().remove(r)
        replaced = {
            n: etree.tostring(roots[n], xml_declaration=True, encoding="UTF-8", standalone=True) for n in members
        }
        return zipxml.rewrite(z, replaced)

    return Paragraphs(units, limits), write


def _run_text(run: Any) -> str:
    t = run.find(f"{_A}t")
    return (t.text or "") if t is not None else ""


# The reader of each office format, looked up when a file comes (service/files.py's `_docx` and
# `_odt` set these: a test holds a job inside its reader there).
READERS: dict[str, Reader] = {".docx": read_docx, ".odt": read_odt, ".odp": read_odp, ".pptx": read_pptx}

FORMATS = [
    Format(
        (".docx",),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",),
        "Word document: paragraph styles, tables and formatting inside paragraphs kept",
        translate_office,
    ),
    Format(
        (".odt",),
        (ODF_TYPES[".odt"],),
        "OpenDocument text: paragraph styles and formatting inside paragraphs kept",
        translate_office,
    ),
    Format(
        (".pptx",),
        ("application/vnd.openxmlformats-officedocument.presentationml.presentation",),
        "PowerPoint presentation: slides and speaker notes, formatting inside paragraphs kept",
        translate_office,
    ),
    Format(
        (".odp",),
        (ODF_TYPES[".odp"],),
        "OpenDocument presentation: slides and speaker notes, formatting inside paragraphs kept",
        translate_office,
    ),
]
