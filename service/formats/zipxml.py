"""The checks of a zip of XML documents (.docx, .odt, .pptx, .odp, .epub) before any library
parses it, and XML parsed safely.

Bounded before anything is parsed: the uncompressed size and compression ratio of the zip
members (a zip bomb is refused), no DTD in their XML (no entity expansion, no external
entities; an EPUB's XHTML may name its DTD, without an internal subset and never an entity),
and the XML elements of their members counted by lxml (paragraphs, runs, cells, empty ones too:
a few MB of empty paragraphs would otherwise cost a document library tens of seconds and
hundreds of MB).
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

from service.errors import bad_request, too_large

MAX_UNZIPPED = 50 * 1024 * 1024  # all members of a zip together, uncompressed
MAX_RATIO = 100  # uncompressed / compressed, per member
XML_MEMBERS = (".xml", ".rels")
_DTD = re.compile(rb"<!(doctype|entity)", re.I)
_ENTITY = re.compile(rb"<!entity|<!doctype[^>\[]*\[", re.I)  # an entity, or a DOCTYPE with an internal subset


def check_zip(
    data: bytes,
    max_elements: int,
    what: str = ".docx/.odt",
    members: tuple[str, ...] = XML_MEMBERS,
    doctype: bool = False,
) -> zipfile.ZipFile:
    """A readable zip, not a bomb, no DTD in any of its XML members (`members`: the name endings
    of those; `doctype`: a DOCTYPE without an internal subset allowed, as XHTML has one), and at
    most `max_elements` XML elements in them all (counted by lxml as they are parsed, before any
    document library sees them: empty paragraphs count toward no other limit). The zip, open."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, ValueError):
        raise bad_request(f"not a valid {what} file (not a zip archive)") from None
    total = 0
    for info in infos:
        total += info.file_size
        if total > MAX_UNZIPPED:
            raise too_large(f"file unpacks to more than {MAX_UNZIPPED // (1024 * 1024)} MB")
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1_000_000:
            raise too_large(f"file member {info.filename!r} is compressed {info.file_size // info.compress_size}:1")
    elements = 0
    for info in infos:
        if not info.filename.lower().endswith(members):
            continue
        member = read(z, info.filename)
        if (_ENTITY if doctype else _DTD).search(member):
            raise bad_request(f"file member {info.filename!r} declares a DTD or entities")
        elements += count_elements(member, max_elements - elements)
        if elements > max_elements:
            raise too_large(
                f"file has more than {max_elements} XML elements (paragraphs, runs, table cells; empty ones count)"
            )
    return z


def check_xml(data: bytes, max_elements: int, what: str) -> None:
    """An XML file (not a zip) before it is parsed: no DTD and no entity, at most `max_elements`
    elements (counted by lxml as it reads, the count stopping past the bound)."""
    if _DTD.search(data):
        raise bad_request(f"{what} file declares a DTD or entities")
    if count_elements(data, max_elements) > max_elements:
        raise too_large(f"file has more than {max_elements} XML elements (empty ones count)")


def read(z: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes (a member whose data is broken: 400)."""
    try:
        return z.read(name)
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, NotImplementedError):
        raise bad_request(f"file member {name!r} cannot be read") from None


def count_elements(xml: bytes, most: int) -> int:
    """The elements of an XML document, counted up to `most` + 1 (where the count stops); one
    that is not well-formed XML counts 0 here and is refused by its document library."""
    from lxml import etree

    n = 0
    try:
        for _ in etree.iterparse(io.BytesIO(xml), events=("start",), resolve_entities=False, no_network=True):
            n += 1
            if n > most:  # the tree built so far holds at most `most` elements: bounded
                break
    except etree.XMLSyntaxError:
        return 0
    return n


def parse(xml: bytes, name: str, what: str) -> Any:
    """An XML document (after `check_zip`, or checked for a DTD by the caller) as an lxml tree's
    root: no entity resolved, no DTD loaded, nothing fetched; 400 when it is not well-formed."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False)
    try:
        return etree.fromstring(xml, parser)
    except etree.XMLSyntaxError:
        raise bad_request(f"not a valid {what} file: {name} is not well-formed XML") from None


def rewrite(z: zipfile.ZipFile, replaced: dict[str, bytes]) -> bytes:
    """The zip again, every member as it was (order, names, dates, compression) but those in
    `replaced`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as new:
        for info in z.infolist():
            new.writestr(info, replaced[info.filename] if info.filename in replaced else read(z, info.filename))
    return out.getvalue()
