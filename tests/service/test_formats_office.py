"""PowerPoint (.pptx, its slide XML built here by hand: python-pptx is not installed) and
OpenDocument presentations (.odp, odfpy): every slide's paragraphs and the speaker notes
translated, formatting inside a paragraph kept on its own words (as .docx runs), line breaks,
fields and every other member kept; hostile and mislabelled files refused."""

from __future__ import annotations

import io
import zipfile

from tests.service.test_files import _zip, download, html_pieces, upload
from tests.service.test_formats_common import dictionary, words

A = "http://schemas.openxmlformats.org/drawingml/2006/main"
P = "http://schemas.openxmlformats.org/presentationml/2006/main"
IMAGE = bytes(range(256)) * 4  # a picture: copied byte for byte


def _shape(paragraphs: str, name: str = "Text 1") -> str:
    return (
        f'<p:sp><p:nvSpPr><p:cNvPr id="2" name="{name}"/><p:cNvSpPr/><p:nvPr/></p:nvSpPr><p:spPr/>'
        f"<p:txBody><a:bodyPr/><a:lstStyle/>{paragraphs}</p:txBody></p:sp>"
    )


def _slide(shapes: str, root: str = "p:sld") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<{root} xmlns:a="{A}" xmlns:p="{P}">'
        f"<p:cSld><p:spTree><p:nvGrpSpPr/><p:grpSpPr/>{shapes}</p:spTree></p:cSld></{root}>"
    ).encode()


def pptx(slide: bytes | None = None, notes: bytes | None = None) -> bytes:
    title = _shape('<a:p><a:r><a:rPr lang="de-DE"/><a:t>der hund</a:t></a:r></a:p>', "Title 1")
    body = _shape(
        '<a:p><a:pPr algn="ctr"/><a:r><a:rPr lang="de-DE" b="1"/><a:t>die katze </a:t></a:r>'
        '<a:r><a:rPr lang="de-DE"/><a:t>schläft</a:t></a:r></a:p>'
        "<a:p><a:r><a:t>ein mann</a:t></a:r><a:br/><a:r><a:t>das kind</a:t></a:r>"
        '<a:fld id="{B6F15528-21DE-4FAA-801E-634DDDAF4B2B}" type="slidenum"><a:t>1</a:t></a:fld></a:p>'
        "<a:p><a:endParaRPr/></a:p>"
    )
    members = {
        "[Content_Types].xml": b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
        b'content-types"><Default Extension="xml" ContentType="application/xml"/></Types>',
        "_rels/.rels": b'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
        b'relationships"/>',
        "ppt/presentation.xml": f'<?xml version="1.0"?><p:presentation xmlns:p="{P}"/>'.encode(),
        "ppt/slides/slide1.xml": slide or _slide(title + body),
        "ppt/notesSlides/notesSlide1.xml": notes
        or _slide(_shape("<a:p><a:r><a:t>der hund spielt</a:t></a:r></a:p>"), "p:notes"),
        "ppt/media/image1.png": IMAGE,
    }
    return _zip(members)


def test_pptx_slides_and_notes_are_translated_with_formatting_breaks_and_fields_kept(client, monkeypatch):
    from lxml import etree

    dictionary(monkeypatch)
    out = zipfile.ZipFile(io.BytesIO(download(client, upload(client, "talk.pptx", pptx()))))
    assert out.read("ppt/media/image1.png") == IMAGE
    slide = etree.fromstring(out.read("ppt/slides/slide1.xml"))
    ns = {"a": A}
    texts = [[t.text for t in p.iterfind(".//a:t", ns)] for p in slide.iterfind(".//a:p", ns)]
    title, marked, lines, empty = slide.findall(".//a:p", ns)
    assert texts[0] == ["the dog"] and texts[3] == []
    # the runs of two formattings: one sentence through the HTML path, the bold one on its own words
    pieces = html_pieces(client, 'die katze <span id="r1">schläft</span>')
    assert pieces == [("the cat ", None), ("sleeps", "r1")]
    runs = marked.findall("a:r", ns)
    assert [r.findtext("a:t", namespaces=ns) for r in runs] == [t for t, _ in pieces if t]
    assert [r.find("a:rPr", ns).get("b") for r in runs] == ["1" if span is None else None for t, span in pieces if t]
    assert marked.find("a:pPr", ns).get("algn") == "ctr"  # the paragraph's own properties stay
    # a line break and a field stay where they were, between the texts they separate
    assert [etree.QName(c).localname for c in lines] == ["r", "br", "r", "fld"]
    assert texts[2] == ["a man", "the child", "1"]
    notes = etree.fromstring(out.read("ppt/notesSlides/notesSlide1.xml"))
    assert [t.text for t in notes.iterfind(".//a:t", ns)] == ["the dog plays"]


