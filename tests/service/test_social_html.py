"""format=html on the markup of Mastodon, Pleroma, Misskey and Discourse (issue 38, item 1): an
inline element that names a person, a tag or a page (a mention, a hashtag, a link whose text is
its own address) comes back untouched, byte for byte, inside its translated sentence; before, its
text was translated as a sentence of its own (`@<span>anna</span>` -> `@<span>He isnaping.</span>`).

The samples are written as those servers render them: Mastodon 4.x status content (h-card
mentions with `translate="no"`, hashtag links, a long link shortened by `invisible`/`ellipsis`
spans) and 3.x (the same without `translate="no"`), Pleroma/Akkoma and Misskey mentions and
hashtags, and Discourse cooked posts (user and group mentions, the old `hashtag` and the new
`hashtag-cooked` with its icon, a onebox, an inline onebox, an autolinked URL)."""

from __future__ import annotations

import asyncio

import pytest
from bs4 import BeautifulSoup

from service import protect
from service.html import translate_html

MASTODON_4 = (
    '<p>Hallo <span class="h-card" translate="no"><a href="https://x.example/@anna" class="u-url mention">'
    "@<span>anna</span></a></span> wie geht&#39;s? Schau dir "
    '<a href="https://social.example/tags/katzen" class="mention hashtag" rel="tag">#<span>katzen</span></a> an!</p>'
    '<p>Mein Artikel: <a href="https://www.example.com/blog/2024/01/ein-langer-artikel-ueber-katzen" target="_blank" '
    'rel="nofollow noopener noreferrer" translate="no"><span class="invisible">https://www.</span>'
    '<span class="ellipsis">example.com/blog/2024/01/ein-l</span><span class="invisible">anger-artikel-ueber-katzen'
    "</span></a></p>"
)
MASTODON_3 = (
    '<p>Hallo <span class="h-card"><a href="https://x.example/@anna" class="u-url mention">@<span>anna</span></a>'
    "</span> wie geht&#39;s?</p>"
)
PLEROMA = (
    '<p><span class="h-card"><a class="u-url mention" data-user="9uXyZ" href="https://pleroma.example/users/bob" '
    'rel="ugc">@<span>bob</span></a></span> Danke für den Tipp mit '
    '<a class="hashtag" data-tag="fediverse" href="https://pleroma.example/tag/fediverse" rel="tag ugc">#fediverse</a>'
    "!</p>"
)
MISSKEY = (
    '<p><a href="https://misskey.example/@carol" class="u-url mention">@carol@misskey.example</a> Guten Morgen! '
    '<a href="https://misskey.example/tags/misskey" rel="tag">#misskey</a></p>'
)
DISCOURSE = (
    '<p>Danke <a class="mention" href="/u/sam">@sam</a> und <a class="mention-group" href="/groups/team">@team</a>, '
    'siehe <a class="hashtag-cooked" href="/c/support/5" data-type="category" data-slug="support" data-id="5">'
    '<span class="hashtag-icon-placeholder"><svg class="fa d-icon d-icon-square-full svg-icon svg-node">'
    '<use href="#square-full"></use></svg></span><span>support</span></a> für Details.</p>\n'
    '<p>Alte Verweise gehen auch: <a class="hashtag" href="/c/feature/2">#<span>feature</span></a></p>\n'
    '<aside class="onebox allowlistedgeneric" data-onebox-src="https://example.com/artikel">\n'
    '<header class="source"><img src="https://example.com/favicon.ico" class="site-icon" width="32" height="32">'
    '<a href="https://example.com/artikel" target="_blank" rel="noopener">example.com</a></header>\n'
    '<article class="onebox-body"><h3><a href="https://example.com/artikel" target="_blank" rel="noopener">'
    "Ein Artikel über Katzen</a></h3><p>Katzen schlafen gern in der Sonne.</p></article>\n</aside>\n"
    '<p>Mehr unter <a href="https://meta.discourse.org/t/kategorien/12345" class="inline-onebox">'
    'Wie man Kategorien benutzt</a> und <a href="https://example.org/docs">https://example.org/docs</a>.</p>'
)


def _model(texts: list[str], seen: list[str]) -> list[str]:
    """A model behind the service's protection: the words upper-cased, every protected span (a
    URL, mention, hashtag, placeholder: service/protect.py) as it was."""
    seen.extend(texts)
    out = []
    for t in texts:
        parts = protect.split(t)
        out.append(protect.assemble(parts, [w.upper() for w in protect.texts_to_translate(parts)]))
    return out


def translated(html: str) -> tuple[str, list[str]]:
    seen: list[str] = []

    async def model(texts: list[str]) -> list[str]:
        return _model(texts, seen)

    return asyncio.run(translate_html(html, model)), seen


def written(html: str) -> str:
    """`html` as the service writes markup back (BeautifulSoup: attributes in name order)."""
    return BeautifulSoup(html, "html.parser").decode(formatter="minimal")


