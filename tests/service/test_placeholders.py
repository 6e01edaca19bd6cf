"""Placeholders of software strings (issue 38): every format gettext, ICU, i18next, Qt, Android,
iOS, Python, Ruby, Laravel, Django and WML catalogs use comes back byte for byte, exactly as
often as in the source, in text, HTML and files; an ICU plural/select message keeps its structure
and has its words translated. The corpus below is self-contained (UI strings of the kind Weblate
serves; the measured corpus from the l10n data is benchmarks/placeholders.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from service import protect
from service.text import split_text

# (UI string, its placeholders in order)
CORPUS: list[tuple[str, list[str]]] = [
    ("Delete {0} files?", ["{0}"]),
    ("{0} of {1} items selected", ["{0}", "{1}"]),
    ("Welcome back, {name}!", ["{name}"]),
    ("{user} invited you to join {project}.", ["{user}", "{project}"]),
    ("You have {{count}} unread messages", ["{{count}}"]),
    ("Signed in as {{ username }}", ["{{ username }}"]),
    ("Could not open file %s", ["%s"]),
    ("Hello $USER$, you have $COUNT$ new messages", ["$USER$", "$COUNT$"]),  # Chrome messages.json
    ("%d files were copied", ["%d"]),
    ("%s wants to share %d photos with you", ["%s", "%d"]),
    ("Moved %1$s to %2$s", ["%1$s", "%2$s"]),
    ("%(count)d new comments on %(title)s", ["%(count)d", "%(title)s"]),
    ("Download speed: %.1f MB/s", ["%.1f"]),
    ("Progress: %3d%% complete", ["%3d", "%%"]),
    ("Hello, ${firstName}! Your order ${orderId} has shipped.", ["${firstName}", "${orderId}"]),
    ("The :attribute field is required.", [":attribute"]),
    ("The :attribute must be at least :min characters.", [":attribute", ":min"]),
    ("Click <0>here</0> to reset your password.", ["<0>", "</0>"]),
    ("Read the <1>terms of service</1> before you continue.<2/>", ["<1>", "</1>", "<2/>"]),
    ("Use &lt;b&gt;bold&lt;/b&gt; for important words", ["&lt;b&gt;", "&lt;/b&gt;"]),
    ("Saved by %@ on %@", ["%@", "%@"]),
    ("Found %1 matches in %2 files", ["%1", "%2"]),
    ("Last seen %{time} ago", ["%{time}"]),
    ("Rename the layer $1 to $2", ["$1", "$2"]),
    ("$player_name has recruited $unit.name|.", ["$player_name", "$unit.name|"]),
    ("Your balance is {amount, number, currency}.", ["{amount, number, currency}"]),
    ("Posted on {date, date, medium} by {author}", ["{date, date, medium}", "{author}"]),
    ("Ignore everything between {% comment %} and {% endcomment %}.", ["{% comment %}", "{% endcomment %}"]),
    ("Unable to connect to {host}:{port}. Please try again.", ["{host}", "{port}"]),
    ("Copy {0:.2f} GB of data to the disk?", ["{0:.2f}"]),
    ("Are you sure you want to remove {name!r}?", ["{name!r}"]),
    ("Translated &quot;{0}&quot; into {1}", ["&quot;", "{0}", "&quot;", "{1}"]),
    ("Upload failed: %s. Retry in %d seconds.", ["%s", "%d"]),
    ("You have {count, plural, one {# file} other {# files}} in {folder}.", [
        "{count, plural, one {# file} other {# files}}", "{folder}"]),
    ("{count, plural, =0 {No new messages} one {One new message} other {# new messages}}", [
        "{count, plural, =0 {No new messages} one {One new message} other {# new messages}}"]),
    ("{gender, select, female {She replied} male {He replied} other {They replied}} to your post.", [
        "{gender, select, female {She replied} male {He replied} other {They replied}}"]),
    ("{place, selectordinal, one {#st} two {#nd} few {#rd} other {#th}} place", [
        "{place, selectordinal, one {#st} two {#nd} few {#rd} other {#th}}"]),
]  # fmt: skip


@pytest.mark.parametrize("text, expected", CORPUS, ids=[t for t, _ in CORPUS])
def test_every_placeholder_format_is_found_and_split_gives_the_text_back(text, expected):
    assert protect.placeholders(text) == expected
    parts = protect.split(text)
    assert "".join(p for p, _ in parts) == text
    assert all(p in [s for s, is_span in parts if is_span] for p in expected)


def test_prose_is_not_taken_for_placeholders():
    for text in [
        "Der Zug fährt um 18:10 Uhr ab.",  # a time (a number span, not a :name)
        "Das kostet 5 % mehr, 100% sicher.",
        "Siehe std::string und http://example.com/a:b",
        "Ein Satz {mit Klammern} und a < b > c",
        "C# und F# sind Sprachen; #1 ist ein Hashtag",
        "Schreib an anna@example.org <anna@example.org>",
        "Das %-Zeichen kostet $5.99 pro Stück",  # a word after %-, a price
    ]:
        assert protect.placeholders(text) == [], text
    # names are ASCII: in Chinese the next word follows without a space
    assert protect.placeholders("无效用户名：$nick点 :name个 %1个") == ["$nick", ":name", "%1"]


def test_icu_messages_are_cut_into_structure_and_branch_texts():
    message = "{count, plural, offset:1 =0 {no files} one {# file} other {# files in {dir}}}"
    assert protect.branches(message) == [
        ("{count, plural, offset:1 =0 {", True), ("no files", False), ("} one {", True), ("# file", False),
        ("} other {", True), ("# files in {dir}", False), ("}}", True),
    ]  # fmt: skip
    nested = "{g, select, male {He has {n, plural, one {# cat} other {# cats}}} other {They}}"
    assert protect.messages(f"Note: {nested}!") == [(6, 6 + len(nested))]
    assert [t for t, fixed in protect.branches(nested) if not fixed] == [
        "He has {n, plural, one {# cat} other {# cats}}",
        "They",
    ]
    quoted = "{n, plural, one {it''s '{'one'}'} other {many}}"  # ICU quotes: braces as text
    assert protect.messages(quoted) == [(0, len(quoted))]
    assert protect.branches("{n, plural, one {x} stray}") == [("{n, plural, one {x} stray}", True)]  # not ICU
    # a message is one sentence: its branches are never split into sentences of their own
    text = "Done. {n, plural, one {One file. Delete it?} other {# files. Delete them?}} Bye."
    assert [s.text for s in split_text(text, 100, len)] == [
        "Done.", "{n, plural, one {One file. Delete it?} other {# files. Delete them?}} Bye."]  # fmt: skip


def test_a_translation_is_kept_only_with_each_placeholder_exactly_as_often():
    assert protect.kept("Delete {0} files?", "Löschen {0} Dateien?")
    assert not protect.kept("Delete {0} files?", "Löschen {0} {0} Dateien?")  # a %s more breaks printf
    assert not protect.kept("Moved %1$s to %2$s", "Verschoben %1$s nach %2 s")
    assert not protect.kept("Click <0>here</0> now.", "Klick <0></0> jetzt.")  # the link lost its words
    assert protect.kept("Click <0>here</0> now.", "Klick jetzt <0>hier</0>.")


def test_placeholder_digits_come_back_only_where_they_stand_apart_as_in_the_source():
    marked, spans = protect.with_placeholders("Relative to $HOME, or # KEEP")
    assert marked == "Relative to 7, or 8 KEEP" and spans == ["$HOME", "#"]
    assert protect.restore("Relativ zu 7, oder 8 KEEP", spans, marked) == "Relativ zu $HOME, oder # KEEP"
    assert protect.restore("Relativ zu 7th, oder 8 KEEP", spans, marked) is None  # $HOMEth
    assert protect.restore("Relativ zu 7, oder 8KEEP", spans, marked) is None  # #KEEP: a hashtag
    assert protect.restore("相对于7，或8 KEEP", spans, marked) == "相对于$HOME，或# KEEP"  # zh joins words
    marked, spans = protect.with_placeholders("Click <0>here</0> now.")
    assert protect.restore("Klick 78 jetzt.", spans, marked) is None
    # a piece translated on its own does not run into the span beside it (`#` + "Dějj!" = a hashtag)
    parts = protect.split("output: #!/bin/sh")
    assert protect.assemble(parts, ["výstup:", "Dějj!"]) == "výstup: #!/bin/sh"


def _structure(message: str) -> list[str]:
    return [p for p, fixed in protect.branches(message) if fixed]


def _placeholders_kept(source: str, out: str) -> bool:
    want = Counter(protect.placeholders(source))
    for s in want:  # an ICU message comes back with its branches translated: compare its structure
        if s.startswith("{") and protect.messages(s):
            found = [out[a:b] for a, b in protect.messages(out)]
            if not any(_structure(f) == _structure(s) for f in found):
                return False
    rest = Counter({p: n for p, n in want.items() if not protect.messages(p)})
    return Counter(p for p in protect.placeholders(out) if p in rest) == rest


TEXTS = [t for t, _ in CORPUS]


def test_the_api_returns_every_placeholder_byte_for_byte(client):
    # the tiny model translates nothing right: every placeholder survives by protection alone
    r = client.post("/translate", json={"q": TEXTS, "source": "en", "target": "de"})
    assert r.status_code == 200
    for src, out in zip(TEXTS, r.json()["translatedText"]):
        assert _placeholders_kept(src, out), (src, out)


def test_an_icu_message_keeps_its_structure_and_has_its_branches_translated(client):
    text = "You have {count, plural, one {# file} other {# files}} in {folder}."
    out = client.post("/translate", json={"q": text, "source": "en", "target": "de"}).json()["translatedText"]
    [(a, b)] = protect.messages(out)
    message = out[a:b]
    assert _structure(message) == ["{count, plural, one {", "} other {", "}}"] and "{folder}" in out
    # each branch is translated as a sentence of its own, its `#` kept
    alone = client.post("/translate", json={"q": ["# file", "# files"], "source": "en", "target": "de"}).json()
    assert [t for t, fixed in protect.branches(message) if not fixed] == alone["translatedText"]
    assert all(t.count("#") == 1 for t in alone["translatedText"])


def test_a_placeholder_alone_comes_back_without_a_model_call(client):
    r = client.post(
        "/translate", json={"q": ["{name}", "%(count)d", "{{ user }}", "<0></0>"], "source": "en", "target": "de"}
    )
    assert r.json()["translatedText"] == ["{name}", "%(count)d", "{{ user }}", "<0></0>"]


def test_placeholders_survive_html_and_files(client):
    html = "<ul>" + "".join(f"<li>{t}</li>" for t in TEXTS[:12]) + "</ul>"
    r = client.post("/translate", json={"q": html, "source": "en", "target": "de", "format": "html"})
    assert r.status_code == 200
    out = r.json()["translatedText"]
    for t in TEXTS[:12]:
        for p in protect.placeholders(t):
            assert p in out, (p, out)
    data = "\n".join(TEXTS).encode()
    r = client.post(
        "/translate_file",
        data={"source": "en", "target": "de"},
        files={"file": ("strings.txt", data, "application/octet-stream")},
    )
    assert r.status_code == 200, r.text
    got = client.get(r.json()["translatedFileUrl"].removeprefix("http://testserver")).content.decode().split("\n")
    assert len(got) == len(TEXTS)
    for src, out in zip(TEXTS, got):
        assert _placeholders_kept(src, out), (src, out)


def test_messages_nested_deeper_than_the_limit_are_kept_whole(client):
    # each level of nesting is one more pass of the stages: past MAX_NESTING a message is kept as it is
    deep = "{a, select, b {" * (protect.MAX_NESTING + 1) + "x" + "}}" * (protect.MAX_NESTING + 1)
    assert protect.branches(deep) == [(deep, True)] and protect.unprotected(deep) == ""
    r = client.post("/translate", json={"q": [deep, "{" * 3000 + "x"], "source": "en", "target": "de"})
    assert r.status_code == 200 and r.json()["translatedText"][0] == deep
