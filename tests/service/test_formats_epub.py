"""EPUB books: every XHTML document of the manifest translated through the HTML path (markup,
inline elements, SVG with its camelCase names kept; the result still XML), every other member
copied byte for byte, `mimetype` first and stored; the language set to the target; hostile and
mislabelled books refused."""

from __future__ import annotations

import io
import zipfile

from tests.service.test_files import _docx, download, upload
from tests.service.test_formats_common import dictionary

XHTML = "http://www.w3.org/1999/xhtml"
CSS = b"p { text-indent: 1em; }\n"
COVER = bytes(range(256)) * 8
CHAPTER = f"""<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">
<html xmlns="{XHTML}" xmlns:epub="http://www.idpf.org/2007/ops" xml:lang="de" lang="de">
<head><title>Kapitel eins</title><link rel="stylesheet" type="text/css" href="style.css"/></head>
<body>
<section epub:type="chapter">
<h1 id="c1">Kapitel eins</h1>
<p class="first">Der&nbsp;hund <b>spielt</b> mit der katze.</p>
<div class="cover"><svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"
 viewBox="0 0 600 800" preserveAspectRatio="xMidYMid meet"><image width="600" height="800"
 xlink:href="cover.jpg"/></svg></div>
<p>Die frau<br/>und das kind.</p>
<pre>der hund</pre>
</section>
</body>
</html>
"""
NAV = f"""<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE html>
<html xmlns="{XHTML}" xmlns:epub="http://www.idpf.org/2007/ops"><head><title>Buch</title></head>
<body><nav epub:type="toc"><ol><li><a href="chapter1.xhtml#c1">Kapitel eins</a></li></ol></nav></body></html>
"""
OPF = """<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/">
    <dc:identifier id="id">urn:uuid:1</dc:identifier><dc:title>Das Buch</dc:title><dc:language>de</dc:language>
  </metadata>
  <manifest>
    <item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>
    <item id="c1" href="chapter1.xhtml" media-type="application/xhtml+xml"/>
    <item id="css" href="style.css" media-type="text/css"/>
    <item id="cover" href="cover.jpg" media-type="image/jpeg"/>
  </manifest>
  <spine><itemref idref="c1"/></spine>
</package>
"""
CONTAINER = b"""<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""


def epub(chapter: str | bytes = CHAPTER, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("mimetype"), b"application/epub+zip")  # first, stored
        z.writestr("META-INF/container.xml", CONTAINER)
        z.writestr("OEBPS/content.opf", OPF)
        z.writestr("OEBPS/nav.xhtml", NAV)
        z.writestr("OEBPS/chapter1.xhtml", chapter)
        z.writestr("OEBPS/style.css", CSS)
        z.writestr("OEBPS/cover.jpg", COVER)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


def test_epub_documents_are_translated_and_the_rest_copied(client, monkeypatch):
    from lxml import etree

    sent = dictionary(monkeypatch)
    out = zipfile.ZipFile(io.BytesIO(download(client, upload(client, "book.epub", epub()))))
    first = out.infolist()[0]
    assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
    assert out.read("mimetype") == b"application/epub+zip"
    assert out.read("OEBPS/style.css") == CSS and out.read("OEBPS/cover.jpg") == COVER
    assert out.read("META-INF/container.xml") == CONTAINER
    assert [kind for kind, _ in sent] == ["html", "html"]  # the two documents, through the HTML path
    chapter = etree.fromstring(out.read("OEBPS/chapter1.xhtml"))  # still XML
    ns = {"h": XHTML, "s": "http://www.w3.org/2000/svg"}
    assert chapter.findtext("h:head/h:title", namespaces=ns) == "Chapter one"
    assert chapter.findtext(".//h:h1", namespaces=ns) == "Chapter one"
    assert chapter.find(".//h:h1", ns).get("id") == "c1"
    first_p = chapter.find(".//h:p[@class='first']", ns)
    assert "".join(first_p.itertext()) == "The\u00a0dog plays with the cat."
    assert first_p.findtext("h:b", namespaces=ns) == "plays"
    svg = chapter.find(".//s:svg", ns)  # set aside and put back as it was: camelCase names kept
    assert svg.get("viewBox") == "0 0 600 800" and svg.get("preserveAspectRatio") == "xMidYMid meet"
    assert svg[0].get("{http://www.w3.org/1999/xlink}href") == "cover.jpg"
    assert chapter.find(".//h:section", ns).get("{http://www.idpf.org/2007/ops}type") == "chapter"
    assert chapter.findtext(".//h:pre", namespaces=ns) == "der hund"  # code stays
    second = chapter.findall(".//h:p", ns)[1]
    assert "".join(second.itertext()) == "The woman" + "and the child." and second.find("h:br", ns) is not None
    assert chapter.find(".//h:link", ns).get("href") == "style.css"
    # the target language: the package's and each translated document's
    assert chapter.get("{http://www.w3.org/XML/1998/namespace}lang") == "en" and chapter.get("lang") == "en"
    opf = etree.fromstring(out.read("OEBPS/content.opf"))
    assert opf.findtext(".//{http://purl.org/dc/elements/1.1/}language") == "en"
    assert opf.findtext(".//{http://purl.org/dc/elements/1.1/}title") == "Das Buch"  # metadata otherwise kept
    nav = etree.fromstring(out.read("OEBPS/nav.xhtml"))
    link = nav.find(".//h:a", ns)
    assert link.text == "Chapter one" and link.get("href") == "chapter1.xhtml#c1"


def test_epub_hostile_and_mislabelled_books_are_refused(client):
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE html [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        f'<html xmlns="{XHTML}"><body><p>&b;</p></body></html>'
    )
    r = upload(client, "laughs.epub", epub(laughs))
    assert r.status_code == 400
    assert r.json()["error"] == "file member 'OEBPS/chapter1.xhtml' declares a DTD or entities"
    r = upload(client, "bomb.epub", epub(extra={"OEBPS/big.bin": b"\0" * 60_000_000}))
    assert r.status_code == 413 and r.json()["error"] == "file unpacks to more than 50 MB"
    r = upload(client, "letter.epub", _docx())
    assert r.status_code == 400
    assert r.json()["error"] == "not a valid .epub file (no META-INF/container.xml: another kind of zip)"
    assert upload(client, "x.epub", b"%PDF-1.4").json() == {"error": "not a valid .epub file (not a zip archive)"}
    deep = f'<html xmlns="{XHTML}"><body>' + "<div>" * 200 + "der hund" + "</div>" * 200 + "</body></html>"
    assert upload(client, "deep.epub", epub(deep)).status_code == 200  # lxml and the HTML path allow it
    deeper = f'<html xmlns="{XHTML}"><body>' + "<div>" * 600 + "der hund" + "</div>" * 600 + "</body></html>"
    r = upload(client, "deeper.epub", epub(deeper))
    assert r.status_code == 400  # libxml2 stops at 256 levels: read as HTML, where the walk refuses 512


def test_an_epub_document_that_is_not_xml_goes_through_the_html_path_as_it_is(client, monkeypatch):
    dictionary(monkeypatch)
    sloppy = "<html><body><p>Der hund &nbsp; spielt<p>ein mann</body></html>"
    out = zipfile.ZipFile(io.BytesIO(download(client, upload(client, "sloppy.epub", epub(sloppy)))))
    page = out.read("OEBPS/chapter1.xhtml").decode()
    assert "The dog" in page and "plays" in page and "a man" in page
