"""Every endpoint and every documented error, against tiny exported bundles."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from service.runtime.engine import Translation
from tests.service.conftest import make_client, wait_ready


@contextmanager
def held_model(state, model: str = "de-en") -> Iterator[threading.Event]:
    """Make `model`'s decoder steps block until the block ends (whichever scheduler runs them);
    yields an event set once a step is inside."""
    gate, entered = threading.Event(), threading.Event()
    engine = state.registry.translators()[model]
    real = engine.run_step

    def held(*args):
        entered.set()
        gate.wait(10)
        return real(*args)

    engine.run_step = held
    try:
        yield entered
    finally:
        gate.set()


def post_in_background(client, body: dict) -> tuple[threading.Thread, list]:
    """POST /translate from another thread; the response lands in the returned list."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(client.post("/translate", json=body)))
    thread.start()
    return thread, result


def test_health_ready_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["models"] == ["de-en", "en-de", "langid", "sentiment"]
    models = {m["name"]: m for m in client.get("/models").json()}
    assert models["de-en"]["task"] == "translation" and models["de-en"]["status"] == "ready"
    assert models["de-en"]["provider"] == "CPUExecutionProvider"
    assert models["sentiment"]["labels"] == ["negative", "positive"]


def test_languages_lists_pairs(client):
    langs = {lang["code"]: lang for lang in client.get("/languages").json()}
    # as LibreTranslate: a language's targets include itself
    assert langs["de"] == {"code": "de", "name": "German", "targets": ["de", "en"]}
    assert langs["en"]["targets"] == ["de", "en"]


def test_translate_single_and_list(client):
    one = client.post("/translate", json={"q": "hallo welt", "source": "de", "target": "en"})
    assert one.status_code == 200
    text = one.json()["translatedText"]
    assert isinstance(text, str)
    many = client.post("/translate", json={"q": ["hallo welt", "der hund"], "source": "de", "target": "en"})
    assert many.status_code == 200
    assert many.json()["translatedText"][0] == text
    assert "detectedLanguage" not in many.json()


def test_translate_accepts_form_bodies(client):
    json_r = client.post("/translate", json={"q": "hallo welt", "source": "de", "target": "en"})
    form_r = client.post("/translate", data={"q": "hallo welt", "source": "de", "target": "en"})
    assert form_r.status_code == 200
    assert form_r.json()["translatedText"] == json_r.json()["translatedText"]


def test_parameters_from_the_query_string_under_the_body(client):
    # deep-translator sends everything in the query string with an empty body
    expected = client.post("/translate", json={"q": "hallo welt", "source": "de", "target": "en"}).json()
    r = client.post("/translate", params={"q": "hallo welt", "source": "de", "target": "en", "api_key": ""})
    assert r.status_code == 200, r.text
    assert r.json() == expected
    # the body wins over the query string; forms and query strings merge
    r = client.post("/translate?target=xx", json={"q": "hallo welt", "source": "de", "target": "en"})
    assert r.json() == expected
    r = client.post("/translate?source=de", data={"q": "hallo welt", "target": "en"})
    assert r.json() == expected
    r = client.post("/detect", params={"q": "der hund spielt"})
    assert r.status_code == 200 and r.json()[0]["language"] == "de"
    assert client.post("/translate").json() == {"error": "empty request body; send JSON or a form"}


def test_translate_auto_detects_source(client):
    r = client.post("/translate", json={"q": "der hund spielt mit der katze", "source": "auto", "target": "en"})
    assert r.status_code == 200, r.text
    assert r.json()["detectedLanguage"]["language"] == "de"
    assert 50 < r.json()["detectedLanguage"]["confidence"] <= 100


def test_translate_same_language_returns_input(client):
    r = client.post("/translate", json={"q": "the dog", "source": "en", "target": "en"})
    assert r.json()["translatedText"] == "the dog"


