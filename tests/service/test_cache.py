"""The sentence translation cache (service/cache.py, TRANSERVE_CACHE_MB): a cached answer is the
answer a fresh decode gives, for every decoding option, HTML and a route through English; keys
do not collide; the bound evicts least recently used first; 0 turns it off; metrics move."""

from __future__ import annotations

import asyncio
import gc
import random
import re
import tracemalloc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service import translation
from service.cache import ALIGNMENT, SENTENCE, Entry, TranslationCache, entry_bytes
from service.metrics import Metrics
from service.runtime.engine import Translation
from service.text import Segment
from service.translation import Decoding, Sentence, align_key, cache_lookup, route_key, sentence_key
from tests.service.conftest import make_client, wait_ready

# sentences repeated across the texts and within one, an ICU message, a kept number
TEXTS = [
    "der hund spielt mit der katze. ein mann läuft.",
    "hallo welt! der hund spielt mit der katze.",
    "ein mann läuft.",
    "die frau hat {n, plural, one {# katze} other {# katzen}} und 12 hunde.",
    "hallo welt!",
]
OPTIONS = [
    {},  # greedy, text only
    {"beam_size": 3},
    {"alternatives": 2},
    {"confidence": True},
    {"beam_size": 4, "alternatives": 3, "confidence": True},
    {"beam_size": 1, "confidence": True},
]


@pytest.fixture(scope="module")
def cached(model_dir) -> Iterator[TestClient]:
    with make_client(model_dir) as c:  # the default: cache_mb 64
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def fresh(model_dir) -> Iterator[TestClient]:
    with make_client(model_dir, cache_mb=0) as c:
        wait_ready(c)
        yield c


def cache_of(client: TestClient) -> TranslationCache:
    cache = client.app.state.service.cache
    assert cache is not None
    return cache


def metric(client: TestClient, name: str, kind: str = "") -> float:
    labels = f'{{kind="{kind}"}}' if kind else ""
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "greedy")
def test_a_cached_answer_is_the_fresh_one(cached, fresh, options):
    body = {"q": TEXTS, "source": "de", "target": "en", **options}
    expected = fresh.post("/translate", json=body)
    assert expected.status_code == 200, expected.text
    cache = cache_of(cached)
    first = cached.post("/translate", json=body)
    hits = cache.hits[SENTENCE]
    again = cached.post("/translate", json=body)
    assert first.json() == expected.json() == again.json()
    assert cache.hits[SENTENCE] > hits  # the second answer came from the cache
    one = cached.post("/translate", json={**body, "q": TEXTS[2]})  # a sentence alone, cached in a list
    assert one.json()["translatedText"] == expected.json()["translatedText"][2]


def test_sentences_each_decoded_once_repeats_in_a_request_included(cached, fresh):
    cache = cache_of(cached)
    cache.clear()
    texts = ["eine katze läuft. eine katze läuft.", "eine katze läuft.", "rot blau. eine katze läuft."]
    misses, hits = cache.misses[SENTENCE], cache.hits[SENTENCE]
    r = cached.post("/translate", json={"q": texts, "source": "de", "target": "en"})
    assert r.json() == fresh.post("/translate", json={"q": texts, "source": "de", "target": "en"}).json()
    assert (cache.misses[SENTENCE] - misses, cache.hits[SENTENCE] - hits) == (
        2,
        3,
    )  # two distinct sentences, three repeats
    cached.post("/translate", json={"q": texts, "source": "de", "target": "en"})
    assert (cache.misses[SENTENCE] - misses, cache.hits[SENTENCE] - hits) == (2, 8)


