"""JSON message catalogues: flat and nested (i18next: plural keys, arrays, `{{x}}` and `$t()`),
Chrome's messages.json (only `message`), Flutter's ARB (`@key` metadata kept, `@@locale` the
target): values translated, keys, order, other values, indentation and final line break kept;
malformed, deep and huge files refused."""

from __future__ import annotations

import json

from tests.service.test_files import download, upload
from tests.service.test_formats_common import dictionary

I18NEXT = {
    "welcome": "Willkommen, {{name}}",
    "files_one": "Eine datei",
    "files_other": "{{count}} dateien",
    "menu": {"save": "Speichern", "cancel": "Abbrechen", "nested": "$t(menu.save) und abbrechen"},
    "list": ["Der hund", "die katze", 3, True, None, {"deep": "Das kind"}],
    "empty": "",
    "space": "  Der mann ",
    "count": 12,
}


def test_nested_i18next_values_are_translated_and_the_rest_kept(client, monkeypatch):
    sent = dictionary(monkeypatch)
    source = json.dumps(I18NEXT, ensure_ascii=False, indent=2) + "\n"
    out = download(client, upload(client, "de.json", source.encode())).decode()
    assert out.endswith("}\n") and '\n  "welcome": ' in out  # its indentation and final line break
    data = json.loads(out)
    assert list(data) == list(I18NEXT)  # key order
    assert data == {
        "welcome": "Welcome, {{name}}",
        "files_one": "A file",
        "files_other": "{{count}} files",
        "menu": {"save": "Save", "cancel": "Cancel", "nested": "$t(menu.save) and cancel"},
        "list": ["The dog", "the cat", 3, True, None, {"deep": "The child"}],
        "empty": "",
        "space": "  The man ",
        "count": 12,
    }
    assert ("text", "Willkommen, {{name}}") in sent and ("text", "") not in sent


def test_flat_compact_catalogues_stay_compact(client, monkeypatch):
    dictionary(monkeypatch)
    out = download(client, upload(client, "flat.json", b'{"a":"Der hund","b":"Die katze"}')).decode()
    assert out == '{"a":"The dog","b":"The cat"}'


def test_chrome_messages_translate_only_the_message(client, monkeypatch):
    dictionary(monkeypatch)
    messages = {
        "greeting": {
            "message": "Hallo $USER$, du hast neue nachrichten",
            "description": "Die katze",
            "placeholders": {"user": {"content": "$1", "example": "Der mann"}},
        },
        "save": {"message": "Speichern"},
    }
    out = json.loads(download(client, upload(client, "messages.json", json.dumps(messages).encode())))
    assert out["greeting"]["message"].startswith("Hello $USER")
    assert out["greeting"]["description"] == "Die katze"
    assert out["greeting"]["placeholders"] == messages["greeting"]["placeholders"]
    assert out["save"] == {"message": "Save"}


def test_arb_metadata_is_kept_and_the_locale_is_the_target(client, monkeypatch):
    dictionary(monkeypatch)
    arb = {
        "@@locale": "de",
        "hello": "Hallo {name}",
        "@hello": {"description": "Die katze", "placeholders": {"name": {"type": "String", "example": "Der hund"}}},
        "files": "{count, plural, =1{Eine datei} other{{count} dateien}}",
    }
    out = json.loads(download(client, upload(client, "app_de.arb", json.dumps(arb, indent=4).encode())))
    assert out["@@locale"] == "en" and out["@hello"] == arb["@hello"]
    assert out["hello"] == "Hello {name}"
    assert list(out) == list(arb)


def test_bad_catalogues_are_refused(client):
    r = upload(client, "broken.json", b'{"a": "Der hund",}')
    assert r.status_code == 400 and r.json() == {"error": "not a valid .json file (JSON error at line 1 column 18)"}
    r = upload(client, "deep.json", b'{"a":' * 100_000 + b'"x"' + b"}" * 100_000)
    assert r.status_code == 400 and r.json() == {"error": ".json file is nested too deeply"}
    r = upload(client, "number.json", b'{"a": ' + b"9" * 5000 + b"}")
    assert r.status_code == 400 and r.json() == {"error": "not a valid .json file (a number too long)"}
    r = upload(client, "scalar.json", b'"Der hund"')
    assert r.json() == {"error": "not a valid .json file (not a JSON object or array)"}
    r = upload(client, "catalog.json", b'msgid "a"\nmsgstr ""\n')  # gettext under a JSON name
    assert r.status_code == 400
    r = upload(client, "huge.json", json.dumps([0] * 210_000).encode())
    assert r.status_code == 413 and r.json() == {"error": "file has more than 200000 JSON values"}
    many = json.dumps({f"k{i}": "der hund" for i in range(6000)}).encode()
    r = upload(client, "many.json", many)
    assert r.status_code == 413 and r.json() == {"error": "file has 6000 paragraphs; at most 5000"}
    assert upload(client, "latin.json", '{"a": "größe"}'.encode("latin-1")).status_code == 400
