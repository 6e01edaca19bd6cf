"""More of LibreTranslate's real clients, their requests replayed as their source sends them and
their answers read as their source reads them (test_client_shapes.py has TranslateYou,
deep-translator, Discourse, Nextcloud and GNOME Dialect; test_clients.py runs libretranslatepy and
deep-translator themselves): LibreTranslate's own web page, Mastodon's `LibreTranslate`
translation provider (with a toot as Mastodon renders it, issue 38), Weblate's LibreTranslate
machinery (its batch JSON form and its older form post), the fetch calls of JavaScript clients
and browser extensions, and the same clients with API keys on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bs4 import BeautifulSoup
from fastapi.testclient import TestClient

from tests.service.conftest import make_client, wait_ready

# A toot as Mastodon 3.x renders it (no translate="no" on the mention): the example
TOOT = (
    '<p>Hallo <span class="h-card"><a class="u-url mention" href="https://x.example/@anna">@<span>anna</span></a>'
    "</span> wie geht&#39;s?</p>"
)
MENTION = '<a class="u-url mention" href="https://x.example/@anna">@<span>anna</span></a>'
KEY = "client-key-1"


def detected_language(body: dict, index: int) -> str | None:
    """Mastodon's `data.dig('detectedLanguage', index, 'language')`: a list answers by index, an
    object (or nothing) gives nil, never an error."""
    found = body.get("detectedLanguage")
    if isinstance(found, list) and index < len(found) and isinstance(found[index], dict):
        return found[index].get("language")
    return None


def test_libretranslate_web_page(client):
    # the page learns the server, then posts multipart forms: q, source (auto), target, format,
    # alternatives 3, api_key "" ; it reads translatedText, alternatives and detectedLanguage
    settings = client.get("/frontend/settings").json()
    assert {"charLimit", "apiKeys", "keyRequired", "filesTranslation", "supportedFilesFormat"} <= set(settings)
    assert any(lang["code"] == "de" for lang in client.get("/languages").json())
    fields = {
        "q": (None, "der hund spielt im park"),
        "source": (None, "auto"),
        "target": (None, "en"),
        "format": (None, "text"),
        "alternatives": (None, "3"),
        "api_key": (None, ""),
    }
    r = client.post("/translate", files=fields)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["translatedText"], str) and body["translatedText"]
    assert isinstance(body["alternatives"], list) and len(body["alternatives"]) <= 3
    assert body["detectedLanguage"]["language"] == "de" and 0 <= body["detectedLanguage"]["confidence"] <= 100
    # its file tab: multipart file, source, target, api_key; it follows translatedFileUrl
    upload = {"file": ("brief.txt", b"der hund spielt", "text/plain")}
    r = client.post("/translate_file", files=upload, data={"source": "de", "target": "en", "api_key": ""})
    assert r.status_code == 200, r.text
    got = client.get(r.json()["translatedFileUrl"].removeprefix("http://testserver"))
    assert got.status_code == 200 and got.content


@pytest.mark.parametrize("api_key", [None, ""])
@pytest.mark.parametrize("source", ["de", "auto"])
def test_mastodon_libretranslate_provider(client, api_key, source):
    # app/lib/translation_service/libre_translate.rb: JSON, q the status and its media
    # descriptions, source the status's language or "auto", format html, api_key (null when the
    # server has none configured); it reads translatedText by index and
    # detectedLanguage[index].language, falling back to the source it sent
    q = [TOOT, "", "ein mann läuft"]
    r = client.post("/translate", json={"q": q, "source": source, "target": "en", "format": "html", "api_key": api_key})
    assert r.status_code == 200, r.text
    body = r.json()
    texts = body["translatedText"]
    assert isinstance(texts, list) and len(texts) == len(q) and texts[1] == ""
    assert MENTION in texts[0]  # the user name is not translated (issue 38: `@<span>He isnaping.</span>`)
    assert BeautifulSoup(texts[0], "html.parser").p is not None
    # the language Mastodon records: the detected one, else the one it sent
    assert (detected_language(body, 0) or source) == "de"


def test_mastodon_reads_the_languages(client):
    # languages: each `code` with its `targets` less itself; nil (auto) gets every target
    languages = {
        lang["code"]: [t for t in lang["targets"] if t != lang["code"]] for lang in client.get("/languages").json()
    }
    assert "en" in languages["de"] and "de" in languages["en"]


def test_weblate_batch_json_and_scalar(client):
    # weblate/machinery/libretranslate.py: JSON {api_key, q, source, target} without a format; q a
    # list of strings (batch), or the one string; translatedText a list as long as q, or a string
    texts = ["Delete {0} files?", "Der Hund", "%s spielt im Park"]
    r = client.post("/translate", json={"api_key": "", "q": texts, "source": "de", "target": "en"})
    assert r.status_code == 200, r.text
    out = r.json()["translatedText"]
    assert isinstance(out, list) and len(out) == len(texts) and all(isinstance(t, str) for t in out)
    assert "{0}" in out[0] and "%s" in out[2]  # its placeholders come back (issue 38)
    r = client.post("/translate", json={"api_key": "", "q": texts[1], "source": "de", "target": "en"})
    assert r.status_code == 200 and isinstance(r.json()["translatedText"], str)
    # download_languages: the codes of /languages
    assert {"de", "en"} <= {x["code"] for x in client.get("/languages").json()}


def test_weblate_older_form_post(client):
    # older Weblate: a urlencoded form {api_key, q, source, target}; payload["translatedText"]
    r = client.post("/translate", data={"api_key": "", "q": "der hund", "source": "de", "target": "en"})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["translatedText"], str)


def test_javascript_fetch_clients_and_browser_extensions(client):
    # the `libretranslate` npm client and browser extensions: fetch with a JSON body and
    # Content-Type application/json, source "auto" or a code, format text; they read
    # translatedText (and detectedLanguage for auto)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    body = {"q": "der hund spielt", "source": "auto", "target": "en", "format": "text", "api_key": ""}
    r = client.post("/translate", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["translatedText"], str) and r.json()["detectedLanguage"]["language"] == "de"
    r = client.post("/detect", json={"q": "der hund spielt mit der katze", "api_key": ""}, headers=headers)
    assert r.status_code == 200 and r.json()[0]["language"] == "de"


@pytest.fixture(scope="module")
def keyed(model_dir) -> Iterator[TestClient]:
    with make_client(model_dir, api_keys=KEY) as c:
        wait_ready(c)
        yield c


def test_clients_with_keys_send_theirs_where_they_do(keyed):
    # Mastodon (JSON), Weblate (JSON and form), the web page (multipart): the key in the body
    assert keyed.get("/frontend/settings").json()["keyRequired"] is True
    mastodon = {"q": [TOOT], "source": "auto", "target": "en", "format": "html"}
    assert keyed.post("/translate", json={**mastodon, "api_key": KEY}).status_code == 200
    refused = keyed.post("/translate", json={**mastodon, "api_key": None})
    assert refused.status_code in (400, 403) and "error" in refused.json()  # Mastodon shows the error
    weblate = {"q": ["der hund"], "source": "de", "target": "en", "api_key": KEY}
    assert keyed.post("/translate", json=weblate).status_code == 200
    assert keyed.post("/translate", data={**weblate, "q": "der hund"}).status_code == 200
    fields = {"q": (None, "der hund"), "source": (None, "de"), "target": (None, "en"), "api_key": (None, KEY)}
    assert keyed.post("/translate", files=fields).status_code == 200
