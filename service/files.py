"""File translation (LibreTranslate's /translate_file): .txt, .html, .srt, .docx, .odt.

Each format is read into its text units (lines; subtitle texts; HTML as a document; Word and
OpenDocument paragraphs and table cells), the units are translated as lists of texts, and the
file is written back with everything else as it was: subtitle numbers and timings, markup,
paragraph styles (python-docx, odfpy: a translated paragraph keeps its style and the formatting
of its first run or span; formatting that changed inside a paragraph is not carried over).

Bounded before anything is parsed: the upload size (the body limit), the uncompressed size and
compression ratio of the zip members of .docx/.odt (a zip bomb is refused), no DTD in their XML
(no entity expansion, no external entities), and then the characters and units to translate.
Results live in one temporary folder of the process, each under a random name, and are deleted
after `ttl_s` (or at shutdown).
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
import tempfile
import time
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from service.errors import ServiceError, bad_request, too_large

FORMATS = [".txt", ".html", ".srt", ".docx", ".odt"]
Translate = Callable[[list[str]], Awaitable[list[str]]]  # texts -> translations (same order)

MAX_UNZIPPED = 50 * 1024 * 1024  # all members of a .docx/.odt together, uncompressed
MAX_RATIO = 100  # uncompressed / compressed, per member


class Limits:
    def __init__(self, max_chars: int, max_units: int) -> None:
        self.max_chars, self.max_units = max_chars, max_units

    def check(self, units: list[str]) -> None:
        if len(units) > self.max_units:
            raise too_large(f"file has {len(units)} paragraphs; at most {self.max_units}")
        chars = sum(len(u) for u in units)
        if chars > self.max_chars:
            raise too_large(f"file has {chars} characters of text; at most {self.max_chars}")


async def translate_file(data: bytes, filename: str, translate: Translate, limits: Limits) -> bytes:
    """The translated file's bytes."""
    ext = Path(filename).suffix.lower()
    if ext not in FORMATS:
        raise bad_request(f"unsupported file type {ext or filename!r}; supported: {', '.join(FORMATS)}")
    if ext in (".docx", ".odt"):
        _check_zip(data)
        return await (_docx if ext == ".docx" else _odt)(data, translate, limits)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request(f"{ext} file is not UTF-8 text") from None
    if ext == ".txt":
        out = await _lines(text.split("\n"), translate, limits)
        return "\n".join(out).encode()
    if ext == ".srt":
        return (await _srt(text, translate, limits)).encode()
    limits.check([text])
    (html,) = await translate([text])
    return html.encode()


async def _lines(lines: list[str], translate: Translate, limits: Limits) -> list[str]:
    """Each non-blank line translated (its leading and trailing whitespace kept)."""
    todo = [k for k, line in enumerate(lines) if line.strip()]
    limits.check([lines[k] for k in todo])
    done = await translate([lines[k].strip() for k in todo]) if todo else []
    out = list(lines)
    for k, tr in zip(todo, done):
        line = lines[k]
        out[k] = line[: len(line) - len(line.lstrip())] + tr + line[len(line.rstrip()) :]
    return out


_TIMING = re.compile(r"^\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}\s*-->\s*\d{1,2}:\d{2}:\d{2}[,.]\d{1,3}")


async def _srt(text: str, translate: Translate, limits: Limits) -> str:
    """Subtitles: numbers and timing lines kept; each cue's text lines translated as one text
    (a sentence often runs over two lines), its line count kept where the translation allows."""
    blocks = re.split(r"(\r?\n\r?\n+)", text.replace("\r\n", "\n"))
    cues: list[tuple[int, int]] = []  # (block, first text line)
    parsed = []
    for b, block in enumerate(blocks):
        lines = block.split("\n")
        timing = next((k for k, line in enumerate(lines[:2]) if _TIMING.match(line.strip())), None)
        if b % 2 == 0 and timing is not None:
            cues.append((b, timing + 1))
        elif b % 2 == 0 and block.strip():
            raise bad_request("not a SubRip (.srt) file: a block without a timing line")
        parsed.append(lines)
    texts = [" ".join(parsed[b][first:]).strip() for b, first in cues]
    limits.check(texts)
    done = await translate(texts) if texts else []
    for (b, first), tr in zip(cues, done):
        lines = parsed[b]
        body = [line for line in lines[first:] if line.strip()]
        tail = lines[first + len(_rstrip_lines(lines[first:])) :]  # blank lines after the text stay
        # a cue needs text: an empty translation keeps the source's lines
        parsed[b] = lines[:first] + (_wrap(tr, max(1, len(body))) if tr.strip() else body) + tail
    return "".join("\n".join(lines) if k % 2 == 0 else blocks[k] for k, lines in enumerate(parsed))


