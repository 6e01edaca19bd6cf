"""/translate_file under hostile or heavy files (issue 39): the parsing and writing of a file
happen off the event loop with a bound on jobs in progress, .docx/.odt are bounded in XML
elements (empty paragraphs count), deep HTML is refused with a 400 instead of a RecursionError,
a file's HTML is not held to one request's sentence cap, long file names are shortened by their
UTF-8 bytes, and an unexpected exception is a counted, logged 500 that closes the connection."""

from __future__ import annotations

import io
import logging
import threading
import time
from urllib.parse import unquote

import pytest

from service import files
from tests.service.conftest import make_client, wait_ready


def upload(client, name: str, data: bytes):
    return client.post(
        "/translate_file",
        data={"source": "de", "target": "en"},
        files={"file": (name, data, "application/octet-stream")},
    )


def _odt(empty: int) -> bytes:
    """One sentence and `empty` empty paragraphs."""
    from odf import text
    from odf.opendocument import OpenDocumentText

    doc = OpenDocumentText()
    doc.text.addElement(text.P(text="der hund spielt"))
    for _ in range(empty):
        doc.text.addElement(text.P())
    buf = io.BytesIO()
    doc.write(buf)
    return buf.getvalue()


def _docx(empty: int) -> bytes:
    import docx

    doc = docx.Document()
    doc.add_paragraph("der hund spielt")
    body = doc.element.body
    for _ in range(empty):
        body.append(body.makeelement(docx.oxml.ns.qn("w:p"), {}))
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def small(model_dir):
    """A service whose files may hold 30,000 XML elements (an empty Word document has 18,600) and
    one file job at a time."""
    with make_client(model_dir, max_file_elements=30_000, max_file_jobs=1) as c:
        wait_ready(c)
        yield c


@pytest.mark.parametrize("kind", ["odt", "docx"])
def test_empty_paragraphs_count_toward_the_element_limit(small, kind):
    make = _odt if kind == "odt" else _docx
    assert upload(small, f"ok.{kind}", make(100)).status_code == 200
    r = upload(small, f"bloated.{kind}", make(40_000))
    assert r.status_code == 413
    assert r.json()["error"] == (
        "file has more than 30000 XML elements (paragraphs, runs, table cells; empty ones count)"
    )


def test_health_answers_while_a_file_job_runs_and_a_second_job_is_503(small, monkeypatch):
    """A file job held inside its reader (on an event, in its worker thread): /health answers at
    once, and with max_file_jobs=1 another upload is refused 503 + Retry-After, not queued."""
    entered, release = threading.Event(), threading.Event()
    real = files._odt

    def held(*args):
        entered.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(files, "_odt", held)
    answer: dict = {}
    job = threading.Thread(target=lambda: answer.update(r=upload(small, "slow.odt", _odt(0))))
    job.start()
    try:
        assert entered.wait(10)
        t = time.perf_counter()
        assert small.get("/health").status_code == 200
        assert time.perf_counter() - t < 1.0  # the event loop is free (on the old code: 10 s)
        busy = upload(small, "second.txt", b"der hund")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json() == {"error": "file translation busy, retry later"}
    finally:
        release.set()
        job.join(30)
    assert answer["r"].status_code == 200
    assert upload(small, "after.txt", b"der hund").status_code == 200  # the slot is free again


def test_deeply_nested_html_is_a_400_not_a_recursion_error(client):
    message = "HTML nested more than 512 elements deep (an unclosed <p> nests too)"
    deep = "<div>" * 1000 + "der hund" + "</div>" * 1000
    r = upload(client, "deep.html", deep.encode())
    assert r.status_code == 400 and r.json() == {"error": message}
    r = client.post(
        "/translate", json={"q": "<p>" * 1200 + "der hund", "source": "de", "target": "en", "format": "html"}
    )
    assert r.status_code == 400 and r.json() == {"error": message}
    # 3,000 unclosed paragraphs nest 3,000 deep for Python's parser: refused the same way
    r = upload(client, "unclosed.html", ("<p>ein mann" * 3000).encode())
    assert r.status_code == 400 and r.json() == {"error": message}
    # nested below the bound, and nested inline elements: translated
    ok = upload(client, "ok.html", ("<div>" * 500 + "der hund" + "</div>" * 500).encode())
    assert ok.status_code == 200
    assert upload(client, "spans.html", ("<span>" * 2000 + "der hund" + "</span>" * 2000).encode()).status_code == 200


def test_an_html_file_is_not_held_to_one_requests_sentence_cap(client):
    """600 short paragraphs (the issue's 18 KB page) and 3,000 closed ones translate, as the
    same text as a .txt does: the file's own limits bound it, not /translate's 512 sentences."""
    one = client.post("/translate", json={"q": "ein mann", "source": "de", "target": "en"}).json()["translatedText"]
    for n in (600, 3000):
        r = upload(client, "page.html", ("<p>ein mann</p>" * n).encode())
        assert r.status_code == 200, r.text
        page = client.get(r.json()["translatedFileUrl"].removeprefix("http://testserver")).content.decode()
        assert page == f"<p>{one}</p>" * n


def test_a_long_cjk_file_name_is_shortened_by_bytes_and_leaves_no_empty_folder(client):
    name = "翻訳された文書" * 15 + ".txt"  # 105 characters, 311 bytes of UTF-8: over any file system's 255
    r = upload(client, name, b"der hund")
    assert r.status_code == 200, r.text
    url = r.json()["translatedFileUrl"].removeprefix("http://testserver")
    stored = unquote(url.rsplit("/", 1)[1])
    assert stored.endswith(".txt") and len(stored.encode()) <= files.MAX_NAME_BYTES
    assert name.startswith(stored.removesuffix(".txt"))  # the head of the name, whole characters
    got = client.get(url)
    want = client.post("/translate", json={"q": "der hund", "source": "de", "target": "en"}).json()["translatedText"]
    assert got.status_code == 200 and got.content.decode() == want
    assert "filename*=utf-8''" in got.headers["content-disposition"]
    store = client.app.state.service.files
    assert all(any(folder.iterdir()) for folder in store.root.iterdir())  # no empty token folder


def test_safe_names_keep_the_extension_and_whole_characters():
    assert files.safe_name("../../etc/evil name.txt") == "evil_name.txt"
    assert files.safe_name("..") == "file"
    long = files.safe_name("é" * 200 + ".docx")
    assert long == "é" * 61 + ".docx" and len(long.encode()) == 127  # 122 bytes of stem: no half "é"


def test_an_unexpected_exception_is_a_500_counted_logged_and_closing(model_dir, monkeypatch, caplog):
    from service import translation

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    with make_client(model_dir) as c:
        wait_ready(c)
        monkeypatch.setattr(translation, "translate", broken)
        with caplog.at_level(logging.INFO):
            r = c.post("/translate", json={"q": "der hund", "source": "de", "target": "en"})
        assert r.status_code == 500
        body = r.json()
        assert body["error"] == "internal error" and len(body["request_id"]) == 12
        assert "simulated bug" not in r.text
        assert r.headers["connection"] == "close" and r.headers["x-content-type-options"] == "nosniff"
        record = next(x for x in caplog.records if body["request_id"] in x.getMessage())
        assert record.exc_info and "simulated bug" in str(record.exc_info[1])
        assert any(x.name == "service.access" and "POST /translate 500" in x.getMessage() for x in caplog.records)
        metrics = c.get("/metrics").text
        assert 'transerve_requests_total{endpoint="/translate",status="500"} 1.0' in metrics