def test_html_cached_is_fresh(cached, fresh):
    page = (
        "<nav><a href='/'>hallo welt</a> <a href='/k'>die katze</a></nav>"
        "<p>der hund <b>spielt</b> mit der katze. ein mann läuft.</p>"
        "<p>der hund <b>spielt</b> mit der katze.</p><footer>hallo welt</footer>"
    )
    for options in ({}, {"confidence": True, "beam_size": 2}):
        body = {"q": page, "source": "de", "target": "en", "format": "html", **options}
        expected = fresh.post("/translate", json=body).json()
        hits = cache_of(cached).hits.copy()
        assert cached.post("/translate", json=body).json() == expected
        assert cached.post("/translate", json=body).json() == expected
        assert cache_of(cached).hits[SENTENCE] > hits[SENTENCE]


def test_word_alignments_cached_are_fresh(cached, fresh):
    # what format=html asks of a tagged block and its translation (the tiny model's own
    # translations are mostly empty, and an empty one is not aligned: these are given)
    pairs = [
        ("der hund spielt mit der katze", "the dog plays with the cat"),
        ("ein mann läuft", "a man runs"),
        ("der hund spielt mit der katze", "the dog plays with the cat"),
        ("der hund spielt mit der katze", "the cat plays"),
    ]

    def align(client: TestClient, pairs: list[tuple[str, str]], source: str = "de", target: str = "en") -> list:
        return client.portal.call(translation._align, client.app.state.service, pairs, source, target)

    expected = align(fresh, pairs)
    assert any(expected)
    cache = cache_of(cached)
    hits, misses = cache.hits[ALIGNMENT], cache.misses[ALIGNMENT]
    assert align(cached, pairs) == expected
    assert (cache.hits[ALIGNMENT] - hits, cache.misses[ALIGNMENT] - misses) == (1, 3)  # a repeat in the call
    assert align(cached, pairs[::-1]) == expected[::-1]
    assert (cache.hits[ALIGNMENT] - hits, cache.misses[ALIGNMENT] - misses) == (5, 3)
    assert metric(cached, "transerve_cache_hits_total", ALIGNMENT) >= 5
    other = align(cached, pairs[:1], "en", "de")  # the same texts, the other pair's model
    assert cache.misses[ALIGNMENT] - misses == 4 and other == align(fresh, pairs[:1], "en", "de")


def test_options_pairs_and_texts_do_not_collide(cached, fresh):
    cache = cache_of(cached)
    cache.clear()
    hits = cache.hits[SENTENCE]
    text = "hallo welt"
    answers = []
    for options in ({}, {"beam_size": 2}, {"confidence": True}, {"alternatives": 1}):
        body = {"q": text, "source": "de", "target": "en", **options}
        answers.append(cached.post("/translate", json=body).json())
        assert answers[-1] == fresh.post("/translate", json=body).json()
    back = {"q": text, "source": "en", "target": "de"}  # the same text, the other pair
    assert cached.post("/translate", json=back).json() == fresh.post("/translate", json=back).json()
    assert len(cache) == 5 and cache.hits[SENTENCE] == hits
    keys = list(cache._entries)
    assert len({k[0] for k in keys}) == 2 and len({k[1] for k in keys}) == 4  # two routes, four decodings
    assert all(k[2] is None for k in keys)  # the glossary slot
    other = {"q": text + ".", "source": "de", "target": "en"}  # one character more: another sentence
    assert cached.post("/translate", json=other).json() == fresh.post("/translate", json=other).json()
    assert len(cache) == 6


def test_the_route_key_names_each_bundle_version_and_the_variant_served(cached):
    state = cached.app.state.service
    registry = state.registry
    route = registry.route("de", "en")
    (step,), penalty, vocab = route_key(state, cache_of(cached), route)
    model, version, variant, files, source, target = step
    manifest = registry.models[model].manifest
    assert (model, version, source, target) == (route[0].model, manifest.version, "de", "en")
    assert variant == registry.models[model].engine.variant and len(files) == 16
    assert (penalty, vocab) == (state.settings.length_penalty, state.settings.target_vocab)
    assert route_key(state, cache_of(cached), route) is route_key(state, cache_of(cached), list(route))


