"""XLIFF 1.2 and 2.0: each source without a translation gets one (1.2: state
"needs-review-translation", qualifier "mt-suggestion"; 2.0: the segment "translated"), inline
codes kept (paired ones around their own words, the others whole, none lost), translations
there already, `translate="no"`, notes and everything else kept; the target language set where
missing; hostile and malformed files refused."""

from __future__ import annotations

from lxml import etree

from tests.service.test_files import download, upload
from tests.service.test_formats_common import dictionary

V12 = "urn:oasis:names:tc:xliff:document:1.2"
V20 = "urn:oasis:names:tc:xliff:document:2.0"
XLIFF12 = f"""<?xml version="1.0" encoding="UTF-8"?>
<xliff version="1.2" xmlns="{V12}">
  <file original="app.properties" source-language="de" datatype="plaintext">
    <body>
      <trans-unit id="greeting">
        <source>Hallo welt</source>
        <note>Shown at start-up</note>
      </trans-unit>
      <trans-unit id="link">
        <source>Klicken Sie <g id="1" ctype="x-html-a">hier</g>, um <x id="2"/>die datei zu öffnen</source>
        <target/>
      </trans-unit>
      <trans-unit id="bold">
        <source><bpt id="1">&lt;b&gt;</bpt>Die katze<ept id="1">&lt;/b&gt;</ept> schläft</source>
      </trans-unit>
      <trans-unit id="done">
        <source>Speichern</source>
        <target state="translated">Sichern</target>
      </trans-unit>
      <trans-unit id="brand" translate="no">
        <source>Der hund</source>
      </trans-unit>
      <group id="legal" translate="no">
        <trans-unit id="legal.1"><source>Das kind</source></trans-unit>
      </group>
    </body>
  </file>
</xliff>
"""
XLIFF20 = f"""<?xml version="1.0" encoding="UTF-8"?>
<xliff xmlns="{V20}" version="2.0" srcLang="de">
  <file id="f1">
    <unit id="u1">
      <notes><note>greeting</note></notes>
      <segment><source>Hallo {{name}}, du hast neue nachrichten</source></segment>
      <ignorable><source> </source></ignorable>
      <segment><source>Die katze <pc id="1" dataRefStart="d1">schläft</pc> <ph id="2" dataRef="d2"/></source></segment>
    </unit>
    <unit id="u2">
      <segment state="final"><source>Speichern</source><target>Sichern</target></segment>
    </unit>
    <unit id="u3" translate="no">
      <segment><source>Der hund</source></segment>
    </unit>
  </file>
</xliff>
"""


def test_xliff12_units_get_targets_marked_for_review(client, monkeypatch):
    sent = dictionary(monkeypatch)
    root = etree.fromstring(download(client, upload(client, "app.xliff", XLIFF12.encode())))
    ns = {"x": V12}
    assert root.find("x:file", ns).get("target-language") == "en"
    units = {u.get("id"): u for u in root.iter(f"{{{V12}}}trans-unit")}
    greeting = units["greeting"]
    assert [etree.QName(c).localname for c in greeting] == ["source", "target", "note"]  # after its source
    target = greeting.find("x:target", ns)
    assert target.text == "Hello world"
    assert (target.get("state"), target.get("state-qualifier")) == ("needs-review-translation", "mt-suggestion")
    link = units["link"].find("x:target", ns)
    assert "".join(link.itertext()) == "Click You here, to the file to open"
    g, x = link
    assert (etree.QName(g).localname, g.get("id"), g.get("ctype"), g.text) == ("g", "1", "x-html-a", "here")
    assert (etree.QName(x).localname, x.attrib) == ("x", {"id": "2"}) and x.tail == "the file to open"
    bold = units["bold"].find("x:target", ns)
    assert [(etree.QName(c).localname, c.text) for c in bold] == [("bpt", "<b>"), ("ept", "</b>")]
    assert "".join(bold.itertext()) == "<b>The cat</b> sleeps"
    assert units["done"].find("x:target", ns).text == "Sichern"  # translated already: kept
    assert units["done"].find("x:target", ns).get("state") == "translated"
    assert units["brand"].find("x:target", ns) is None and units["legal.1"].find("x:target", ns) is None
    assert greeting.findtext("x:note", namespaces=ns) == "Shown at start-up"
    kinds = [k for k, _ in sent]
    assert kinds == ["text", "html", "html"]  # codes go through the HTML path; plain text does not


