"""/translate_file under hostile or heavy files (issue 39): the parsing and writing of a file
happen off the event loop with a bound on jobs in progress, .docx/.odt are bounded in XML
elements (empty paragraphs count), deep HTML is refused with a 400 instead of a RecursionError,
a file's HTML is not held to one request's sentence cap, long file names are shortened by their
UTF-8 bytes, and an unexpected exception is a counted, logged 500 that closes the connection."""

from __future__ import annotations


def upload(client, name: str, data: bytes):
    return client.post(
        "/translate_file",
        data={"source": "de", "target": "en"},
        files={"file": (name, data, "application/octet-stream")},
    )


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
