"""gettext catalogues (.po, .pot; polib): each untranslated message translated into its
`msgstr` and marked `fuzzy` (a machine translation is for a translator to review); a plural
message's singular into `msgstr[0]` and its plural into the other forms. Kept as they were: the
header (but its charset: the file is written in UTF-8; and its `Language`, set to the target
where the route names it and the header has none), message contexts, every comment and flag,
source references, obsolete messages, and the messages translated already (fuzzy ones too: a
translator's work is not overwritten). Placeholders (`%s`, `%(name)s`, `{0}`...) are kept by the
translation pipeline (service/protect.py)."""

from __future__ import annotations

import re
from typing import Any

from service.errors import bad_request
from service.formats.base import Format, Job

_CHARSET = re.compile(rb"charset=([\w.:-]+)", re.I)
_NPLURALS = re.compile(r"nplurals\s*=\s*(\d+)")
MAX_PLURALS = 6  # no language has more forms


def _read(data: bytes, ext: str) -> Any:
    """The catalogue, decoded as its header's charset says (UTF-8 when it says none)."""
    import codecs

    import polib

    charset = "utf-8"
    if found := _CHARSET.search(data[:4096]):
        try:
            charset = codecs.lookup(found.group(1).decode()).name
        except LookupError:
            pass
    try:
        text = data.decode("utf-8-sig" if charset == "utf-8" else charset)
    except UnicodeDecodeError:
        raise bad_request(f"{ext} file is not {charset} text (as its header says)") from None
    # polib opens a path when it is given one: a leading line break makes the text never one
    text = "\n" + text
    if polib._is_file(text):  # the check polib itself makes
        raise bad_request(f"not a valid {ext} file")
    try:
        return polib.pofile(text, encoding="utf-8", wrapwidth=78)
    except (OSError, ValueError) as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f" (syntax error at line {int(line.group(1)) - 1})" if line else ""
        raise bad_request(f"not a valid {ext} file{where}") from None


def _todo(catalogue: Any) -> list[Any]:
    """The messages to translate: not the header, not obsolete, not translated yet."""
    return [e for e in catalogue if e.msgid and not e.obsolete and not (e.msgstr or any(e.msgstr_plural.values()))]


def _plurals(catalogue: Any, entry: Any) -> int:
    """How many forms a plural message has: the header's `nplurals` where it names a number,
    else the forms the message has (at least 2)."""
    found = _NPLURALS.search(catalogue.metadata.get("Plural-Forms", ""))
    n = int(found.group(1)) if found else len(entry.msgstr_plural)
    return min(max(n, 2), MAX_PLURALS)


async def translate_po(job: Job) -> bytes:
    catalogue = await job.offload(_read, job.data, job.ext)
    job.limits.elements(len(catalogue), "messages")
    todo = _todo(catalogue)
    texts = [t for e in todo for t in ([e.msgid, e.msgid_plural] if e.msgid_plural else [e.msgid])]
    job.limits.check([t for t in texts if t.strip()])
    done = iter(await job.plain(texts))
    for e in todo:
        if e.msgid_plural:
            singular, plural = next(done), next(done)
            e.msgstr_plural = {k: singular if k == 0 else plural for k in range(_plurals(catalogue, e))}
        else:
            e.msgstr = next(done)
        if "fuzzy" not in e.flags:
            e.flags.insert(0, "fuzzy")
    meta = catalogue.metadata
    if "Content-Type" in meta:
        meta["Content-Type"] = re.sub(r"charset=[\w.:-]+", "charset=UTF-8", meta["Content-Type"])
    if job.target and meta and not meta.get("Language", "").strip():
        meta["Language"] = job.target
    return await job.offload(lambda: str(catalogue).encode())


FORMATS = [
    Format(
        (".po", ".pot"),
        ("text/x-gettext-translation", "text/x-po", "text/x-gettext-translation-template"),
        "gettext catalogue: untranslated messages translated (plural forms too) and marked fuzzy, "
        "comments, contexts and flags kept",
        translate_po,
    )
]
