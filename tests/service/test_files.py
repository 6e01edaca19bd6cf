"""POST /translate_file: every format round-trips with its structure kept (subtitle timings, markup,
paragraph styles), the file is downloadable from the answer's URL and expires, and hostile
uploads (zip bomb, entity expansion, not a zip, unknown type, traversal names) are refused."""

from __future__ import annotations

import io
import time
import zipfile


def tr(client, texts):
    """What /translate answers for these texts (the tiny model's words)."""
    r = client.post("/translate", json={"q": texts, "source": "de", "target": "en"})
    assert r.status_code == 200
    return r.json()["translatedText"]


def upload(client, name: str, data: bytes, **fields):
    return client.post(
        "/translate_file",
        data={"source": "de", "target": "en", **fields},
        files={"file": (name, data, "application/octet-stream")},
    )


def download(client, r) -> bytes:
    assert r.status_code == 200, r.text
    url = r.json()["translatedFileUrl"]
    assert url.startswith("http://testserver/download_file/")
    got = client.get(url.removeprefix("http://testserver"))
    assert got.status_code == 200
    return got.content


def test_txt_lines_are_translated_and_blank_lines_kept(client):
    lines = ["der hund spielt", "", "  die katze schläft  ", "ein mann"]
    out = download(client, upload(client, "notes.txt", "\n".join(lines).encode())).decode().split("\n")
    want = tr(client, ["der hund spielt", "die katze schläft", "ein mann"])
    assert out == [want[0], "", f"  {want[1]}  ", want[2]]


def test_srt_keeps_numbers_and_timings(client):
    srt = "1\n00:00:01,000 --> 00:00:02,500\nder hund spielt\nim park\n\n2\n00:00:03,000 --> 00:00:04,000\nein mann\n"
    out = download(client, upload(client, "film.srt", srt.encode())).decode()
    blocks = out.strip("\n").split("\n\n")
    assert [b.split("\n")[:2] for b in blocks] == [
        ["1", "00:00:01,000 --> 00:00:02,500"],
        ["2", "00:00:03,000 --> 00:00:04,000"],
    ]
    want = tr(client, ["der hund spielt im park", "ein mann"])
    source = [["der hund spielt", "im park"], ["ein mann"]]  # an empty translation keeps the source
    for block, w, src in zip(blocks, want, source):
        text = block.split("\n")[2:]
        assert text == src if not w else " ".join(text) == w


def test_html_keeps_its_markup(client):
    page = "<html><body><h1>der hund</h1><p>die katze <b>schläft</b></p><code>x = 1</code></body></html>"
    out = download(client, upload(client, "page.html", page.encode())).decode()
    assert out.startswith("<html><body><h1>") and "<code>x = 1</code>" in out and "<b>" in out


def _docx() -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("der hund", level=1)
    p = d.add_paragraph()
    p.add_run("die katze ").bold = True
    p.add_run("schläft")
    p = d.add_paragraph()  # formatting that changes inside a sentence
    p.add_run("der hund spielt mit ")
    p.add_run("der katze").italic = True
    p.add_run(" im park")
    d.add_paragraph("")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "ein mann"
    table.rows[0].cells[1].text = "das kind"
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def html_pieces(client, fragment: str) -> list[tuple[str, str | None]]:
    """What format "html" makes of `fragment`: (text, id of the span it is in, or None)."""
    from bs4 import BeautifulSoup

    r = client.post("/translate", json={"q": fragment, "source": "de", "target": "en", "format": "html"})
    assert r.status_code == 200
    return [
        (n.get_text(), n.get("id") if n.name else None)
        for n in BeautifulSoup(r.json()["translatedText"], "html.parser").contents
    ]


def test_docx_keeps_paragraph_styles_runs_and_tables(client):
    import docx

    out = docx.Document(io.BytesIO(download(client, upload(client, "brief.docx", _docx()))))
    want = tr(client, ["der hund", "ein mann", "das kind"])
    heading = out.paragraphs[0]
    assert heading.style.name == "Heading 1" and heading.text == want[0]
    assert [c.text for c in out.tables[0].rows[0].cells] == want[1:]
    # runs of several formattings: translated as one sentence (the HTML path), each run's
    # formatting on its own words; the main formatting (most characters) on the rest
    for para, fragment, marked in (
        (out.paragraphs[1], 'die katze <span id="r1">schläft</span>', lambda r: not r.bold),
        (out.paragraphs[2], 'der hund spielt mit <span id="r1">der katze</span> im park', lambda r: r.italic),
    ):
        pieces = html_pieces(client, fragment)
        runs = [r for r in para.runs if r.text]
        assert para.text == "".join(t for t, _ in pieces if t)
        assert [r.text for r in runs if marked(r)] == [t for t, span in pieces if span == "r1" and t]
        assert len(runs) == len([t for t, _ in pieces if t])


