"""format=html: text translated, markup kept, nothing invented (service/html.py)."""

from __future__ import annotations

import asyncio

from bs4 import BeautifulSoup

from service.html import translate_html

WORDS = {"hallo": "hello", "welt": "world", "zwei": "two", "katzen": "cats", "rot": "red", "ein": "a", "hund": "dog"}


async def fake(texts: list[str]) -> list[str]:
    """Word-by-word 'translation' that keeps punctuation, so placements can be checked exactly."""

    def word(w: str) -> str:
        bare = w.rstrip("!.,")
        return WORDS.get(bare.lower(), bare) + w[len(bare) :]

    return [" ".join(word(w) for w in t.split()) for t in texts]


def run(html: str) -> str:
    return asyncio.run(translate_html(html, fake))


def tags(html: str) -> list[tuple[str, tuple]]:
    soup = BeautifulSoup(html, "html.parser")
    return [(t.name, tuple(sorted((k, str(v)) for k, v in t.attrs.items()))) for t in soup.find_all(True)]


def test_a_sentence_broken_by_inline_tags_is_one_sentence_with_the_tags_around_the_right_words():
    assert run("<p>Hallo <b>Welt</b>!</p>") == "<p>hello <b>world</b>!</p>"
    assert run('Zwei <a href="/k">Katzen</a> rot') == 'two <a href="/k">cats</a> red'


def test_untranslatable_elements_are_left_exactly():
    html = (
        "<div><p>Hallo</p><pre>Hallo Welt</pre><code>Welt</code><script>var Welt = 1;</script>"
        '<style>p{}</style><span translate="no">Hallo</span><i class="x notranslate">Welt</i><!-- Hallo --></div>'
    )
    out = run(html)
    assert out == html.replace("<p>Hallo</p>", "<p>hello</p>")


def test_blocks_are_translated_separately_and_whitespace_kept():
    # (the parser itself folds whitespace-only text between block tags to one line break)
    out = run("<ul>\n <li>Zwei Katzen</li>\n <li>rot</li>\n</ul>")
    assert out == "<ul>\n<li>two cats</li>\n<li>red</li>\n</ul>"


def test_preformatted_text_keeps_its_whitespace():
    html = "<p> Hallo  </p><pre>  Hallo\n   Welt </pre>"
    assert run(html) == "<p> hello  </p><pre>  Hallo\n   Welt </pre>"


def test_hostile_html_gives_well_formed_output_without_new_markup():
    hostile = [
        '<p onclick="x()">Hallo <b>Welt</b> <img src=x onerror=alert(1)>',
        "<p>Hallo &lt;script&gt;alert(1)&lt;/script&gt; <b>Welt",
        "<<p>>Hallo</p></div></span><b><i>Welt</b></i>",
        '<a href="javascript:alert(1)">Hallo</a><svg><script>alert(1)</script></svg>',
    ]

    async def evil(texts: list[str]) -> list[str]:  # a model that answers with markup
        return ['<script>alert("x")</script><img src=y>' for _ in texts]

    for html in hostile:
        for out in (run(html), asyncio.run(translate_html(html, evil))):
            assert tags(out) == tags(html), (html, out)  # the same elements and attributes, no more
            reparsed = str(BeautifulSoup(out, "html.parser"))
            assert reparsed == out  # well-formed as the parser sees it: a second pass changes nothing


def test_an_element_translated_alone_as_a_phrase_goes_around_its_words_in_the_sentence():
    # a word translated alone often comes back as a phrase ("heute" -> "This is today"): the
    # element goes around the sentence's words it shares with that phrase and no other node's
    table = {
        "Ich habe heute keine Zeit.": "I have no time today.",
        "Ich habe": "I have a lot.",
        "heute": "This is today",
        "keine Zeit.": "There's no time.",
        "Das ist ein sehr wichtiger Termin.": "This is a very important appointment.",
        "Das ist ein": "This is one.",
        "sehr wichtiger": "It's very important.",
        "Termin.": "Appointment.",
        "Guten Tag": "Good day",
        "Guten": "Hello",
        "Tag": "Nothing here",
    }

    async def phrases(texts: list[str]) -> list[str]:
        return [table[t] for t in texts]

    def go(html: str) -> str:
        return asyncio.run(translate_html(html, phrases))

    assert go("<p>Ich habe <b>heute</b> keine Zeit.</p>") == "<p>I have no time <b>today</b>.</p>"
    assert go("Das ist ein <u>sehr wichtiger</u> Termin.") == "This is a <u>very important</u> appointment."
    # no word in common: each text node is translated on its own, as LibreTranslate does
    assert go("<p>Guten <i>Tag</i></p>") == "<p>Hello <i>Nothing here</i></p>"


