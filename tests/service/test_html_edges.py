"""format=html at the parser's edges (issue 39, finding 8): an unterminated `<!--` (and any
construct left open at the end), CDATA sections and character references that name no
character are markup, not text: each comes back byte for byte as written and none of it reaches
the model. (Before: the unterminated comment was translated as text and came back escaped,
CDATA was translated with its neighbours and lost its markers, `&#0;` and `&#x110000;` became
U+FFFD, which translation dropped.)"""

from __future__ import annotations

import asyncio

import pytest

from service.html import translate_html


def translated(html: str) -> tuple[str, list[str]]:
    """The page with every text upper-cased by a fake model, and the texts the model got."""
    seen: list[str] = []

    async def upper(texts: list[str]) -> list[str]:
        seen.extend(texts)
        return [t.upper() for t in texts]

    out = asyncio.run(translate_html(html, upper))
    texts = list(seen)
    assert asyncio.run(translate_html(html, upper)) == out  # the same page, the same bytes
    return out, texts


@pytest.mark.parametrize(
    "page, tail",
    [
        ("<p>Hallo Welt</p><!-- ein kommentar", "<!-- ein kommentar"),
        ("<p>Hallo Welt</p><!-- ein <b>x</b> kommentar -", "<!-- ein <b>x</b> kommentar -"),
        ("<div><p>Hallo Welt <!-- ein <p>kommentar", "<!-- ein <p>kommentar"),  # opened inside elements
        ("<p>Hallo Welt</p><![CDATA[ein kommentar", "<![CDATA[ein kommentar"),
        ("<p>Hallo Welt</p><!DOCTYPE ein kommentar", "<!DOCTYPE ein kommentar"),
        ("<p>Hallo Welt</p><?php ein kommentar", "<?php ein kommentar"),
        ('<p>Hallo Welt <b title="ein kommentar', '<b title="ein kommentar'),
    ],
)
def test_markup_left_open_at_the_end_is_kept_as_written_and_not_translated(page, tail):
    out, seen = translated(page)
    assert out.endswith(tail)  # byte for byte, last: nothing (an end tag) inside the open comment
    assert out.startswith(("<p>HALLO WELT", "<div><p>HALLO WELT")) and out.count("HALLO WELT") == 1
    assert seen == ["Hallo Welt"]  # nothing of the tail reached the model
    assert "&lt;" not in out


def test_a_terminated_comment_is_still_a_comment():
    out, seen = translated("<p>Hallo</p><!-- ein --><p>Welt</p><!-- kommentar")
    assert out == "<p>HALLO</p><!-- ein --><p>WELT</p><!-- kommentar" and seen == ["Hallo", "Welt"]


def test_an_unclosed_script_or_style_keeps_its_content_untranslated():
    for page in ("<p>Hallo</p><script>var welt = 1", "<p>Hallo</p><style>p { color: red }"):
        out, seen = translated(page)
        assert out == page.replace("Hallo", "HALLO") + ("</script>" if "script" in page else "</style>")
        assert seen == ["Hallo"]


def test_cdata_is_kept_as_written_and_not_merged_into_its_neighbours():
    out, seen = translated("<p>Hallo <![CDATA[der <hund> & die katze]]> Welt</p>")
    assert seen == ["Hallo  Welt"]  # the sentence around it, without it
    assert out == "<p>HALLO  WELT<![CDATA[der <hund> & die katze]]></p>"  # markup kept at the sentence's end
    out, seen = translated("<p>Hallo</p><![CDATA[der hund]]><p>Welt</p>")
    assert out == "<p>HALLO</p><![CDATA[der hund]]><p>WELT</p>" and seen == ["Hallo", "Welt"]
    out, seen = translated("<p>ein <b>Hallo<![CDATA[hund]]></b> Welt</p>")  # inside an inline element
    assert "hund" not in " ".join(seen) and out.count("<![CDATA[hund]]>") == 1 and "HUND" not in out


@pytest.mark.parametrize("ref", ["&#0;", "&#x0;", "&#x110000;", "&#1114112;", "&#xD800;", "&#1;", "&#x9D;", "&#127;"])
def test_a_reference_that_names_no_character_is_kept_as_written(ref):
    out, seen = translated(f"<p>Hallo {ref} Welt</p><p>{ref}</p>")
    assert out == f"<p>HALLO  WELT{ref}</p><p>{ref}</p>"
    assert seen == ["Hallo  Welt"]  # no U+FFFD or control character sent to the model
    assert "\ufffd" not in out


def test_a_reference_without_its_semicolon_gets_one():
    assert translated("<p>Hallo &#0 Welt</p>")[0] == "<p>HALLO  WELT&#0;</p>"


def test_references_to_characters_are_still_text():
    out, seen = translated("<p>&#65;&#x62; &#128; &#x1F600; &#9;x</p>")
    assert seen == ["Ab € \U0001f600 \tx"]  # &#128; is windows-1252's euro sign, as browsers read it
    assert out == "<p>AB € \U0001f600 \tX</p>"


@pytest.mark.parametrize(
    "page, kept",
    [
        ("<p>der hund</p><!-- die katze", "<!-- die katze"),
        ("<p>der hund <![CDATA[die katze]]></p>", "<![CDATA[die katze]]>"),
        ("<p>der hund &#0; &#x110000;</p>", "&#0;&#x110000;"),
    ],
)
def test_through_the_api(client, page, kept):
    r = client.post("/translate", json={"q": page, "source": "de", "target": "en", "format": "html"})
    assert r.status_code == 200 and r.json()["translatedText"].endswith(kept + ("</p>" if "<!--" not in kept else ""))