def test_translate_keeps_line_breaks(client):
    r = client.post("/translate", json={"q": "hallo welt.\n\nder hund.", "source": "de", "target": "en"})
    assert r.status_code == 200
    assert r.json()["translatedText"].count("\n\n") == 1


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        # LibreTranslate's endpoints answer a bad request with 400 (its clients expect that)
        ({"source": "de", "target": "en"}, 400, "q: Field required"),
        ({"q": "", "source": "de", "target": "en"}, 400, "q: must not be empty"),
        ({"q": "   ", "source": "de", "target": "en"}, 400, "q: must not be empty"),
        ({"q": [], "source": "de", "target": "en"}, 400, "q: must not be an empty list"),
        ({"q": 5, "source": "de", "target": "en"}, 400, "q: must be a string or a list of strings"),
        ({"q": ["ok", 5], "source": "de", "target": "en"}, 400, "q: must be a string or a list of strings"),
        ({"q": "hallo", "source": "de"}, 400, "target: Field required"),
        (
            {"q": "hallo", "source": "de", "target": "xx"},
            400,
            "unsupported target language 'xx'; supported pairs: de->en, en->de",
        ),
        (
            {"q": "hallo", "source": "fr", "target": "en"},
            400,
            "unsupported language pair fr->en; supported pairs: de->en, en->de",
        ),
        (
            {"q": "hallo", "source": "de", "target": "en", "format": "xml"},
            400,
            "format: Input should be 'text' or 'html'",
        ),
        ({"q": "a" * 5001, "source": "de", "target": "en"}, 413, "text too long: 5001 characters > 5000"),
        ({"q": ["a"] * 65, "source": "de", "target": "en"}, 413, "too many texts: 65 > 64"),
    ],
)
def test_translate_errors(client, body, status, error):
    r = client.post("/translate", json=body)
    assert r.status_code == status, r.text
    assert r.json() == {"error": error}


