"""Glossaries (service/glossary.py; `glossary` of /translate, TRANSERVE_GLOSSARY_DIR): matching,
the files and their reload, the term in every answer (best, alternatives, through English, the
piecewise fallback), the cache key, and the stable refusals of bad glossaries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import glossary, protect
from tests.service.conftest import make_client, wait_ready


def terms(pairs: dict[str, str]) -> glossary.Terms:
    return glossary.Terms([{glossary.words(s): t for s, t in pairs.items()}])


def found(pairs: dict[str, str], text: str) -> list[tuple[str, str]]:
    return [(text[a:b], t) for a, b, t in terms(pairs).find(text)]


def test_whole_words_case_insensitive_longest_first_with_plural_endings():
    g = {"file": "Datei", "file name": "Dateiname", "Menu": "Menü", "print": "Drucken"}
    assert found(g, "Enter a File Name, then open the files.") == [("File Name", "Dateiname"), ("files", "Datei")]
    assert found(g, "The profile menus; printer, printing.") == [("menus", "Menü")]  # inside words: no
    assert found(g, "the file-menu and the file\tname") == [("file\tname", "Dateiname")]  # hyphen-joined: no
    assert found({"Datei": "file"}, "Dateien und Datei.") == [("Dateien", "file"), ("Datei", "file")]
    assert found({"a b": "x"}, "a, b") == []  # words of a term apart by whitespace only
    assert terms({}).find("anything") == []


def test_the_request_wins_over_the_file_and_the_digest_is_stable():
    g = glossary.Terms([{("file",): "Dokument"}, {("file",): "Datei", ("menu",): "Menü"}])
    assert [t for *_, t in g.find("file menu")] == ["Dokument", "Menü"]
    assert glossary.digest([("b", "y"), ("a", "x")]) == glossary.digest([("a", "x"), ("b", "y"), ("a", "x")])
    assert glossary.digest([]) is None


def test_terms_overlapping_a_protected_span_are_left_out():
    text = "see https://example.org/file and the file"
    spans = [(a, b) for a, b, _ in terms({"file": "Datei"}).find(text)]
    assert protect.terms_free(text, spans) == [spans[-1]]
    marked, kept = protect.with_placeholders(text, [spans[-1]]) or ("", [])
    assert marked == "see 7 and the 8" and kept == ["https://example.org/file", "file"]


def test_files_parsed_and_reloaded_when_they_change(tmp_path):
    path = tmp_path / "en-de.tsv"
    path.write_text("# comment\nfile\tDatei\n\nno tab here\nfile name\tDateiname\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("x\ty\n")
    reader = glossary.Files(tmp_path, interval=0.0)
    assert dict(reader.get("en", "de")) == {("file",): "Datei", ("file", "name"): "Dateiname"}
    assert reader.get("de", "en") == {}
    path.write_text("file\tDokument\n", encoding="utf-8")
    os.utime(path, (1, 1))  # a new modification time even within the file system's resolution
    assert dict(reader.get("en", "de")) == {("file",): "Dokument"}
    path.unlink()
    assert reader.get("en", "de") == {}
    slow = glossary.Files(tmp_path, interval=3600)
    (tmp_path / "de-en.tsv").write_text("hund\tdog\n", encoding="utf-8")
    assert dict(slow.get("de", "en")) == {("hund",): "dog"}
    (tmp_path / "de-en.tsv").write_text("hund\thound\n", encoding="utf-8")
    assert dict(slow.get("de", "en")) == {("hund",): "dog"}  # checked at most once per interval


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glossaries")
    (root / "de-en.tsv").write_text("katze\tFELINE\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def client(model_dir, folder) -> Iterator[TestClient]:
    with make_client(model_dir, glossary_dir=folder) as c:
        wait_ready(c)
        yield c


def post(client: TestClient, **body) -> dict:
    r = client.post("/translate", json={"source": "de", "target": "en", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_term_is_in_the_translation_and_every_alternative(client):
    g = [{"source": "Hund", "target": "HOUND"}]
    out = post(client, q="der hund spielt mit der katze.", glossary=g)
    assert "HOUND" in out["translatedText"] and "FELINE" in out["translatedText"]  # request + file
    out = post(client, q=["der hund spielt.", "ein mann läuft."], glossary=g, alternatives=2, confidence=True)
    assert "HOUND" in out["translatedText"][0]
    assert all("HOUND" in alt for alt in out["alternatives"][0])
    assert all(0 < c <= 100 for c in out["confidence"])
    assert "HOUND" not in out["translatedText"][1]
    # a request term overrides the file's
    assert "KITTY" in post(client, q="die katze.", glossary=[{"source": "katze", "target": "KITTY"}])["translatedText"]
    # plurals of the term, and the piecewise fallback (more spans than placeholder digits)
    many = "der hund, 1, 2, 3, 4, 5 und 6 hunde."
    assert post(client, q=many, glossary=g)["translatedText"].count("HOUND") == 2


def test_html_gets_the_glossary_too(client):
    out = post(
        client, q="<p>der <b>hund</b> spielt.</p>", format="html", glossary=[{"source": "hund", "target": "HOUND"}]
    )
    assert "HOUND" in out["translatedText"]


def test_the_glossary_is_in_the_cache_key(client):
    q = "die frau und der hund."
    plain = post(client, q=q)["translatedText"]
    asked = post(client, q=q, glossary=[{"source": "hund", "target": "HOUND"}])["translatedText"]
    assert "HOUND" in asked and "HOUND" not in plain
    assert post(client, q=q)["translatedText"] == plain
    assert post(client, q=q, glossary=[{"source": "hund", "target": "HOUND"}])["translatedText"] == asked
    assert "DOGGO" in post(client, q=q, glossary=[{"source": "hund", "target": "DOGGO"}])["translatedText"]


def test_through_english_the_final_text_has_the_term(multilingual_dir):
    with make_client(multilingual_dir) as c:
        wait_ready(c)
        body = {"q": "le chien rouge.", "source": "fr", "target": "de", "alternatives": 1}
        out = c.post("/translate", json={**body, "glossary": [{"source": "chien", "target": "HUND"}]}).json()
        assert "HUND" in out["translatedText"] and all("HUND" in a for a in out["alternatives"])


@pytest.mark.parametrize(
    ("glossary_value", "message"),
    [
        ("hund", "glossary: must be a list of {source, target} terms"),
        ([{"source": "", "target": "x"}], "glossary: term 0: source must not be empty"),
        ([{"source": "a", "target": "  "}], "glossary: term 0: target must not be empty"),
        ([{"source": 3, "target": "x"}], "glossary: term 0: source must be a string"),
        ([{"source": "a"}], "glossary: term 0: target must be a string"),
        (["a"], "glossary: term 0: must be an object with the strings source and target"),
        (
            [{"source": "a", "target": "b", "x": 1}],
            "glossary: term 0: must be an object with the strings source and target",
        ),
        ([{"source": "a" * 101, "target": "b"}], "glossary: term 0: source longer than 100 characters"),
        ([{"source": "a", "target": "b" * 201}], "glossary: term 0: target longer than 200 characters"),
        ([{"source": "!!", "target": "b"}], "glossary: term 0: source must hold a letter or digit"),
        ([{"source": f"w{k}", "target": "b"} for k in range(257)], "glossary: too many terms: 257 > 256"),
    ],
)
def test_bad_glossaries_refused_with_a_stable_message(client, glossary_value, message):
    r = client.post("/translate", json={"q": "hallo", "source": "de", "target": "en", "glossary": glossary_value})
    assert r.status_code == 400
    assert r.json() == {"error": message}


def test_the_files_are_read_at_start_up_before_any_request(model_dir, tmp_path):
    (tmp_path / "de-en.tsv").write_text("Hund\tcanine\n", encoding="utf-8")
    with make_client(model_dir, glossary_dir=tmp_path) as c:
        wait_ready(c)
        assert glossary.files(tmp_path).pairs == {("de", "en"): {("hund",): "canine"}}


def test_place_keeps_the_translation_and_puts_the_term_where_it_was_aligned():
    # a target the translation holds already (ignoring case, an ending allowed): kept there, in its case
    assert glossary.place("The Files are here", [(0, 5, "file")]) == "The files are here"
    assert glossary.place("Die Dateien sind hier", [(0, 5, "Datei")]) == "Die Dateien sind hier"
    assert glossary.place("the profiles", [(0, 5, "file")]) is None  # inside a word: not there; no links
    # else the words the alignment links to the term: replaced, the rest as it was
    links = [(4, 8, 4, 9), (12, 14, 10, 12)]  # "road" <- the term at 4-9 of the source
    assert glossary.place("The road is long", [(4, 9, "street")], links) == "The street is long"
    assert glossary.place("The road is long", [(20, 25, "street")], links) is None  # nothing linked
    apart = [(0, 3, 4, 9), (16, 20, 4, 9)]  # "The" ... "long": words far apart
    assert glossary.place("The big road is far too long", [(4, 9, "street")], apart) is None
    # two terms on one word: no
    assert glossary.place("The road", [(0, 2, "a"), (3, 5, "b")], [(4, 8, 0, 2), (4, 8, 3, 5)]) is None


def test_a_term_the_model_already_uses_leaves_its_translation_as_it_was(client):
    q = "der hund spielt."
    plain = post(client, q=q, confidence=True)
    word = plain["translatedText"].split()[0].strip(".,")
    asked = post(client, q=q, confidence=True, glossary=[{"source": "hund", "target": word}])
    assert asked == plain  # the same decode, the same confidence: nothing translated again


def test_a_term_goes_where_the_alignment_puts_it(client, monkeypatch):
    from service import translation

    q = "die frau und der hund."
    plain = post(client, q=q, alternatives=2)
    at = q.index("hund")
    asked_for: list[tuple[str, str]] = []

    async def aligned(state, pairs, source, target):  # the second word of each translation <- "hund"
        asked_for.extend(pairs)
        out = []
        for _, translation_ in pairs:
            words = [m.span() for m in glossary._WORD.finditer(translation_)]
            out.append([(*words[1], at, at + 4)] if len(words) > 1 else [])
        return out

    monkeypatch.setattr(translation, "_align", aligned)
    g = [{"source": "hund", "target": "HOUND"}]
    out = post(client, q=q, alternatives=2, glossary=g)
    assert asked_for and all(source == q for source, _ in asked_for)
    first, second, *rest = plain["translatedText"].split(" ", 2)
    assert out["translatedText"] == " ".join([first, "HOUND", *rest])  # the rest as the model gave it
    assert all("HOUND" in alt for alt in out["alternatives"])