def test_pptx_hostile_and_mislabelled_files_are_refused(client):
    from tests.service.test_files import _docx

    laughs = b'<?xml version="1.0"?><!DOCTYPE p:sld [<!ENTITY lol "lol"><!ENTITY l2 "&lol;&lol;">]><p:sld>&l2;</p:sld>'
    r = upload(client, "laughs.pptx", pptx(slide=laughs))
    assert r.status_code == 400 and "declares a DTD or entities" in r.json()["error"]
    bomb = _zip({"ppt/presentation.xml": b"<x/>", "ppt/media/big.bin": b"\0" * 60_000_000})
    r = upload(client, "bomb.pptx", bomb)
    assert r.status_code == 413 and r.json()["error"] == "file unpacks to more than 50 MB"
    assert upload(client, "not.pptx", b"PK but not a zip").json() == {
        "error": "not a valid .pptx file (not a zip archive)"
    }
    r = upload(client, "letter.pptx", _docx())  # a Word document under a PowerPoint name
    assert r.status_code == 400
    assert r.json()["error"] == "not a valid .pptx file (no ppt/presentation.xml: another kind of document)"
    r = upload(client, "broken.pptx", pptx(slide=b"<p:sld><unclosed></p:sld>"))
    assert r.status_code == 400
    assert r.json()["error"] == "not a valid .pptx file: ppt/slides/slide1.xml is not well-formed XML"


def _odp(extra_paragraphs: int = 0) -> bytes:
    from odf import draw, presentation, teletype, text
    from odf.opendocument import OpenDocumentPresentation
    from odf.style import MasterPage, PageLayout, Style, TextProperties

    doc = OpenDocumentPresentation()
    layout = PageLayout(name="Layout")
    doc.automaticstyles.addElement(layout)
    master = MasterPage(name="Default", pagelayoutname=layout)
    doc.masterstyles.addElement(master)
    bold = Style(name="Bold", family="text")
    bold.addElement(TextProperties(fontweight="bold"))
    doc.automaticstyles.addElement(bold)
    page = draw.Page(name="Slide 1", masterpagename=master)
    doc.presentation.addElement(page)
    frame = draw.Frame(width="20cm", height="3cm", x="1cm", y="1cm")
    page.addElement(frame)
    box = draw.TextBox()
    frame.addElement(box)
    box.addElement(text.P(text="der hund"))
    p = text.P()
    p.addElement(text.Span(stylename=bold, text="die katze "))
    teletype.addTextToElement(p, "schläft")
    box.addElement(p)
    for _ in range(extra_paragraphs):
        box.addElement(text.P())
    notes = presentation.Notes()
    page.addElement(notes)
    nframe = draw.Frame(width="10cm", height="3cm", x="1cm", y="1cm")
    notes.addElement(nframe)
    nbox = draw.TextBox()
    nframe.addElement(nbox)
    nbox.addElement(text.P(text="ein mann"))
    buf = io.BytesIO()
    doc.write(buf)
    return buf.getvalue()


def test_odp_slides_and_notes_keep_their_spans(client, monkeypatch):
    from odf import draw, presentation, teletype, text
    from odf.opendocument import load

    dictionary(monkeypatch)
    out = load(io.BytesIO(download(client, upload(client, "talk.odp", _odp()))))
    want = [words("der hund"), words("ein mann")]
    page = out.getElementsByType(draw.Page)[0]
    first, marked = page.getElementsByType(draw.TextBox)[0].getElementsByType(text.P)
    assert teletype.extractText(first) == want[0]
    pieces = html_pieces(client, 'die katze <span id="r1">schläft</span>')
    assert teletype.extractText(marked) == "".join(t for t, _ in pieces)
    spans = marked.getElementsByType(text.Span)
    assert [teletype.extractText(x) for x in spans] == [t for t, span in pieces if span is None and t]
    assert {x.getAttribute("stylename") for x in spans} == {"Bold"}
    notes = page.getElementsByType(presentation.Notes)[0]
    assert [teletype.extractText(p) for p in notes.getElementsByType(text.P)] == [want[1]]


def test_odp_mislabelled_and_hostile_files_are_refused(client):
    from odf import text
    from odf.opendocument import OpenDocumentText

    doc = OpenDocumentText()
    doc.text.addElement(text.P(text="der hund"))
    buf = io.BytesIO()
    doc.write(buf)
    r = upload(client, "letter.odp", buf.getvalue())  # a text document under a presentation's name
    assert r.status_code == 400
    assert r.json()["error"] == "not a valid .odp file (an OpenDocument of another kind, or none)"
    laughs = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><x>&a;&a;</x>'
    r = upload(client, "laughs.odp", _zip({"mimetype": b"application/vnd.oasis.opendocument.presentation",
                                            "content.xml": laughs}))  # fmt: skip
    assert r.status_code == 400 and "declares a DTD or entities" in r.json()["error"]
    assert upload(client, "x.odp", b"nothing").json() == {"error": "not a valid .odp file (not a zip archive)"}