def test_a_piece_of_a_cut_word_is_its_own_translation_never_a_cached_one(cached):
    state = cached.app.state.service
    cache = cache_of(cached)
    route = state.registry.route("de", "en")
    text = "der hund"
    cache.put_many([(sentence_key(route_key(state, cache, route), Decoding(), text), entry("cached"))])
    piece = Sentence.of(Segment(text, "", cut=True, in_cut_word=True))
    todo = Sentence.of(Segment(text, ""))
    left, pending = cache_lookup(state, cache, route, [piece, todo], Decoding())
    assert piece.best.text == text and todo.best.text == "cached 0" and left == [piece] and not pending


def test_an_empty_translation_is_cached_as_it_is(cached):
    state = cached.app.state.service
    cache = cache_of(cached)
    route = state.registry.route("de", "en")
    key = sentence_key(route_key(state, cache, route), Decoding(), "ein leerer satz")
    cache.put_many([(key, Entry((Translation("", 0.0, 0),), 1.0))])  # as a model may answer
    misses = cache.misses[SENTENCE]
    r = cached.post("/translate", json={"q": ["ein leerer satz", "ein leerer satz"], "source": "de", "target": "en"})
    assert r.json()["translatedText"] == ["", ""] and cache.misses[SENTENCE] == misses  # not decoded again


def test_a_route_through_english_cached_is_fresh(multilingual_dir):
    texts = ["chat chien rouge. le chien.", "le chien.", "chat chien rouge."]
    with make_client(multilingual_dir) as on, make_client(multilingual_dir, cache_mb=0) as off:
        wait_ready(on)
        wait_ready(off)
        for options in ({}, {"confidence": True}, {"beam_size": 2, "alternatives": 1, "confidence": True}):
            body = {"q": texts, "source": "fr", "target": "de", **options}
            expected = off.post("/translate", json=body).json()
            assert on.post("/translate", json=body).json() == expected
            assert on.post("/translate", json=body).json() == expected
        state = on.app.state.service
        steps = {k[0][0] for k in cache_of(on)._entries}
        assert steps == {route_key(state, cache_of(on), state.registry.route("fr", "de"))[0]}
        assert [s[4:] for s in next(iter(steps))] == [("fr", "en"), ("en", "de")]
        assert metric(on, "transerve_cache_hits_total", SENTENCE) >= 9


def test_size_zero_is_off(fresh):
    assert fresh.app.state.service.cache is None
    fresh.post("/translate", json={"q": ["hallo welt", "hallo welt"], "source": "de", "target": "en"})
    assert metric(fresh, "transerve_cache_hits_total", SENTENCE) == 0
    assert metric(fresh, "transerve_cache_misses_total", SENTENCE) == 0


def test_metrics_move(cached):
    body = {"q": "ein kind spielt mit dem hund.", "source": "de", "target": "en"}
    names = ("hits_total", "misses_total", "bytes", "entries")
    kinds = {"hits_total": SENTENCE, "misses_total": SENTENCE}
    before = {n: metric(cached, f"transerve_cache_{n}", kinds.get(n, "")) for n in names}
    cached.post("/translate", json=body)
    cached.post("/translate", json=body)
    after = {n: metric(cached, f"transerve_cache_{n}", kinds.get(n, "")) for n in names}
    assert after["misses_total"] == before["misses_total"] + 1 and after["hits_total"] == before["hits_total"] + 1
    assert after["entries"] == before["entries"] + 1 and after["bytes"] > before["bytes"]
    assert after["bytes"] == cache_of(cached).bytes


def entry(text: str, n: int = 1) -> Entry:
    return Entry(tuple(Translation(f"{text} {k}", -1.5 * k, 3) for k in range(n)), 1.0)


