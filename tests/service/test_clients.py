"""Real LibreTranslate client libraries, unchanged, against a real server process: libretranslatepy
(form bodies, GET /languages with an empty form body) and deep-translator's LibreTranslator
(everything in the query string, an empty body, an api_key it insists on sending), with keys off
and on."""

from __future__ import annotations

import httpx
import pytest

from tests.server import running_server

KEY = "client-key-1"
TEXT = "der hund spielt im park"


def direct(server, q):
    """What the server answers to the same translation as JSON (the tiny test model's words)."""
    body = {"q": q, "source": "de", "target": "en", "api_key": server.key}
    r = httpx.post(server.base + "/translate", json=body, timeout=30)
    assert r.status_code == 200
    return r.json()["translatedText"]


@pytest.fixture(scope="module", params=["open", "keys"])
def server(model_dir, request):
    env = {"TRANSERVE_API_KEYS": KEY} if request.param == "keys" else {}
    with running_server(model_dir, env=env) as s:
        s.key = KEY if request.param == "keys" else None  # type: ignore[attr-defined]
        yield s


def test_libretranslatepy(server):
    pytest.importorskip(
        "libretranslatepy", reason="a dev tool (make test installs it), not in the service's own install"
    )
    from libretranslatepy import LibreTranslateAPI

    lt = LibreTranslateAPI(server.base, api_key=server.key)
    assert lt.translate(TEXT, "de", "en") == direct(server, TEXT)
    languages = lt.languages()
    assert {"de", "en"} <= {lang["code"] for lang in languages}
    assert "en" in next(lang for lang in languages if lang["code"] == "de")["targets"]
    detected = lt.detect("der hund spielt im park und die katze schläft")
    assert detected and {"language", "confidence"} <= set(detected[0])


def test_deep_translator(server):
    pytest.importorskip(
        "deep_translator", reason="a dev tool (make test installs it), not in the service's own install"
    )
    from deep_translator import LibreTranslator

    # deep-translator refuses to run without a key; a server without keys accepts any
    translator = LibreTranslator(source="de", target="en", api_key=server.key or "any", custom_url=server.base + "/")
    assert translator.translate(TEXT) == direct(server, TEXT)
    assert translator.translate_batch(["der hund", "die katze"]) == direct(server, ["der hund", "die katze"])
