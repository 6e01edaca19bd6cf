"""A multilingual bundle behind the API: its directions become pairs, its sources get the
target tag, and pairs without a model go through English in one request."""

from __future__ import annotations

from service.registry import Registry
from service.runtime.bundle import load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.service.conftest import make_client, wait_ready


def test_route_direct_pivot_or_none():
    reg = Registry(pairs={("de", "en"): "m", ("en", "de"): "m", ("fr", "en"): "m", ("zh", "en"): "z"})
    assert reg.route("de", "en") == [("m", "de", "en")]
    assert reg.route("fr", "de") == [("m", "fr", "en"), ("m", "en", "de")]
    assert reg.route("zh", "de") == [("z", "zh", "en"), ("m", "en", "de")]
    assert reg.route("de", "fr") is None  # no en->fr model
    assert reg.targets() == {"de": {"en"}, "en": {"de"}, "fr": {"en", "de"}, "zh": {"en", "de"}}


def test_languages_pairs_and_pivot_translation(multilingual_dir):
    with make_client(multilingual_dir) as client:
        wait_ready(client)
        langs = {x["code"]: x["targets"] for x in client.get("/languages").json()}
        assert langs == {"de": ["de", "en"], "en": ["de", "en"], "fr": ["de", "en", "fr"]}
        bundle = multilingual_dir / "multi"
        engine = Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1)
        text = "chat chien rouge"
        via_en = engine.translate(["<2en> " + text])[0]
        expected = engine.translate(["<2de> " + via_en])[0] if via_en.strip() else ""
        r = client.post("/translate", json={"q": text, "source": "fr", "target": "de"})
        assert r.status_code == 200, r.text
        assert r.json()["translatedText"] == expected
        direct = client.post("/translate", json={"q": text, "source": "fr", "target": "en"}).json()
        assert direct["translatedText"] == via_en
        r = client.post("/translate", json={"q": "hund", "source": "de", "target": "fr"})
        assert r.status_code == 400 and "unsupported target language 'fr'" in r.json()["error"]
