"""gettext catalogues (.po, .pot): untranslated messages translated and marked fuzzy, plural
forms filled (the singular into msgstr[0], the plural into the others), contexts, comments,
flags, references, obsolete and translated messages kept, placeholders passed to the pipeline
as they are; malformed, oversized and path-like uploads refused."""

from __future__ import annotations

import polib

from tests.service.test_files import download, upload
from tests.service.test_formats_common import dictionary

PO = r"""# German translations for the demo.
# Copyright (C) 2024
msgid ""
msgstr ""
"Project-Id-Version: demo 1.0\n"
"Language: \n"
"MIME-Version: 1.0\n"
"Content-Type: text/plain; charset=UTF-8\n"
"Content-Transfer-Encoding: 8bit\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"

#. TRANSLATORS: the dialog's title
#: app/dialog.py:12
#, python-format
msgctxt "dialog"
msgid "Hallo %(name)s, der hund spielt"
msgstr ""

#: app/files.py:3
msgid "Eine datei"
msgid_plural "%d dateien"
msgstr[0] ""
msgstr[1] ""

#: app/files.py:9
msgid "Speichern"
msgstr "Sichern"

#, fuzzy
msgid "Abbrechen"
msgstr "Cancel maybe"

msgid "  Die katze  "
msgstr ""

#~ msgid "Der mann"
#~ msgstr ""
"""


def test_po_untranslated_messages_are_translated_and_marked_fuzzy(client, monkeypatch):
    sent = dictionary(monkeypatch)
    out = download(client, upload(client, "de.po", PO.encode()))
    catalogue = polib.pofile(out.decode())
    assert catalogue.header.startswith("German translations for the demo.")
    assert catalogue.metadata["Language"] == "en" and catalogue.metadata["Project-Id-Version"] == "demo 1.0"
    hello, files, save, cancel, cat, _obsolete = catalogue
    assert hello.msgctxt == "dialog" and hello.comment == "TRANSLATORS: the dialog's title"
    assert hello.occurrences == [("app/dialog.py", "12")]
    assert hello.msgid == "Hallo %(name)s, der hund spielt"
    assert hello.msgstr == "Hello %(name)s, the dog plays"
    assert hello.flags == ["fuzzy", "python-format"]
    assert files.msgstr_plural == {0: "A file", 1: "%d files"} and files.flags == ["fuzzy"]
    assert (save.msgstr, save.flags) == ("Sichern", [])  # a translator's work is kept
    assert (cancel.msgstr, cancel.flags) == ("Cancel maybe", ["fuzzy"])
    assert cat.msgstr == "  The cat  "  # the white space around it kept
    assert [(e.msgid, e.msgstr) for e in catalogue.obsolete_entries()] == [("Der mann", "")]
    # the texts sent: each message once, its placeholders as they are
    assert sent == [("text", "Hallo %(name)s, der hund spielt"), ("text", "Eine datei"),
                    ("text", "%d dateien"), ("text", "Die katze")]  # fmt: skip


def test_pot_templates_get_as_many_plural_forms_as_the_header_says(client, monkeypatch):
    dictionary(monkeypatch)
    pot = PO.replace("nplurals=2; plural=(n != 1)", "nplurals=3; plural=(n==1 ? 0 : n%10>=2 ? 1 : 2)")
    catalogue = polib.pofile(download(client, upload(client, "messages.pot", pot.encode())).decode())
    assert catalogue[1].msgstr_plural == {0: "A file", 1: "%d files", 2: "%d files"}


def test_latin1_catalogues_are_read_by_their_charset_and_written_in_utf8(client, monkeypatch):
    dictionary(monkeypatch)
    latin = PO.replace("charset=UTF-8", "charset=ISO-8859-1").replace("Die katze", "Die katze größer")
    out = download(client, upload(client, "latin.po", latin.encode("latin-1"))).decode("utf-8")
    assert "charset=UTF-8" in out and 'msgstr "  The cat größer  "' in out


def test_bad_po_files_are_refused(client):
    r = upload(client, "broken.po", b'msgid "a"\nmsgstr "b"\nthis is not gettext\n')
    assert r.status_code == 400 and r.json() == {"error": "not a valid .po file (syntax error at line 3)"}
    r = upload(client, "bad.po", PO.encode("utf-16"))
    assert r.status_code == 400 and r.json()["error"] == ".po file is not utf-8 text (as its header says)"
    # a path instead of a catalogue: never opened
    r = upload(client, "path.po", b"/etc/passwd")
    assert r.status_code == 400 and r.json()["error"].startswith("not a valid .po file")
    many = "".join(f'msgid "der hund {k}"\nmsgstr ""\n\n' for k in range(6000))
    r = upload(client, "many.po", many.encode())
    assert r.status_code == 413 and r.json()["error"] == "file has 6000 paragraphs; at most 5000"