def test_the_bound_evicts_least_recently_used_first_and_counts():
    metrics = Metrics()
    how = Decoding()
    keys = [sentence_key("route", how, f"sentence {i}") for i in range(10)]
    size = entry_bytes(keys[0], entry("x"))
    cache = TranslationCache(4 * size + size // 2, metrics)  # room for four
    cache.put_many([(k, entry("x")) for k in keys[:4]])
    assert len(cache) == 4 and cache.evictions == 0
    assert cache.get_many([keys[0]])[0] == entry("x")  # now the most recently used
    cache.put_many([(keys[4], entry("x"))])
    assert cache.get_many(keys[:5]) == [entry("x"), None, entry("x"), entry("x"), entry("x")]
    cache.put_many([(k, entry("x")) for k in keys[5:]])
    assert len(cache) == 4 and cache.evictions == 6 and cache.bytes <= cache.max_bytes
    assert metrics.cache_evictions._value.get() == 6 and metrics.cache_entries._value.get() == 4
    assert metrics.cache_bytes._value.get() == cache.bytes
    cache.put_many([(keys[9], entry("y"))])  # replaced: its bytes counted once
    assert len(cache) == 4 and cache.evictions == 6 and cache.bytes == sum(s for _, s in cache._entries.values())
    cache.put_many([(keys[9], entry("y", 3))])  # larger: the least recently used goes
    assert len(cache) == 3 and cache.evictions == 7 and cache.get_many(keys[9:])[0] == entry("y", 3)
    huge = TranslationCache(size // 2)
    huge.put_many([(keys[0], entry("x"))])  # larger than the whole bound: not kept
    assert len(huge) == 0 and huge.bytes == 0


def test_the_cache_is_safe_from_threads():
    cache = TranslationCache(200 * entry_bytes(sentence_key("r", Decoding(), "sentence 000"), entry("x")))

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            keys = [sentence_key("r", Decoding(), f"sentence {rng.randrange(400):03d}") for _ in range(5)]
            cache.get_many(keys)
            cache.put_many([(k, entry("x")) for k in keys])

    async def main() -> None:
        await asyncio.gather(*(asyncio.to_thread(work, s) for s in range(4)))

    asyncio.run(main())
    assert cache.bytes == sum(s for _, s in cache._entries.values()) <= cache.max_bytes


def test_the_size_estimate_is_close_to_the_memory_held():
    rng = random.Random(0)
    words = "der hund läuft über die straße the dog runs a house menu file öffnen 文件 打开".split()

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 15)))

    def copy(text: str) -> str:  # a string of its own, as a request's
        return "".join(list(text))

    route = ((("multi", "1.0.0", "int8-static", "0123456789abcdef", "de", "en"),), 1.0, True)
    for n, how in ((1, Decoding()), (4, Decoding(4, 3, True)), (0, None)):
        items: list = []
        for i in range(3000):
            if how is None:  # an alignment: links in characters
                links = tuple(tuple(rng.randrange(400) for _ in range(4)) for _ in range(rng.randint(1, 20)))
                items.append((align_key(route, f"{sentence()} {i}", f"{sentence()} {i}"), links))
            else:
                hyps = tuple(Translation(f"{sentence()} {i}", -0.5 - i, i % 90) for _ in range(n))
                items.append((sentence_key(route, how, f"{sentence()} {i}"), Entry(hyps, 0.5 + i * 1e-9)))
        gc.collect()
        tracemalloc.start()
        copies: list = []
        for key, value in items:  # made anew under tracemalloc: strings, tuples, numbers
            fresh_key = tuple(copy(part) if isinstance(part, str) else part for part in key)
            if isinstance(value, Entry):
                hyps = tuple(Translation(copy(h.text), h.score + 0.25, h.length + 1000) for h in value.hyps)
                copies.append((fresh_key, Entry(hyps, value.factor + 0.25)))
            else:
                copies.append((fresh_key, tuple(tuple(x + 1 for x in link) for link in value)))
        cache = TranslationCache(1 << 40)
        cache.put_many(copies)
        del copies
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert 0.7 < cache.bytes / held < 1.5, (n, cache.bytes, held)
