"""File translation (LibreTranslate's /translate_file): one module per format family, each
listing its formats (`Format`: extensions, media types, handler) in the one table below, which
/translate_file (`translate_file`) and /frontend/settings (`EXTENSIONS`) read.

  text.py     .txt (lines), .srt (cues; numbers and timings kept)
  html.py     .html (the page through `format: "html"`'s path)
  office.py   .docx, .odt, .pptx, .odp (paragraphs; runs of other formatting as inline spans)
  epub.py     .epub (its XHTML documents through the HTML path; the rest copied)
  gettext.py  .po, .pot (untranslated messages, plural forms; marked fuzzy)
  xliff.py    .xliff, .xlf (1.2 and 2.0: sources without a target; inline codes kept)
  catalog.py  .json, .arb (message catalogues: string values; keys and structure kept)
  zipxml.py   the zip and XML checks (zip bombs, DTDs and entities, element counts)

Each format reads a file into the texts to translate, has them translated as lists of texts by
the route's callback (`TranslateAs`: plain, or as HTML fragments), and writes the file back with
everything else as it was. Bounded before anything is parsed: the upload size (the body limit),
for zips the uncompressed size, compression ratio and XML elements (zipxml), for XML no DTD and
the element count, for JSON the values; and then the characters and units to translate
(`Limits`: TRANSERVE_MAX_FILE_CHARS, _PARAGRAPHS, _ELEMENTS). Parsing and writing run in the
file job's thread (`offload`: service/file_store.Jobs), never on the event loop. The translated
files are kept by service/file_store.py.
"""

from __future__ import annotations

from pathlib import Path

from service.errors import bad_request
from service.formats import catalog, epub, gettext, html, office, text, xliff
from service.formats.base import Format, Job, Limits, Translate, TranslateAs
from service.html import Offload, inline

# The formats table: extension -> its format, in the order /frontend/settings lists them
# (LibreTranslate's first, then the localisation formats).
FORMATS: dict[str, Format] = {
    ext: f
    for module in (text, html, office, epub, gettext, xliff, catalog)
    for f in module.FORMATS
    for ext in f.extensions
}
_ORDER = [".txt", ".html", ".srt", ".docx", ".odt", ".pptx", ".odp", ".epub"]
EXTENSIONS: list[str] = _ORDER + [e for e in FORMATS if e not in _ORDER]

__all__ = [
    "EXTENSIONS", "FORMATS", "Format", "Job", "Limits", "Translate", "TranslateAs", "media_type", "translate_file",
]  # fmt: skip


def media_type(filename: str) -> str | None:
    """The media type of a file of a format in the table, by its name's extension."""
    f = FORMATS.get(Path(filename).suffix.lower())
    return f.media_types[0] if f else None


async def translate_file(
    data: bytes,
    filename: str,
    translate_as: TranslateAs,
    limits: Limits,
    offload: Offload | None = None,
    target: str | None = None,
) -> bytes:
    """The translated file's bytes. `offload(function, *args)` runs the parsing and writing (the
    slow part) away from the event loop; without it they run inline. `target`: the target
    language's code, written where a format records it (XLIFF, gettext, EPUB, ARB)."""
    ext = Path(filename).suffix.lower()
    f = FORMATS.get(ext)
    if f is None:
        raise bad_request(f"unsupported file type {ext or filename!r}; supported: {', '.join(EXTENSIONS)}")
    return await f.translate(Job(data, ext, translate_as, limits, offload or inline, target))
