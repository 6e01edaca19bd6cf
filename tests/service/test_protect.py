"""URLs, e-mail addresses, @mentions, #hashtags and numbers survive translation byte for byte."""

from __future__ import annotations

import random

import pytest

from service import protect

CASES = {
    "Besuche https://example.com/a?b=1&c=%20x morgen.": ["https://example.com/a?b=1&c=%20x"],
    "Schreib an max.mustermann@example.org, bitte.": ["max.mustermann@example.org"],
    "Danke @anna_k für #Urlaub2024!": ["@anna_k", "#Urlaub2024"],
    "Das kostet 18,10 € und 5 % Steuer um 12:45.": ["18,10 €", "5 %", "12:45"],
    "Siehe www.example.de/x.": ["www.example.de/x"],
    "Ein Hund läuft.": [],
}


@pytest.mark.parametrize("text", CASES)
def test_spans_are_found_and_split_gives_the_text_back(text):
    assert protect.spans(text) == CASES[text]
    parts = protect.split(text)
    assert "".join(p for p, _ in parts) == text
    assert [p for p, is_span in parts if is_span] == CASES[text]


def _plain_found(text: str, pattern) -> list[tuple[int, int, bool]]:
    """`protect._found` without its shortcuts (the cheap tests and the memory of recent texts)."""
    out, pos = [], 0
    for start, end in [*protect.messages(text), (len(text), len(text))]:
        out += [(m.start(), m.end(), m.group("placeholder") is not None) for m in pattern.finditer(text, pos, start)]
        if end > start:
            out.append((start, end, True))
        pos = end
    return out


def test_the_shortcuts_skip_only_texts_without_spans():
    rng = random.Random(0)
    pieces = [*"ab c{}%$:<&#@1\u0663w./_-()!?'=,;|\u00e4\t\n\u00a0\u2003", "www.", "http://", "%s", "$USER$", ":name"]
    pieces += ["{n, plural, one {# x} other {# y}}", "&amp;", "<0>", "</0>", "aaaaaa", "x" * 64, "ab ab ", "the "]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(4000)]
    words = ["der", "die", "the", "a", "ab", "x.", "Haus"]
    texts += [
        rng.choice([" ", "  ", "\u00a0", "\t"]).join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        + rng.choice(["", ".", "!", "a"])
        for _ in range(4000)
    ]
    texts += list(CASES) + ["die die die die", "ja ja ja ja.", "so so so so", "Er sagte das das das."]
    for text in texts:
        for pattern in (protect._SPAN, protect._PLACEHOLDERS):
            assert protect._found(text, pattern) == _plain_found(text, pattern), text
        assert protect.degenerate(text) == (protect._DEGENERATE.search(text) is not None), text


def test_assemble_keeps_spans_and_whitespace():
    parts = protect.split("Besuche https://x.org/a morgen.")
    assert protect.texts_to_translate(parts) == ["Besuche", "morgen."]
    assert protect.assemble(parts, ["Visit", "tomorrow."]) == "Visit https://x.org/a tomorrow."
    assert protect.kept("um 18,10 €", "at 18,10 €") and not protect.kept("um 18,10 €", "at 18h10")


API_TEXTS = [
    "Besuche https://example.com/a?b=1 morgen",
    "Schreib an max@example.org bitte",
    "Danke @anna_k für #Urlaub2024",
    "Das kostet 18,10 € um 12:45 Uhr",
    "https://example.com/only",
]


@pytest.mark.parametrize("beam", [None, 3])
def test_the_api_returns_every_span_exactly(client, beam):
    body = {"q": API_TEXTS, "source": "de", "target": "en", **({"beam_size": beam, "confidence": True} if beam else {})}
    r = client.post("/translate", json=body)
    assert r.status_code == 200
    out = r.json()["translatedText"]
    for src, tr in zip(API_TEXTS, out):
        for span in protect.spans(src):
            assert span in tr, (src, tr)
    assert out[-1] == "https://example.com/only"
    if beam:
        assert all(0 <= c <= 100 for c in r.json()["confidence"])


def _generated(client) -> float:
    lines = [
        line for line in client.get("/metrics").text.splitlines() if line.startswith("transerve_generated_tokens_total")
    ]
    return sum(float(line.split()[-1]) for line in lines)


@pytest.mark.parametrize("q", ["x" * 5000, "abcdefghij" * 499, "-" * 3000, "der " * 1000, "hallo welt " * 400])
def test_degenerate_input_comes_back_as_it_is_without_decoding(client, q):
    # session 6: 5000 "x" were 64 pieces decoded to the length limit, 8,128 tokens, ~5 s of the worker
    before = _generated(client)
    r = client.post("/translate", json={"q": q, "source": "de", "target": "en"})
    assert r.status_code == 200 and r.json()["translatedText"] == q
    assert _generated(client) == before


def test_a_run_inside_a_sentence_is_kept_and_the_rest_translated(client):
    q = "der hund " + "a" * 300 + " die katze"
    out = client.post("/translate", json={"q": q, "source": "de", "target": "en"}).json()["translatedText"]
    assert "a" * 300 in out
    assert protect.degenerate(q) and not protect.degenerate("Donaudampfschifffahrtsgesellschaftskapitän")


def test_words_said_again_and_again_are_degenerate_but_not_ordinary_repetition():
    assert protect.spans("der der der der hund") == ["der der der der"]
    assert protect.degenerate("hallo welt hallo welt hallo welt hallo welt!")
    assert not protect.degenerate("Ja, ja, ja, ja.") and not protect.degenerate("der der der derby")


def test_placeholders_go_in_and_the_spans_come_back_only_when_each_is_there_once():
    marked, found = protect.with_placeholders("Das kostet 18,10 € bei anna@example.org.")
    assert marked == "Das kostet 7 bei 8." and found == ["18,10 €", "anna@example.org"]
    assert protect.restore("It costs 7 at 8.", found) == "It costs 18,10 € at anna@example.org."
    assert protect.restore("It costs 7 at 7:30.", found) is None  # a placeholder twice, one lost, a digit invented
    assert protect.restore("It costs 7.", found) is None
    assert protect.with_placeholders("Ein Hund.") is None