def _rstrip_lines(lines: list[str]) -> list[str]:
    """`lines` without the blank lines at their end."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _wrap(text: str, lines: int) -> list[str]:
    """`text` in `lines` lines of about equal length, broken at spaces."""
    if lines <= 1 or " " not in text:
        return [text]
    words, target = text.split(" "), len(text) / lines
    out: list[str] = []
    current = ""
    for w in words:
        if current and len(current) + 1 + len(w) > target and len(out) < lines - 1:
            out.append(current)
            current = w
        else:
            current = f"{current} {w}" if current else w
    return [*out, current]


def _check_zip(data: bytes) -> None:
    """A readable zip, not a bomb, and no DTD in any of its XML members."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, ValueError):
        raise bad_request("not a valid .docx/.odt file (not a zip archive)") from None
    total = 0
    for info in infos:
        total += info.file_size
        if total > MAX_UNZIPPED:
            raise too_large(f"file unpacks to more than {MAX_UNZIPPED // (1024 * 1024)} MB")
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1_000_000:
            raise too_large(f"file member {info.filename!r} is compressed {info.file_size // info.compress_size}:1")
    with z:
        for info in infos:
            if info.filename.endswith((".xml", ".rels")) and re.search(rb"<!(doctype|entity)", z.read(info), re.I):
                raise bad_request(f"file member {info.filename!r} declares a DTD or entities")


async def _docx(data: bytes, translate: Translate, limits: Limits) -> bytes:
    import docx  # python-docx

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any parse failure of the upload is the client's
        raise bad_request("not a valid .docx file") from None
    paragraphs = list(document.paragraphs)
    for table in document.tables:
        for row in table.rows:
            for cell in row.cells:
                paragraphs += cell.paragraphs
    todo = [p for p in paragraphs if p.text.strip()]
    limits.check([p.text for p in todo])
    done = await translate([p.text for p in todo]) if todo else []
    for p, tr in zip(todo, done):
        runs = [r for r in p.runs if r.text]
        if not runs:  # text only in fields or hyperlinks: leave it
            continue
        runs[0].text = tr
        for r in runs[1:]:
            r.text = ""
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


async def _odt(data: bytes, translate: Translate, limits: Limits) -> bytes:
    from odf import teletype, text
    from odf.opendocument import load

    try:
        document = load(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any parse failure of the upload is the client's
        raise bad_request("not a valid .odt file") from None
    paragraphs = [p for kind in (text.P, text.H) for p in document.getElementsByType(kind)]
    todo = [p for p in paragraphs if teletype.extractText(p).strip()]
    limits.check([teletype.extractText(p) for p in todo])
    done = await translate([teletype.extractText(p) for p in todo]) if todo else []
    for p, tr in zip(todo, done):
        first_span = next((c for c in p.childNodes if getattr(c, "qname", None) == (text.TEXTNS, "span")), None)
        _empty(p)
        if first_span is not None:  # the first span's style carries over
            _empty(first_span)
            teletype.addTextToElement(first_span, tr)
            p.appendChild(first_span)
        else:
            teletype.addTextToElement(p, tr)
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()


def _empty(element) -> None:
    """Remove every child of an odfpy element (its removeChild only takes elements: text nodes
    are taken off the list directly)."""
    for child in list(element.childNodes):
        if child.nodeType == child.ELEMENT_NODE:
            element.removeChild(child)
        else:
            element.childNodes.remove(child)


def store(state: Any) -> Store:
    """The service's store, made at first use: a read-only root filesystem without a writable
    temporary folder still serves everything else; file translation then answers 503."""
    if state.files is None:
        try:
            state.files = Store(state.settings.file_ttl_s)
        except OSError as exc:
            raise ServiceError(
                503, f"file translation needs a writable temporary folder (a tmpfs at /tmp, or TMPDIR): {exc.strerror}"
            ) from None
    return state.files


class Store:
    """Translated files, each in the process's own temporary folder under a random token, deleted
    `ttl_s` after it was written."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.root = Path(tempfile.mkdtemp(prefix="transerve-files-"))

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        self.expire()
        token = secrets.token_urlsafe(16)
        safe = re.sub(r"[^\w.-]", "_", Path(name).name)[-100:] or "file"
        folder = self.root / token
        folder.mkdir()
        (folder / safe).write_bytes(data)
        return token, safe

    def get(self, token: str, name: str) -> Path:
        self.expire()
        if not re.fullmatch(r"[\w-]{16,64}", token) or not re.fullmatch(r"[\w.-]{1,100}", name) or name in (".", ".."):
            raise ServiceError(404, "no such file (or it expired)")
        path = self.root / token / name
        if not path.is_file():
            raise ServiceError(404, "no such file (or it expired)")
        return path

    def expire(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for folder in self.root.iterdir():
            if now - folder.stat().st_mtime > self.ttl_s:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