def elements(html: str, **attrs) -> list[str]:
    return [str(e) for e in BeautifulSoup(html, "html.parser").find_all(attrs=attrs)]


NAMING = [
    (MASTODON_4, {"class": "h-card"}),
    (MASTODON_4, {"rel": "tag"}),
    (MASTODON_4, {"translate": "no"}),  # the h-card and the shortened link
    (MASTODON_3, {"class": "h-card"}),
    (PLEROMA, {"class": "h-card"}),
    (PLEROMA, {"class": "hashtag"}),
    (MISSKEY, {"class": "mention"}),
    (MISSKEY, {"rel": "tag"}),
    (DISCOURSE, {"class": "mention"}),
    (DISCOURSE, {"class": "mention-group"}),
    (DISCOURSE, {"class": "hashtag-cooked"}),
    (DISCOURSE, {"class": "hashtag"}),
    (DISCOURSE, {"href": "https://example.org/docs"}),
]


@pytest.mark.parametrize("page, attrs", NAMING)
def test_mentions_hashtags_and_links_come_back_byte_for_byte(page, attrs):
    out, _ = translated(page)
    want = elements(page, **attrs)
    assert want and elements(out, **attrs) == want


def test_the_sentence_around_a_mention_is_translated_as_one_with_the_mention_in_it():
    out, seen = translated(MASTODON_4)
    assert "Hallo @anna wie geht's? Schau dir #katzen an!" in seen  # one sentence, the names as written
    assert not any(t in ("@", "anna", "#", "katzen") for t in seen)  # nothing of them on its own
    assert out.startswith('<p>HALLO <span class="h-card" translate="no">')
    assert "</span> WIE GEHT'S? SCHAU DIR <a" in out and "</a> AN!</p>" in out
    out, seen = translated(MASTODON_3)  # the toot: the user name stays a user name
    assert out == written(MASTODON_3.replace("Hallo", "HALLO").replace("wie geht&#39;s?", "WIE GEHT'S?"))


def test_a_name_without_a_sign_goes_to_the_model_as_a_placeholder():
    # Discourse's hashtag-cooked shows an icon and "support": the model sees {0}, never "support"
    out, seen = translated(DISCOURSE)
    assert "Danke @sam und @team, siehe {0} für Details." in seen
    assert "support" not in " ".join(seen)
    assert 'DANKE <a class="mention"' in out and "</a> FÜR DETAILS.</p>" in out


def test_oneboxes_keep_their_address_and_translate_their_titles():
    out, _ = translated(DISCOURSE)
    assert '<a href="https://example.com/artikel" rel="noopener" target="_blank">example.com</a>' in out
    assert ">EIN ARTIKEL ÜBER KATZEN</a></h3><p>KATZEN SCHLAFEN GERN IN DER SONNE.</p>" in out
    assert 'kategorien/12345">WIE MAN KATEGORIEN BENUTZT</a> UND <a href="https://example.org/docs">' in out


def test_a_mention_moves_with_its_words_when_the_model_reorders_them():
    async def model(texts: list[str]) -> list[str]:
        table = {"Danke @sam und @team!": "Thanks to @team and @sam!"}
        return [table.get(t, t) for t in texts]

    page = '<p>Danke <a class="mention" href="/u/sam">@sam</a> und <a class="mention" href="/u/team">@team</a>!</p>'
    out = asyncio.run(translate_html(page, model))
    assert out == (
        '<p>Thanks to <a class="mention" href="/u/team">@team</a> and <a class="mention" href="/u/sam">@sam</a>!</p>'
    )


def test_an_element_not_to_be_translated_stays_inside_its_sentence():
    out, seen = translated("<p>Führe <code>ls -l</code> im Ordner <kbd>~</kbd> aus.</p>")
    assert "Führe {0} im Ordner ~ aus." in seen
    assert out.startswith("<p>FÜHRE <code>ls -l</code> IM ORDNER <kbd>~</kbd> AUS.</p>")


def test_a_lost_stand_in_falls_back_to_the_text_nodes_and_keeps_the_element():
    async def loses(texts: list[str]) -> list[str]:
        return ["Hello how are you?" if "@anna" in t else t.upper() for t in texts]

    out = asyncio.run(translate_html(MASTODON_3, loses))
    assert elements(out, **{"class": "h-card"}) == elements(MASTODON_3, **{"class": "h-card"})
    assert out.startswith("<p>HALLO <span") and "WIE GEHT'S?</p>" in out


@pytest.mark.parametrize("page", [MASTODON_4, MASTODON_3, PLEROMA, MISSKEY, DISCOURSE])
def test_through_the_api_every_name_survives_the_tiny_model(client, page):
    r = client.post("/translate", json={"q": page, "source": "de", "target": "en", "format": "html"})
    assert r.status_code == 200
    out = r.json()["translatedText"]
    for attrs in [{"class": "h-card"}, {"rel": "tag"}, {"class": "mention"}, {"class": "hashtag-cooked"}]:
        assert elements(out, **attrs) == elements(page, **attrs)
