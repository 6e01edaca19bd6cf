"""`python -m training data gettext|xliff`: parallel corpora from translation catalogs."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

polib = pytest.importorskip("polib")

from training.__main__ import main  # noqa: E402
from training.catalogs import gettext_pairs, normalize_lang, strip_accelerators, write_corpus, xliff_pairs  # noqa: E402
from training.data import ParallelSet, load_directions  # noqa: E402

ENTRIES = [
    ("_Open", "Ö_ffnen"),
    ("Save the file", "Datei speichern"),
    ("Delete {0} files?", "{0} Dateien löschen?"),
    ("Tom &amp; Jerry", "Tom &amp; Jerry und Co."),
    ("MAX_PATH_LEN exceeded", "MAX_PATH_LEN überschritten"),
    ("Same", "Same"),  # untranslated in effect: dropped
    ("Empty", ""),  # untranslated: dropped
]


def _catalog(lang: str | None, fuzzy: str = "Fuzzy entry") -> polib.POFile:
    po = polib.POFile()
    po.metadata = {"Content-Type": "text/plain; charset=UTF-8", **({"Language": lang} if lang else {})}
    for msgid, msgstr in ENTRIES:
        po.append(polib.POEntry(msgid=msgid, msgstr=msgstr))
    po.append(polib.POEntry(msgid=fuzzy, msgstr="Unscharf", flags=["fuzzy"]))
    po.append(polib.POEntry(msgid="Old", msgstr="Alt", obsolete=True))
    po.append(polib.POEntry(msgid="%d file", msgid_plural="%d files", msgstr_plural={0: "%d Datei", 1: "%d Dateien"}))
    return po


def _deb(path: Path, members: dict[str, bytes]) -> Path:
    """A minimal Debian package (ar archive: debian-binary, control.tar.gz, data.tar.gz)."""

    def tar(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    parts = {
        "debian-binary": b"2.0\n",
        "control.tar.gz": tar({"./control": b"Package: toy\nVersion: 1\nArchitecture: all\n"}),
        "data.tar.gz": tar(members),
    }
    out = bytearray(b"!<arch>\n")
    for name, data in parts.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def test_languages_and_accelerators():
    assert normalize_lang("de_DE") == "de"
    assert normalize_lang("zh_CN") == normalize_lang("zh-Hans") == "zh"
    assert normalize_lang("zh_TW") == "zh_Hant"  # not Simplified: kept apart
    assert normalize_lang("sr@latin") == "sr"
    assert strip_accelerators("_Open") == "Open"
    assert strip_accelerators("Ö_ffnen") == "Öffnen"
    assert strip_accelerators("~Save") == "Save"
    assert strip_accelerators("&Edit") == "Edit"
    assert strip_accelerators("Tom &amp; &Jerry") == "Tom &amp; Jerry"
    assert strip_accelerators("MAX_PATH_LEN") == "MAX_PATH_LEN"
    assert strip_accelerators("use snake_case", "nutze snake_case") == "use snake_case"
    assert strip_accelerators("Spei_chern", "_Save") == "Speichern"
    assert strip_accelerators("a && b") == "a && b"


def test_po_mo_and_deb_give_the_same_pairs(tmp_path):
    po = _catalog("de")
    po.save(str(tmp_path / "app.po"))
    po.save_as_mofile(str(tmp_path / "app.mo"))
    from_po = {(p.lang, p.text, p.en) for p in gettext_pairs([tmp_path / "app.po"])}
    from_mo = {(p.lang, p.text, p.en) for p in gettext_pairs([tmp_path / "app.mo"])}
    assert from_po == {
        ("de", "Öffnen", "Open"),
        ("de", "Datei speichern", "Save the file"),
        ("de", "{0} Dateien löschen?", "Delete {0} files?"),
        ("de", "Tom &amp; Jerry und Co.", "Tom &amp; Jerry"),
        ("de", "MAX_PATH_LEN überschritten", "MAX_PATH_LEN exceeded"),
        ("de", "%d Datei", "%d file"),
    }
    assert from_mo == from_po  # .mo keeps no fuzzy or obsolete entries either
    # a .deb: the language from the locale path (the .mo header says none), the domain as source
    nolang = _catalog(None)
    nolang.save_as_mofile(str(tmp_path / "x.mo"))
    deb = _deb(
        tmp_path / "toy.deb",
        {
            "./usr/share/locale/fr_FR/LC_MESSAGES/toy.mo": (tmp_path / "x.mo").read_bytes(),
            "./usr/share/doc/toy/README": b"not a catalog",
        },
    )
    from_deb = list(gettext_pairs([deb]))
    assert {p.lang for p in from_deb} == {"fr"} and {p.source for p in from_deb} == {"toy"}
    assert {(p.text, p.en) for p in from_deb} == {(t, e) for _, t, e in from_po}


def test_xliff_12_and_20(tmp_path):
    (tmp_path / "a.xlf").write_text(
        """<?xml version="1.0"?>