def test_invalid_json_is_400(client):
    r = client.post("/translate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"error": "request body is not valid JSON"}


def test_body_larger_than_limit_is_413_before_parsing(client):
    r = client.post("/translate", content=b"x" * 1_000_001, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"error": "request body larger than 1000000 bytes"}


def test_detect(client):
    r = client.post("/detect", json={"q": "the woman runs"})
    assert r.status_code == 200
    best = r.json()[0]
    assert best["language"] == "en" and 0 <= best["confidence"] <= 100
    assert client.post("/detect", json={"q": ""}).status_code == 400


def test_classify(client):
    r = client.post("/classify", json={"text": ["the movie was great", "awful plot"], "model": "sentiment"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert sum(preds[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert preds[0]["probability"] == max(preds[0]["probabilities"].values())


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"text": "good", "model": "nope"}, 400, "unknown model 'nope'; classification models: langid, sentiment"),
        ({"text": "", "model": "sentiment"}, 422, "text: must not be empty"),
        ({"text": ["a"] * 65, "model": "sentiment"}, 413, "too many texts: 65 > 64"),
        ({"model": "sentiment"}, 422, "text: Field required"),
    ],
)
def test_classify_errors(client, body, status, error):
    r = client.post("/classify", json=body)
    assert r.status_code == status, r.text
    assert r.json() == {"error": error}


def test_metrics_count_requests(client):
    client.post("/translate", json={"q": "hallo", "source": "de", "target": "en"})
    text = client.get("/metrics").text
    assert 'transerve_requests_total{endpoint="/translate",status="200"}' in text
    assert "transerve_batch_size_bucket" in text
    assert "transerve_generated_tokens_total" in text
    assert 'transerve_schedule_seconds_count{size="1",stage="decode"}' in text


def test_web_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>transerve</title>" in page.text
    schema = client.get("/openapi.json").json()
    assert "TranslateRequest" in schema["components"]["schemas"]
    body = schema["paths"]["/translate"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-www-form-urlencoded"}


def test_api_keys(model_dir):
    with make_client(model_dir, api_keys=["s3cret"]) as c:
        wait_ready(c)
        body = {"q": "hallo", "source": "de", "target": "en"}
        assert c.post("/translate", json=body).json() == {"error": "invalid or missing API key"}
        assert c.post("/translate", json=body).status_code == 403
        assert c.post("/translate", json=body, headers={"x-api-key": "wrong"}).status_code == 403
        assert c.post("/translate", json=body, headers={"x-api-key": "s3cret"}).status_code == 200
        assert c.post("/translate", json={**body, "api_key": "s3cret"}).status_code == 200
        assert c.post("/translate", json=body, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/languages").status_code == 200  # reading the catalogue needs no key


def test_rate_limit_answers_429(model_dir):
    with make_client(model_dir, rate_limit_per_minute=2) as c:
        wait_ready(c)
        body = {"q": "hallo", "source": "de", "target": "en"}
        codes = [c.post("/translate", json=body).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.post("/translate", json=body)
        assert r.json() == {"error": "rate limit exceeded"} and int(r.headers["retry-after"]) >= 1


def test_cors_closed_unless_configured(model_dir, client):
    r = client.options("/translate", headers={"origin": "https://x.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    with make_client(model_dir, cors_origins=["https://x.example"]) as c:
        r = c.options("/translate", headers={"origin": "https://x.example", "access-control-request-method": "POST"})
        assert r.headers["access-control-allow-origin"] == "https://x.example"


def test_concurrent_requests_are_batched_and_equal_unbatched(model_dir):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"der hund {w} die katze" for w in ("spielt", "läuft", "sieht", "mag", "ist", "hat", "und", "mit")] * 2
    with make_client(model_dir, max_wait_ms=50, cache_mb=0) as c:  # repeats would be cache hits
        wait_ready(c)
        alone = [
            c.post("/translate", json={"q": t, "source": "de", "target": "en"}).json()["translatedText"] for t in texts
        ]
        with ThreadPoolExecutor(16) as pool:
            together = list(
                pool.map(
                    lambda t: c.post("/translate", json={"q": t, "source": "de", "target": "en"}).json()[
                        "translatedText"
                    ],
                    texts,
                )
            )
        sizes = c.get("/metrics").text
    assert together == alone
    # some model call held more than one request's sentence
    batch_counts = [
        line for line in sizes.splitlines() if line.startswith('transerve_batch_size_bucket{le="1.0",model="de-en"}')
    ]
    total = [line for line in sizes.splitlines() if line.startswith('transerve_batch_size_count{model="de-en"}')]
    assert float(batch_counts[0].split()[-1]) < float(total[0].split()[-1])


def test_queue_full_answers_503_with_retry_after(model_dir):
    with make_client(model_dir, max_queue=1, max_wait_ms=0, decode_workers=1) as c:  # one call held at a time
        wait_ready(c)
        state = c.app.state.service
        body = {"q": "hallo welt", "source": "de", "target": "en"}
        with held_model(state) as entered:
            t, first = post_in_background(c, body)
            assert entered.wait(10)  # the first request is inside the model call
            t2, second = post_in_background(c, body)  # fills the queue (max_queue=1)
            for _ in range(200):
                if state.scheduler.queued:
                    break
                threading.Event().wait(0.01)
            r = c.post("/translate", json=body)
        t.join(10)
        t2.join(10)
    assert r.status_code == 503
    assert r.json() == {"error": "server busy, retry later"} and r.headers["retry-after"] == "1"
    assert first[0].status_code == 200 and second[0].status_code == 200  # accepted work is not lost


def test_model_failure_fails_only_its_batch_with_500_and_request_id(model_dir, caplog):
    import logging

    with make_client(model_dir, max_wait_ms=0) as c:
        wait_ready(c)
        state = c.app.state.service
        engine = state.registry.translators()["de-en"]
        real = engine.encode

        def faulty(texts):
            if any("explode" in t for t in texts):
                raise RuntimeError("simulated engine failure")
            return real(texts)

        engine.encode = faulty
        with caplog.at_level(logging.ERROR):
            bad = c.post("/translate", json={"q": "der hund explode", "source": "de", "target": "en"})
        assert bad.status_code == 500
        body = bad.json()
        assert body["error"] == "internal error" and len(body["request_id"]) == 12
        assert "simulated engine failure" not in bad.text  # no internals in the answer
        record = next(r for r in caplog.records if body["request_id"] in r.getMessage())
        assert record.exc_info and "simulated engine failure" in str(record.exc_info[1])  # traceback, with the id
        good = c.post("/translate", json={"q": "der hund", "source": "de", "target": "en"})
        assert good.status_code == 200 and "translatedText" in good.json()


def test_requests_beyond_the_inflight_cap_get_503_at_once(model_dir):
    with make_client(model_dir, max_inflight_requests=1, max_wait_ms=0) as c:
        wait_ready(c)
        state = c.app.state.service
        body = {"q": "hallo welt", "source": "de", "target": "en"}
        with held_model(state) as entered:
            t, first = post_in_background(c, body)
            assert entered.wait(10)  # one request in flight, inside the model
            second = c.post("/translate", json=body)
            assert second.status_code == 503
            assert second.headers["retry-after"] == "1"
            assert second.json() == {"error": "server busy, retry later"}
            assert c.get("/ready").status_code == 200  # probes are never capped
        t.join(10)
        assert first[0].status_code == 200  # the accepted request got its answer
        assert c.post("/translate", json=body).status_code == 200
        assert 'transerve_rejected_total{reason="inflight"} 1.0' in c.get("/metrics").text


def test_beam_alternatives_and_confidence(client):
    base = {"q": "der hund spielt mit der katze", "source": "de", "target": "en"}
    greedy = client.post("/translate", json=base).json()
    assert set(greedy) == {"translatedText"}  # extension fields only when asked for
    r = client.post("/translate", json={**base, "beam_size": 1, "confidence": True}).json()
    assert r["translatedText"] == greedy["translatedText"] and 0 <= r["confidence"] <= 100
    r = client.post("/translate", json={**base, "alternatives": 2}).json()
    assert isinstance(r["alternatives"], list) and len(r["alternatives"]) <= 2
    assert r["translatedText"] not in r["alternatives"] and len(set(r["alternatives"])) == len(r["alternatives"])
    many = client.post(
        "/translate", json={**base, "q": ["hallo welt", "ein mann"], "alternatives": 1, "confidence": True}
    ).json()
    assert len(many["alternatives"]) == 2 and all(isinstance(a, list) for a in many["alternatives"])
    assert len(many["confidence"]) == 2
    form = client.post("/translate", data={**base, "alternatives": "2", "confidence": "true"}).json()
    assert form["alternatives"] == r["alternatives"]


@pytest.mark.parametrize(
    "extra, error",
    [
        ({"alternatives": 99}, "alternatives must be between 0 and 5, got 99"),
        ({"alternatives": -1}, "alternatives must be between 0 and 5, got -1"),
        ({"beam_size": 0}, "beam_size must be between 1 and 8, got 0"),
        ({"beam_size": 2, "alternatives": 3}, "beam_size 2 cannot give 3 alternatives (needs alternatives + 1)"),
    ],
)
def test_bad_decoding_values_are_400(client, extra, error):
    r = client.post("/translate", json={"q": "hallo", "source": "de", "target": "en", **extra})
    assert r.status_code == 400 and r.json() == {"error": error}


def test_libretranslate_shapes_empty_items_codes_symbols_and_error_bodies(client):
    # Mastodon sends "" for a missing alt text: it comes back as ""
    r = client.post("/translate", json={"q": ["hallo welt", "", "der hund"], "source": "de", "target": "en"})
    assert r.status_code == 200, r.text
    out = r.json()["translatedText"]
    alone = client.post("/translate", json={"q": ["hallo welt", "der hund"], "source": "de", "target": "en"}).json()
    assert out == [alone["translatedText"][0], "", alone["translatedText"][1]]
    # emoji, numbers and symbols alone are not words: returned exactly
    for text in ("😀😀", "€18.10", "42", "!!! ???", "😀 ✨ 🎉"):
        r = client.post("/translate", json={"q": text, "source": "de", "target": "en"})
        assert r.json()["translatedText"] == text
    # LibreTranslate's zh-Hans / zh-Hant and regional codes; upper case
    assert client.post("/translate", json={"q": "hallo", "source": "DE", "target": "EN"}).status_code == 200
    r = client.post("/translate", json={"q": "hallo", "source": "de", "target": "zh-Hans"})
    assert r.status_code == 400 and "unsupported target language 'zh'" in r.json()["error"]
    # unknown routes and methods answer {"error": ...}
    assert client.get("/nope").json() == {"error": "Not Found"} and client.get("/nope").status_code == 404
    r = client.get("/translate")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}


def test_frontend_settings_and_spec(client):
    fs = client.get("/frontend/settings").json()
    assert fs["charLimit"] == 5000 and fs["keyRequired"] is False and fs["filesTranslation"] is True
    assert fs["language"]["source"]["code"] == "auto" and fs["language"]["target"]["code"] == "en"
    spec = client.get("/spec").json()
    assert spec["info"]["title"] == "transerve" and "/translate" in spec["paths"]


def test_parse_failures_are_400_not_500(model_dir):
    with make_client(model_dir, api_keys=["s3cret"]) as c:
        wait_ready(c)
        deep = '{"q": "hallo", "source": "de", "target": "en", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
        r = c.post("/translate", content=deep, headers={"content-type": "application/json", "x-api-key": "s3cret"})
        assert r.status_code == 400 and r.json()["error"].startswith("request body is")
        digits = '{"q": "hallo", "source": "de", "target": "en", "n": ' + "9" * 5000 + "}"
        r = c.post("/translate", content=digits, headers={"content-type": "application/json", "x-api-key": "s3cret"})
        assert r.status_code == 400 and "not acceptable JSON" in r.json()["error"]
        r = c.post(
            "/translate",
            content='{"q": "hallo", "source": "de", "target": "en", "api_key": "\\ud800"}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 403 and r.json() == {"error": "invalid or missing API key"}
        # the connection still works afterwards
        ok = c.post("/translate", json={"q": "hallo", "source": "de", "target": "en", "api_key": "s3cret"})
        assert ok.status_code == 200


def test_a_request_with_more_sentences_than_can_be_queued_is_413(client):
    r = client.post("/translate", json={"q": "a\n" * 600, "source": "de", "target": "en"})
    assert r.status_code == 413 and r.json() == {"error": "too many sentences: 600 > 512 per request"}


def test_html_format_keeps_markup(client):
    body = {"q": "<p>hallo <b>welt</b></p><code>der hund</code>", "source": "de", "target": "en", "format": "html"}
    r = client.post("/translate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["translatedText"]
    assert out.startswith("<p>") and out.endswith("<code>der hund</code>") and "</p>" in out
    mastodon = {"q": ["<p>hallo welt</p>", ""], "source": "auto", "target": "en", "format": "html"}
    r = client.post("/translate", json=mastodon)
    assert r.status_code == 200 and r.json()["translatedText"][1] == "" and len(r.json()["detectedLanguage"]) == 2


@pytest.mark.parametrize("bundles", ["model_dir", "multilingual_dir"])
def test_html_inline_elements_are_carried_by_the_models_own_alignment(bundles, request):
    # format=html asks the pair's direct model to align the block with its translation (forced
    # decoding through the scheduler); a multilingual model reads the source with its target tag.
    # (whole-batch scheduling, so that a stand-in for the random model's output can be given)
    with make_client(request.getfixturevalue(bundles), scheduler="batch") as c:
        wait_ready(c)
        model = next(n for n, e in c.app.state.service.registry.translators().items() if e.aligns)
        engine = c.app.state.service.registry.translators()[model]
        engine.translate_batch = lambda texts, *_: [
            [Translation("the dog runs" if "hund" in t else "dog", 0.0, 0)] for t in texts
        ]
        calls: list = []
        real = engine.align
        engine.align = lambda pairs: calls.append(list(pairs)) or real(pairs)
        body = {"q": "<p>der <b>hund</b> läuft</p>", "source": "de", "target": "en", "format": "html"}
        r = c.post("/translate", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["translatedText"]
        assert out.startswith("<p>") and out.endswith("</p>") and out.count("<b>") == out.count("</b>") == 1
        ((source, translation),) = calls[0]
        assert source.endswith("der hund läuft") and (source.startswith("<2en> ") == (bundles != "model_dir"))
        assert translation in out.replace("<b>", "").replace("</b>", "")


def test_html_alignment_can_be_switched_off(model_dir):
    with make_client(model_dir, scheduler="batch", html_alignment=False) as c:
        wait_ready(c)
        engine = c.app.state.service.registry.translators()["de-en"]
        engine.translate_batch = lambda texts, *_: [
            [Translation("the dog runs" if "läuft" in t else "dog", 0.0, 0)] for t in texts
        ]
        engine.align = lambda pairs: pytest.fail("aligned although html_alignment is off")
        body = {"q": "<p>der <b>hund</b> läuft</p>", "source": "de", "target": "en", "format": "html"}
        r = c.post("/translate", json=body)
        assert r.status_code == 200 and r.json()["translatedText"] == "<p>the <b>dog</b> runs</p>"
