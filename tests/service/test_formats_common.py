"""The formats table (service/formats/): /frontend/settings and the unsupported-type answer list
every format; and the helpers the format tests share: a word-for-word "model" (`dictionary`)
put in place of the translation pipeline, so that a test sees each text land where it belongs
(the tiny test bundles translate most short German texts to nothing)."""

from __future__ import annotations

import re

from service import translation
from service.formats import EXTENSIONS, FORMATS, media_type
from tests.service.test_files import upload

WORDS = {
    "der": "the", "die": "the", "das": "the", "ein": "a", "eine": "a", "hund": "dog", "katze": "cat",
    "mann": "man", "frau": "woman", "kind": "child", "spielt": "plays", "schläft": "sleeps", "im": "in the",
    "park": "park", "mit": "with", "hallo": "hello", "welt": "world", "datei": "file", "dateien": "files",
    "öffnen": "open", "klicken": "click", "sie": "you", "hier": "here", "um": "to", "zu": "to", "und": "and",
    "kapitel": "chapter", "buch": "book", "speichern": "save", "abbrechen": "cancel", "du": "you", "hast": "have",
    "neue": "new", "nachrichten": "messages", "willkommen": "welcome", "eins": "one",
}  # fmt: skip


def words(text: str) -> str:
    """`text` translated word for word by WORDS (a capital kept); anything else as it is."""

    def one(m: re.Match) -> str:
        w = m.group(0)
        tr = WORDS.get(w.lower())
        if tr is None:
            return w
        return tr[:1].upper() + tr[1:] if w[:1].isupper() else tr

    return re.sub(r"\w+", one, text)


def dictionary(monkeypatch) -> list[tuple[str, ...]]:
    """Translation replaced by `words` for this test: plain texts, and markup through the real
    HTML path (service/html.py, without the word alignment). The texts sent, by kind."""
    from service.html import translate_html

    sent: list[tuple[str, ...]] = []

    async def plain(state, texts, source, target, *args, **kwargs):
        sent.extend(("text", t) for t in texts)
        return translation.Translated([words(t) for t in texts])

    async def markup(state, texts, source, target, *args, offload=None, **kwargs):
        sent.extend(("html", t) for t in texts)

        async def each(pieces: list[str]) -> list[str]:
            return [words(p) for p in pieces]

        return translation.Translated([await translate_html(t, each, offload=offload) for t in texts])

    monkeypatch.setattr(translation, "translate", plain)
    monkeypatch.setattr(translation, "translate_markup", markup)
    return sent


def test_frontend_settings_and_the_refusal_list_every_format(client):
    new = [".pptx", ".odp", ".epub", ".po", ".pot", ".xliff", ".xlf", ".json", ".arb"]
    listed = client.get("/frontend/settings").json()["supportedFilesFormat"]
    assert listed[:5] == [".txt", ".html", ".srt", ".docx", ".odt"]  # LibreTranslate's, first
    assert all(ext in listed for ext in new) and listed == EXTENSIONS and len(set(listed)) == len(listed)
    error = upload(client, "run.exe", b"MZ").json()["error"]
    assert error.startswith("unsupported file type '.exe'; supported: .txt, .html, .srt, .docx, .odt, .pptx")
    assert all(ext in error for ext in new)
    spec = client.get("/openapi.json").json()["paths"]["/translate_file"]["post"]["summary"]
    assert ".xliff" in spec


def test_every_format_has_a_media_type_and_a_handler():
    for ext, f in FORMATS.items():
        assert ext in f.extensions and f.media_types and callable(f.translate)
        assert media_type(f"x{ext.upper()}") == f.media_types[0]
    assert media_type("x.exe") is None


def test_every_zip_format_counts_its_xml_elements_before_parsing(model_dir):
    """Empty paragraphs (a few KB compressed) count toward TRANSERVE_MAX_FILE_ELEMENTS in a
    presentation and a book as in a Word document: 413 before any document library runs."""
    from tests.service.conftest import make_client, wait_ready
    from tests.service.test_formats_epub import XHTML, epub
    from tests.service.test_formats_office import _odp, _shape, _slide, pptx

    bloated = {
        "slides.pptx": pptx(slide=_slide(_shape("<a:p/>" * 40_000))),
        "slides.odp": _odp(extra_paragraphs=40_000),
        "book.epub": epub(f'<html xmlns="{XHTML}"><body>' + "<p/>" * 40_000 + "</body></html>"),
    }
    message = "file has more than 30000 XML elements (paragraphs, runs, table cells; empty ones count)"
    with make_client(model_dir, max_file_elements=30_000) as c:
        wait_ready(c)
        for name, data in bloated.items():
            assert len(data) < 4_000, name  # a few KB
            r = upload(c, name, data)
            assert r.status_code == 413 and r.json() == {"error": message}, name


def test_placeholders_survive_the_real_pipeline_in_catalogues(client):
    """No stand-in model here: the tiny bundles' translations, with service/protect.py keeping
    every placeholder of a gettext, XLIFF or JSON value."""
    import json

    import polib
    from lxml import etree

    from tests.service.test_files import download
    from tests.service.test_placeholders import _placeholders_kept

    values = [
        "Hello %(name)s, you have %d new messages",
        "Delete {count} files from {{folder}}?",
        "{n, plural, one {# file} other {# files}} selected",
        "Open $t(menu.file) and <0>save</0> it",
        "%1$s of %2$s done",
    ]

    def check(outputs: list[str]) -> None:
        assert len(outputs) == len(values)
        for source, out in zip(values, outputs):  # ICU messages: their structure, branches translated
            assert _placeholders_kept(source, out), (source, out)

    def post(name: str, data: bytes) -> bytes:
        r = client.post(
            "/translate_file",
            data={"source": "en", "target": "de"},
            files={"file": (name, data, "application/octet-stream")},
        )
        return download(client, r)

    po = "".join(f'msgid "{v}"\nmsgstr ""\n\n' for v in values)
    check([e.msgstr for e in polib.pofile(post("en.po", po.encode()).decode())])
    check(list(json.loads(post("en.json", json.dumps({f"k{i}": v for i, v in enumerate(values)}).encode())).values()))
    units = "".join(
        f'<trans-unit id="{i}"><source>{v.replace("<", "&lt;")}</source></trans-unit>' for i, v in enumerate(values)
    )
    xliff = (
        f'<xliff version="1.2" xmlns="urn:oasis:names:tc:xliff:document:1.2"><file><body>{units}</body></file></xliff>'
    )
    root = etree.fromstring(post("en.xliff", xliff.encode()))
    check([t.text or "" for t in root.iter("{urn:oasis:names:tc:xliff:document:1.2}target")])