def _aligner(table: dict[tuple[str, str], list[tuple[str, str]]]):
    """A fake word aligner: for each (source, translation), links between the named words."""

    async def align(pairs: list[tuple[str, str]]) -> list[list[tuple[int, int, int, int]]]:
        out = []
        for source, translation in pairs:
            links = []
            for t_word, s_word in table.get((source, translation), []):
                t0, s0 = translation.index(t_word), source.index(s_word)
                links.append((t0, t0 + len(t_word), s0, s0 + len(s_word)))
            out.append(links)
        return out

    return align


def test_inline_elements_follow_the_word_alignment_where_the_word_search_cannot_find_them():
    # "Schlüssel" alone comes back as "The key", the sentence says "keys": no word in common,
    # the search gives up (text nodes one by one); the alignment links keys <- Schlüssel.
    table = {
        "Ich habe meinen Schlüssel verloren.": "I lost my keys.",
        "Ich habe meinen": "I have my way.",
        "Schlüssel": "The key",
        "verloren.": "He lost.",
    }

    async def phrases(texts: list[str]) -> list[str]:
        return [table[t] for t in texts]

    html = "<p>Ich habe meinen <b>Schlüssel</b> verloren.</p>"
    searched = asyncio.run(translate_html(html, phrases))
    assert searched == "<p>I have my way. <b>The key</b> He lost.</p>"  # what the word search alone gives
    links = {
        ("Ich habe meinen Schlüssel verloren.", "I lost my keys."): [
            ("I", "Ich"), ("lost", "verloren"), ("my", "meinen"), ("keys", "Schlüssel"), (".", "."),
        ]
    }  # fmt: skip
    aligned = asyncio.run(translate_html(html, phrases, _aligner(links)))
    assert aligned == "<p>I lost my <b>keys</b>.</p>"


def test_aligned_elements_may_change_order_and_span_several_words():
    # German verb-final order: the element moves with its words; two words aligned to one element
    async def fixed(texts: list[str]) -> list[str]:
        return ["We go to Paris every day." if t.startswith("Wir") else t for t in texts]

    links = {
        ("Wir fahren jeden Tag nach Paris.", "We go to Paris every day."): [
            ("We", "Wir"), ("go", "fahren"), ("every", "jeden"), ("day", "Tag"), ("Paris", "Paris"),
        ]
    }  # fmt: skip
    html = "Wir fahren <b>jeden Tag</b> nach <i>Paris</i>."
    assert asyncio.run(translate_html(html, fixed, _aligner(links))) == "We go to <i>Paris</i> <b>every day</b>."


def test_an_alignment_that_misses_an_element_or_interleaves_falls_back_to_the_word_search():
    # no word aligned into <b>: the word search places it (fake translates word by word)
    html = "<p>Hallo <b>Welt</b>!</p>"
    none = _aligner({("Hallo Welt!", "hello world!"): [("hello", "Hallo")]})
    assert asyncio.run(translate_html(html, fake, none)) == "<p>hello <b>world</b>!</p>"
    # two elements whose aligned words interleave (b: "two ... red" around i: "cats"): the search again
    html = "<b>Zwei</b> <i>Katzen</i> rot"
    crossed = _aligner({("Zwei Katzen rot", "two cats red"): [("two", "Zwei"), ("red", "Zwei"), ("cats", "Katzen")]})
    assert asyncio.run(translate_html(html, fake, crossed)) == "<b>two</b> <i>cats</i> red"