<xliff version="1.2" xmlns="urn:oasis:names:tc:xliff:document:1.2">
 <file source-language="en" target-language="cs" datatype="plaintext" original="ui">
  <body>
   <trans-unit id="1"><source>Click <g id="b">Save</g> now</source>
    <target>Klikněte na <g id="b">Uložit</g></target></trans-unit>
   <trans-unit id="2"><source>New</source><target state="new">New</target></trans-unit>
   <trans-unit id="3"><source>Close</source></trans-unit>
  </body>
 </file>
</xliff>""",
        encoding="utf-8",
    )
    (tmp_path / "b.xliff").write_text(
        """<?xml version="1.0"?>
<xliff version="2.0" xmlns="urn:oasis:names:tc:xliff:document:2.0" srcLang="zh-CN" trgLang="en">
 <file id="f1"><unit id="u1"><segment><source>保存文件</source><target>Save the file</target></segment></unit>
 <unit id="u2"><segment state="initial"><source>打开</source><target>Open</target></segment></unit></file>
</xliff>""",
        encoding="utf-8",
    )
    pairs = {(p.lang, p.text, p.en) for p in xliff_pairs([tmp_path])}
    assert pairs == {("cs", "Klikněte na Uložit", "Click Save now"), ("zh", "保存文件", "Save the file")}
    (tmp_path / "bad.xlf").write_text("<html/>", encoding="utf-8")
    with pytest.raises(ValueError, match="not an XLIFF file"):
        list(xliff_pairs([tmp_path / "bad.xlf"]))


def test_corpus_splits_by_whole_english_strings_and_trains_as_a_set(tmp_path):
    po = polib.POFile()
    po.metadata = {"Language": "de"}
    for i in range(100):
        po.append(polib.POEntry(msgid=f"Item number {i}", msgstr=f"Eintrag Nummer {i}"))
    po.save(str(tmp_path / "a.po"))
    po2 = polib.POFile()
    po2.metadata = {"Language": "de"}
    for i in range(100):  # the same English strings, another translation: must stay in one split
        po2.append(polib.POEntry(msgid=f"Item number {i}", msgstr=f"Element {i}"))
    po2.save(str(tmp_path / "b.po"))
    out = tmp_path / "corpus"
    assert (
        main(
            [
                "data",
                "gettext",
                str(tmp_path / "a.po"),
                str(tmp_path / "b.po"),
                "--out",
                str(out),
                "--valid",
                "10",
                "--test",
                "10",
            ]
        )
        == 0
    )
    counts = write_corpus(gettext_pairs([tmp_path / "a.po", tmp_path / "b.po"]), tmp_path / "again", valid=10, test=10)
    assert counts == {"de-en": {"train": 160, "valid": 20, "test": 20}}
    split_of = {}
    for split in ("train", "valid", "test"):
        with gzip.open(out / f"{split}.de-en.en.gz", "rt", encoding="utf-8") as f:
            for en in f.read().splitlines():
                assert split_of.setdefault(en, split) == split  # never in two splits
    assert (out / "train.de-en.source.gz").read_bytes() == (tmp_path / "again" / "train.de-en.source.gz").read_bytes()
    # the corpus is a training set as written, and its catalogs can be chosen
    rows = load_directions([f"de-en {out} train.de-en drop=b"], ["en-de"], tags=True)
    assert len(rows) == 80 and all(r[1].startswith("Eintrag") for r in rows)
    both = load_directions([f"de-en {out} train.de-en drop=b"], ["en-de", "de-en"], tags=True)
    into_en = load_directions([f"de-en {out} train.de-en drop=b into=en"], ["en-de", "de-en"], tags=True)
    assert len(both) == 160 and len(into_en) == 80 and {r[2] for r in into_en} == {"de-en"}
    with pytest.raises(ValueError, match="unknown option"):
        ParallelSet.parse(f"de-en {out} train.de-en into=fr")
    assert len(ParallelSet.parse(f"de-en {out} valid.de-en only=a,b").load()) == 20
    with pytest.raises(ValueError, match="no pairs from source"):
        ParallelSet.parse(f"de-en {out} train.de-en only=c").load()
    with pytest.raises(ValueError, match="unknown option"):
        ParallelSet.parse(f"de-en {out} train.de-en only=")


def test_cli_refuses_what_it_cannot_read(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    assert main(["data", "gettext", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]) == 2
    assert main(["data", "gettext", str(tmp_path / "missing.po"), "--out", str(tmp_path / "o")]) == 2
    empty = polib.POFile()
    empty.metadata = {"Language": "de"}
    empty.save(str(tmp_path / "empty.po"))
    assert main(["data", "gettext", str(tmp_path / "empty.po"), "--out", str(tmp_path / "o")]) == 2