def test_odt_keeps_paragraph_styles(client):
    from odf import teletype, text
    from odf.opendocument import OpenDocumentText, load
    from odf.style import Style, TextProperties

    doc = OpenDocumentText()
    bold = Style(name="Bold", family="text")
    bold.addElement(TextProperties(fontweight="bold"))
    doc.automaticstyles.addElement(bold)
    doc.text.addElement(text.H(outlinelevel=1, text="der hund"))
    p = text.P()
    p.addElement(text.Span(stylename=bold, text="die katze "))
    teletype.addTextToElement(p, "schläft")
    doc.text.addElement(p)
    buf = io.BytesIO()
    doc.write(buf)
    out = load(io.BytesIO(download(client, upload(client, "brief.odt", buf.getvalue()))))
    want = tr(client, ["der hund"])
    h = out.getElementsByType(text.H)[0]
    p = out.getElementsByType(text.P)[0]
    # the bold span has the most characters: the fragment's bare text, and comes back in Bold spans
    pieces = html_pieces(client, 'die katze <span id="r1">schläft</span>')
    assert teletype.extractText(h) == want[0]
    assert teletype.extractText(p) == "".join(t for t, _ in pieces)
    spans = out.getElementsByType(text.Span)
    assert [teletype.extractText(x) for x in spans] == [t for t, span in pieces if span is None and t]
    # every one in the paragraph's main style (the tiny model may put every word in the fragment)
    assert all(x.getAttribute("stylename") == "Bold" for x in spans)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_hostile_uploads_are_refused(client):
    bomb = _zip({"[Content_Types].xml": b"<x/>", "word/document.xml": b"\0" * 60_000_000})
    r = upload(client, "bomb.docx", bomb)
    assert r.status_code == 413 and "unpacks to more than" in r.json()["error"]
    laughs = b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><w>&lol2;</w>'
    r = upload(client, "laughs.docx", _zip({"word/document.xml": laughs}))
    assert r.status_code == 400 and "declares a DTD or entities" in r.json()["error"]
    assert upload(client, "fake.docx", b"not a zip").json() == {
        "error": "not a valid .docx/.odt file (not a zip archive)"
    }
    r = upload(client, "run.exe", b"MZ")
    assert r.status_code == 400 and "unsupported file type '.exe'" in r.json()["error"]
    assert upload(client, "latin1.txt", "größe".encode("latin-1")).status_code == 400
    many = ("ein mann\n" * 6000).encode()
    assert upload(client, "many.txt", many).status_code == 413


def test_names_cannot_leave_the_store_and_files_expire(client):
    r = upload(client, "../../etc/evil name.txt", b"der hund")
    url = r.json()["translatedFileUrl"].removeprefix("http://testserver")
    assert url.endswith("/evil_name.txt")
    store = client.app.state.service.files  # made by the first file translation
    assert all(store.root in p.parents for p in store.root.rglob("*"))
    token = url.split("/")[2]
    assert client.get(f"/download_file/{token}/..%2F..%2Fsecret").status_code == 404
    store.expire(now=time.time() + store.ttl_s + 1)
    assert client.get(url).status_code == 404


def test_frontend_settings_announce_files(client):
    s = client.get("/frontend/settings").json()
    assert s["filesTranslation"] is True and ".docx" in s["supportedFilesFormat"]


def test_without_a_writable_temporary_folder_files_answer_503_and_the_rest_serves(model_dir, monkeypatch):
    import tempfile

    from tests.service.conftest import make_client, wait_ready

    with make_client(model_dir) as c:
        wait_ready(c)
        monkeypatch.setattr(
            tempfile,
            "mkdtemp",
            lambda **kw: (_ for _ in ()).throw(FileNotFoundError(2, "No usable temporary directory")),
        )
        r = upload(c, "notes.txt", b"der hund")
        assert r.status_code == 503 and "writable temporary folder" in r.json()["error"]
        assert c.post("/translate", json={"q": "der hund", "source": "de", "target": "en"}).status_code == 200