def test_xliff20_segments_are_translated_and_marked_translated(client, monkeypatch):
    dictionary(monkeypatch)
    root = etree.fromstring(download(client, upload(client, "app.xlf", XLIFF20.encode())))
    ns = {"x": V20}
    assert root.get("trgLang") == "en" and root.get("srcLang") == "de"
    first, second = root.findall(".//x:unit[@id='u1']/x:segment", ns)
    assert first.get("state") == "translated"
    assert first.findtext("x:target", namespaces=ns) == "Hello {name}, you have new messages"
    target = second.find("x:target", ns)
    assert [(etree.QName(c).localname, c.get("id"), c.text) for c in target] == [
        ("pc", "1", "sleeps"),
        ("ph", "2", None),
    ]
    assert target[0].get("dataRefStart") == "d1" and target.text == "The cat "
    assert root.find(".//x:ignorable/x:source", ns).text == " "
    kept = root.find(".//x:unit[@id='u2']/x:segment", ns)
    assert kept.get("state") == "final" and kept.findtext("x:target", namespaces=ns) == "Sichern"
    assert root.find(".//x:unit[@id='u3']//x:target", ns) is None
    assert root.findtext(".//x:note", namespaces=ns) == "greeting"


def test_a_code_the_translation_loses_is_kept_at_the_end(client, monkeypatch):
    from service import translation

    dictionary(monkeypatch)

    async def lossy(state, texts, *args, **kwargs):  # a model that drops the markup
        return translation.Translated(["Click here to open the file" for _ in texts])

    monkeypatch.setattr(translation, "translate_markup", lossy)
    root = etree.fromstring(download(client, upload(client, "app.xliff", XLIFF12.encode())))
    link = root.find(f".//{{{V12}}}trans-unit[@id='link']/{{{V12}}}target")
    assert link.text == "Click here to open the file"
    assert [(etree.QName(c).localname, c.get("id")) for c in link] == [("x", "2")]  # the paired <g> went with its words


def test_bad_xliff_files_are_refused(client):
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE xliff [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
        f'<xliff version="1.2" xmlns="{V12}"><file><body><trans-unit id="1"><source>&b;</source>'
        "</trans-unit></body></file></xliff>"
    )
    r = upload(client, "laughs.xliff", laughs.encode())
    assert r.status_code == 400 and r.json() == {"error": ".xliff file declares a DTD or entities"}
    external = f'<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><xliff xmlns="{V12}"/>'
    assert upload(client, "external.xlf", external.encode()).status_code == 400
    r = upload(client, "broken.xliff", b"<xliff><file>")
    assert r.status_code == 400
    assert r.json() == {"error": "not a valid .xliff file: the document is not well-formed XML"}
    r = upload(client, "other.xliff", b'<?xml version="1.0"?><html><body>der hund</body></html>')
    assert r.json() == {"error": "not a valid .xliff file (not an XLIFF 1.2 or 2.0 document)"}
    r = upload(client, "catalog.xliff", b'{"hello": "Hallo"}')  # JSON under an XLIFF name
    assert r.status_code == 400
    huge = f'<xliff version="1.2" xmlns="{V12}"><file><body>' + "<x/>" * 210_000 + "</body></file></xliff>"
    r = upload(client, "huge.xliff", huge.encode())
    assert r.status_code == 413 and r.json() == {"error": "file has more than 200000 XML elements (empty ones count)"}
