"""The exact requests that LibreTranslate's real clients send (read from their source), replayed
against the service with their answers checked: the issue's table, row by row."""

from __future__ import annotations

from bs4 import BeautifulSoup


def test_translateyou_query_string_with_alternatives_and_auto(client):
    # TranslateYou (Android): everything in the query string, empty body, alternatives=3;
    # it reads translatedText, alternatives and detectedLanguage
    r = client.post(
        "/translate",
        params={"q": "der hund spielt", "source": "auto", "target": "en", "format": "text", "alternatives": "3"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["translatedText"], str) and isinstance(body["alternatives"], list)
    assert len(body["alternatives"]) <= 3 and body["detectedLanguage"]["language"] == "de"


def test_deep_translator_query_string_and_key(client):
    # deep-translator's LibreTranslator: query string, empty body, an api_key (a server without keys takes it)
    params = {"q": "hallo welt", "source": "de", "target": "en", "format": "text", "api_key": "anything"}
    r = client.post("/translate", params=params)
    assert r.status_code == 200 and set(r.json()) == {"translatedText"}


def test_mastodon_json_list_html_auto_with_an_empty_alt_text(client):
    # Mastodon: JSON, q a list (the status, then its media descriptions, "" where one is missing),
    # always format html and source auto; its own notranslate spans
    q = ['<p>der hund <span translate="no">@anna</span> spielt</p>', "", "ein mann"]
    r = client.post("/translate", json={"q": q, "source": "auto", "target": "en", "format": "html", "api_key": ""})
    assert r.status_code == 200, r.text
    out = r.json()["translatedText"]
    assert len(out) == 3 and out[1] == ""
    assert '<span translate="no">@anna</span>' in out[0] and BeautifulSoup(out[0], "html.parser").p is not None
    assert [d["language"] for d in r.json()["detectedLanguage"]][0] == "de"


def test_discourse_forms_for_detect_and_translate(client):
    # Discourse: urlencoded forms, api_key "" on both
    r = client.post("/detect", data={"q": "der hund spielt mit der katze", "api_key": ""})
    assert r.status_code == 200 and r.json()[0]["language"] == "de" and 0 <= r.json()[0]["confidence"] <= 100
    form = {"q": "<p>der hund</p>", "source": "de", "target": "en", "format": "html", "api_key": ""}
    r = client.post("/translate", data=form)
    assert r.status_code == 200 and r.json()["translatedText"].startswith("<p>")


def test_nextcloud_settings_detect_by_query_and_multipart_translate(client):
    # Nextcloud: GET /frontend/settings, POST /detect?q=..., multipart /translate with format html
    assert client.get("/frontend/settings").status_code == 200
    r = client.post("/detect?q=der%20hund%20spielt")
    assert r.status_code == 200 and r.json()[0]["language"] == "de"
    fields = {"q": (None, "<p>der hund</p>"), "source": (None, "de"), "target": (None, "en"), "format": (None, "html")}
    r = client.post("/translate", files=fields)
    assert r.status_code == 200, r.text
    assert r.json()["translatedText"].startswith("<p>")


def test_gnome_dialect_spec_settings_and_languages(client):
    # GNOME Dialect: GET /spec and /frontend/settings to learn the server, then /languages
    spec = client.get("/spec")
    assert spec.status_code == 200 and "/translate" in spec.json()["paths"]
    settings = client.get("/frontend/settings").json()
    assert {"charLimit", "apiKeys", "keyRequired", "suggestions", "filesTranslation"} <= set(settings)
    languages = client.get("/languages").json()
    de = next(x for x in languages if x["code"] == "de")
    assert {"code", "name", "targets"} <= set(de) and "de" in de["targets"] and "en" in de["targets"]
