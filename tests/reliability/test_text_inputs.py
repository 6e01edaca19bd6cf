"""Hostile text: any Unicode gets a 2xx or a clear 4xx, never a 5xx or a crash."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SPECIAL = [
    "\u200b\u200c\u200d",  # zero-width space / non-joiner / joiner
    "\u202eolleh\u202c",  # right-to-left override
    "שלום עולם",  # RTL script
    "👩‍👩‍👧‍👦🚀🇩🇪",  # emoji with ZWJ and flags
    "\x00\x01\x07\x1b[31m",  # control characters and an ANSI escape
    "a\u0301\u0301\u0301",  # stacked combining marks
    "\ud7ff\ue000\ufffd\U0010ffff",  # edge code points
    "x" * 4000,  # one very long word
    "der hund " * 500,  # long text of many short words
    "。！？" * 300,  # punctuation only
]


def check(r) -> None:
    assert r.status_code in (200, 413, 422), (r.status_code, r.text[:300])
    body = r.json()
    if r.status_code == 200:
        assert isinstance(body["translatedText"], str)
    else:
        assert isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize("text", SPECIAL, ids=range(len(SPECIAL)))
def test_special_inputs(client, text):
    check(client.post("/translate", json={"q": text, "source": "de", "target": "en"}))
    r = client.post("/classify", json={"text": text, "model": "sentiment"})
    assert r.status_code in (200, 413, 422)


def test_100k_characters_is_413(client):
    r = client.post("/translate", json={"q": "ä" * 100_000, "source": "de", "target": "en"})
    assert r.status_code == 413
    assert r.json() == {"error": "text too long: 100000 characters > 5000"}


def test_lone_surrogate_in_json_is_a_clear_4xx(client):
    raw = b'{"q": "\\ud800", "source": "de", "target": "en"}'
    r = client.post("/translate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 422)
    assert "error" in r.json() or "translatedText" in r.json()


@given(text=st.text(max_size=400), source=st.sampled_from(["de", "en", "auto", "xx"]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_unicode_gets_2xx_or_clear_4xx(client, text, source):
    r = client.post("/translate", json={"q": text, "source": source, "target": "en" if source != "en" else "de"})
    assert r.status_code in (200, 400, 413, 422), (r.status_code, r.text[:300])
    assert ("translatedText" in r.json()) if r.status_code == 200 else r.json()["error"]
