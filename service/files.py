"""File translation (LibreTranslate's /translate_file): .txt, .html, .srt, .docx, .odt.

Each format is read into its text units (lines; subtitle texts; HTML as a document; Word and
OpenDocument paragraphs and table cells), the units are translated as lists of texts, and the
file is written back with everything else as it was: subtitle numbers and timings, markup,
paragraph styles, and formatting that changes inside a paragraph (python-docx, odfpy): a
paragraph whose runs (Word) or spans (OpenDocument) differ in formatting is translated as an HTML
fragment, one `<span>` per run of another formatting than the paragraph's main one, by the same
path as `format: "html"` (service/html.py: translated as one sentence, each span put back around
its own words), and written back as runs/spans with the formatting they came from.

Bounded before anything is parsed: the upload size (the body limit), the uncompressed size and
compression ratio of the zip members of .docx/.odt (a zip bomb is refused), no DTD in their XML
(no entity expansion, no external entities), the XML elements of their members counted by lxml
(paragraphs, runs, cells, empty ones too: a few MB of empty paragraphs would otherwise cost
python-docx or odfpy tens of seconds and hundreds of MB), and then the characters and units to
translate.

Parsing and writing happen in worker threads of their own (`Jobs`), never on the event loop,
with at most `max_file_jobs` files in progress (beyond: 503 + Retry-After); within a second of a job
the memory it freed is handed back to the system. Results live in one temporary folder of the
process (`Store`: bounded in bytes, expired by a timer, swept after a crash), each under a
random name, and are deleted after `ttl_s` (or at shutdown).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import functools
import gc
import html
import io
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.errors import ServiceError, bad_request, too_large
from service.html import Offload, T, inline

FORMATS = [".txt", ".html", ".srt", ".docx", ".odt"]
Translate = Callable[[list[str]], Awaitable[list[str]]]  # texts -> translations (same order)
# (texts, as HTML fragments?) -> translations: the route's translate, plain or markup
TranslateAs = Callable[[list[str], bool], Awaitable[list[str]]]

log = logging.getLogger("service")

MAX_UNZIPPED = 50 * 1024 * 1024  # all members of a .docx/.odt together, uncompressed
MAX_RATIO = 100  # uncompressed / compressed, per member


class Limits:
    def __init__(self, max_chars: int, max_units: int, max_elements: int) -> None:
        self.max_chars, self.max_units, self.max_elements = max_chars, max_units, max_elements

    def check(self, units: list[str]) -> None:
        if len(units) > self.max_units:
            raise too_large(f"file has {len(units)} paragraphs; at most {self.max_units}")
        chars = sum(len(u) for u in units)
        if chars > self.max_chars:
            raise too_large(f"file has {chars} characters of text; at most {self.max_chars}")


async def translate_file(
    data: bytes, filename: str, translate_as: TranslateAs, limits: Limits, offload: Offload | None = None
) -> bytes:
    """The translated file's bytes. `offload(function, *args)` runs the parsing and writing of a
    .docx/.odt (the slow part) away from the event loop; without it they run inline."""
    ext = Path(filename).suffix.lower()
    if ext not in FORMATS:
        raise bad_request(f"unsupported file type {ext or filename!r}; supported: {', '.join(FORMATS)}")
    if ext in (".docx", ".odt"):
        run = offload or inline
        paragraphs, write = await run(_docx if ext == ".docx" else _odt, data, limits)
        done = await paragraphs.translate(translate_as)
        return await run(lambda: write(paragraphs.pieces(*done)))

    async def translate(texts: list[str]) -> list[str]:
        return await translate_as(texts, ext == ".html")

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
    (page,) = await translate([text])
    return page.encode()


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


def _check_zip(data: bytes, max_elements: int) -> None:
    """A readable zip, not a bomb, no DTD in any of its XML members, and at most `max_elements`
    XML elements in them all (counted by lxml as they are parsed, before any document library
    sees them: empty paragraphs count toward no other limit)."""
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
    elements = 0
    with z:
        for info in infos:
            if not info.filename.endswith((".xml", ".rels")):
                continue
            member = z.read(info)
            if re.search(rb"<!(doctype|entity)", member, re.I):
                raise bad_request(f"file member {info.filename!r} declares a DTD or entities")
            elements += _count_elements(member, max_elements - elements)
            if elements > max_elements:
                raise too_large(
                    f"file has more than {max_elements} XML elements (paragraphs, runs, table cells; empty ones count)"
                )


def _count_elements(xml: bytes, most: int) -> int:
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


Runs = list[tuple[str, Any]]  # a paragraph as its runs: (text, a hashable key of the run's formatting)


class _Paragraphs:
    """Paragraphs to translate, given as their runs. A paragraph of one formatting comes back as
    one run of it; one of several, through HTML: the runs of its main formatting (the most
    characters) as bare text, every other run as a `<span id="rN">`; the translation's bare text
    takes the main formatting, each span its run's. Made and read back (`pieces`) in the file
    job's thread; only `translate` runs on the event loop."""

    def __init__(self, units: list[Runs], limits: Limits) -> None:
        limits.check(["".join(t for t, _ in runs) for runs in units])
        self.units = units
        self.plain: list[int] = []
        self.marked: list[tuple[int, Any]] = []  # (paragraph, its main formatting)
        self.fragments: list[str] = []
        for k, runs in enumerate(units):
            formats = {f for _, f in runs}
            if len(formats) == 1:
                self.plain.append(k)
                continue
            weight: dict[Any, int] = {}
            for t, f in runs:
                weight[f] = weight.get(f, 0) + len(t)
            main = max(weight, key=lambda f: weight[f])
            esc = [html.escape(t, quote=False) for t, _ in runs]
            self.fragments.append(
                "".join(
                    e if f == main else f'<span id="r{i}">{e}</span>' for i, (e, (_, f)) in enumerate(zip(esc, runs))
                )
            )
            self.marked.append((k, main))

    async def translate(self, translate_as: TranslateAs) -> tuple[list[str], list[str]]:
        """The translations of the plain paragraphs' texts and of the marked ones' fragments."""
        texts = ["".join(t for t, _ in self.units[k]) for k in self.plain]
        plain = await translate_as(texts, False) if texts else []
        return plain, await translate_as(self.fragments, True) if self.fragments else []

    def pieces(self, plain: list[str], fragments: list[str]) -> list[Runs]:
        """Each paragraph as [(text, format)] to write back, from `translate`'s answer."""
        from bs4 import BeautifulSoup, NavigableString, Tag

        out: list[Runs] = [[] for _ in self.units]
        for k, tr in zip(self.plain, plain):
            out[k] = [(tr, self.units[k][0][1])]
        for (k, main), tr in zip(self.marked, fragments):
            runs, got = self.units[k], []
            for node in BeautifulSoup(tr, "html.parser").contents:
                if isinstance(node, NavigableString):
                    got.append((str(node), main))
                elif isinstance(node, Tag):  # a span we made: its run's formatting
                    i = int(str(node.get("id", "r0"))[1:] or 0)
                    got.append((node.get_text(), runs[i][1] if i < len(runs) else main))
            out[k] = [(t, f) for t, f in got if t]
        return out


Write = Callable[[list[Runs]], bytes]  # each paragraph's translated runs -> the file's bytes


def _docx(data: bytes, limits: Limits) -> tuple[_Paragraphs, Write]:
    """A .docx's paragraphs (body and table cells) and how to write their translations back."""
    import copy

    import docx  # python-docx
    from docx.text.run import Run

    _check_zip(data, limits.max_elements)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any parse failure of the upload is the client's
        raise bad_request("not a valid .docx file") from None
    paragraphs = list(document.paragraphs)
    for table in document.tables:
        for row in table.rows:
            for cell in row.cells:
                paragraphs += cell.paragraphs
    todo = [(p, runs) for p in paragraphs if p.text.strip() and (runs := [r for r in p.runs if r.text])]
    # a run's formatting: its properties element as XML (runs of equal properties look alike)
    units = [[(r.text, _rpr_key(r)) for r in runs] for _, runs in todo]

    def write(done: list[Runs]) -> bytes:
        for (p, runs), unit, pieces in zip(todo, units, done):
            template: dict[str, Any] = {}
            for r, (_, key) in zip(runs, unit):
                template.setdefault(key, r)
            for text, key in pieces:  # new runs before the first, each a copy of a run of its format
                element = copy.deepcopy(template[key]._r)
                runs[0]._r.addprevious(element)
                Run(element, p).text = text
            for r in runs:
                r.text = ""
        out = io.BytesIO()
        document.save(out)
        return out.getvalue()

    return _Paragraphs(units, limits), write


def _rpr_key(run: Any) -> str:
    from lxml import etree

    rpr = run._r.rPr
    return "" if rpr is None else etree.tostring(rpr).decode()


def _odt(data: bytes, limits: Limits) -> tuple[_Paragraphs, Write]:
    """An .odt's paragraphs and headings and how to write their translations back."""
    from odf import teletype, text
    from odf.element import Element
    from odf.opendocument import load

    _check_zip(data, limits.max_elements)
    try:
        document = load(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - any parse failure of the upload is the client's
        raise bad_request("not a valid .odt file") from None
    paragraphs = [p for kind in (text.P, text.H) for p in document.getElementsByType(kind)]
    todo = [p for p in paragraphs if teletype.extractText(p).strip()]
    span = (text.TEXTNS, "span")
    units = []
    for p in todo:  # direct children: text (the paragraph's own style, "") and spans (their style)
        runs = []
        for child in p.childNodes:
            style = child.getAttribute("stylename") if getattr(child, "qname", None) == span else ""
            runs.append((teletype.extractText(child) if child.nodeType == child.ELEMENT_NODE else str(child), style))
        units.append([(t, f or "") for t, f in runs if t])

    def write(done: list[Runs]) -> bytes:
        for p, pieces in zip(todo, done):
            _empty(p)
            for piece, style in pieces:
                if style:
                    element: Element = text.Span(stylename=style)
                    teletype.addTextToElement(element, piece)
                    p.appendChild(element)
                else:
                    teletype.addTextToElement(p, piece)
        out = io.BytesIO()
        document.write(out)
        return out.getvalue()

    return _Paragraphs(units, limits), write


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
        s = state.settings
        try:
            state.files = Store(s.file_ttl_s, s.max_file_jobs, s.file_store_mb * 1024 * 1024)
        except OSError as exc:
            raise ServiceError(
                503, f"file translation needs a writable temporary folder (a tmpfs at /tmp, or TMPDIR): {exc.strerror}"
            ) from None
    return state.files


RELEASE_AFTER_S = 1.0  # a file job's freed memory goes back to the system this long after it ends


class Jobs:
    """The file jobs in progress: at most `limit` at once (`slot`; beyond it 503 + Retry-After at
    once), their parsing and writing (`run`) in `limit` threads of their own, so the event loop
    goes on answering (the probes, other requests) meanwhile. After a job its objects are
    collected (odfpy's tree is full of reference cycles) and the memory freed is handed back to
    the system, `RELEASE_AFTER_S` later: a job's peak stays no longer than that after the job.
    The jobs that end meanwhile share that one release: a full collection holds the GIL for
    50-100 ms, which a release after every job of a burst of small files spent again and again
    (200 files: 20 s of collections, the event loop stalled by each)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.running, self.closed = limit, 0, False
        self.pool = ThreadPoolExecutor(limit, thread_name_prefix="file-job")
        self._release: threading.Timer | None = None  # the release to come, if one is due
        self._lock = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.running >= self.limit:
            raise ServiceError(503, "file translation busy, retry later", headers={"Retry-After": "1"})
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._release_soon()

    def _release_soon(self) -> None:
        with self._lock:
            if self.closed or self._release is not None:
                return  # the release due takes this job's memory too
            self._release = threading.Timer(RELEASE_AFTER_S, self._released)
            self._release.daemon = True
            self._release.start()

    def _released(self) -> None:
        with self._lock:
            self._release = None  # a job that ends from now on is released by the next one
        _release_memory()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in one of the jobs' threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(function, *args))

    def close(self) -> None:
        """At shutdown: jobs not started are dropped; one still running ends with its request."""
        with self._lock:
            self.closed = True
            if self._release is not None:
                self._release.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _release_memory() -> None:
    """Collect garbage and return the heap's free pages to the system (glibc's malloc_trim; the
    service keeps up to 2 x `retain_freed_mb` of freed heap otherwise, and a file job's
    documents can free hundreds of MB)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


MAX_NAME_BYTES = 128  # a stored file's name, in UTF-8 (file systems allow 255, some 143)


def safe_name(name: str) -> str:
    """The name a translated file is stored and downloaded under: the upload's last path part,
    with every character but letters, digits, `_`, `.` and `-` replaced, shortened to
    MAX_NAME_BYTES bytes of UTF-8 (never inside a character) with its extension kept."""
    safe = re.sub(r"[^\w.-]", "_", Path(name).name).strip(".") or "file"
    ext = Path(safe).suffix if len(Path(safe).suffix) <= 16 else ""
    stem = safe[: len(safe) - len(ext)].encode()[: MAX_NAME_BYTES - len(ext.encode())]
    return (stem.decode("utf-8", "ignore") or "file") + ext


STORE_PREFIX = "transerve-files-"  # each process's store: a folder of this name in the temporary folder
FULL = "file store full, retry later"
GONE = "no such file (or it expired)"


def sweep_orphans(parent: Path | None = None) -> list[Path]:
    """Remove the stores of processes that ended without removing them (kill -9, out of memory,
    a node restart with /tmp kept): a store is held by its process with a `flock` on its
    folder, which the kernel releases when the process ends however it ends, so a folder whose
    lock can be taken has no owner. Stores of live processes (other replicas, tests) are left.
    The folders removed."""
    swept: list[Path] = []
    try:
        folders = list((parent or Path(tempfile.gettempdir())).glob(STORE_PREFIX + "*"))
    except OSError:  # no temporary folder: nothing to sweep
        return swept
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process lives
            continue
        else:
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
        finally:
            os.close(fd)
    if swept:
        log.warning("removed %d file store(s) left by ended processes: %s", len(swept), ", ".join(map(str, swept)))
    return swept


class Store:
    """Translated files, each in the process's own temporary folder under a random token, and the
    file `jobs` that make them.

    * Bounded: the stored files' bytes stay within `max_bytes`; a file that does not fit (or a
      disk that is full) is 503 `file store full, retry later` + Retry-After (when the oldest
      files that make room expire), nothing of it left on disk.
    * Expired by a timer thread of its own, `ttl_s` after each file was written, whether or not
      requests come; downloads never list or stat the folder (an index in memory says what is
      there), so their cost does not grow with the files stored.
    * Held with a `flock` on its folder while the process lives (`sweep_orphans` removes the
      stores of dead processes); a folder removed from outside is made anew (its files are gone:
      their downloads are 404) at the next write or timer tick.
    """

    def __init__(self, ttl_s: float, max_jobs: int = 2, max_bytes: int = 0) -> None:
        self.ttl_s, self.max_bytes = ttl_s, max_bytes  # max_bytes 0: no bound
        self._lock = threading.Lock()
        self._files: dict[str, tuple[int, float]] = {}  # token -> (bytes, deadline), in deadline order
        self.used = 0  # bytes of the stored files and of those being written
        self._fd = -1
        self.root = self._make_root()
        self.jobs = Jobs(max_jobs)
        self._stop = threading.Event()
        # a tick well within the lifetime: a file outlives its ttl_s by at most a tick
        self.tick_s = min(1.0, ttl_s / 4)
        threading.Thread(target=self._tick, name="file-expiry", daemon=True).start()

    def _make_root(self) -> Path:
        """A new store folder, locked (see `sweep_orphans`; a sweep that took the lock between
        the folder's making and ours has removed it: then another one)."""
        while True:
            root = Path(tempfile.mkdtemp(prefix=STORE_PREFIX))
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.path.samestat(os.fstat(fd), os.stat(root)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        return root

    def _renew_root(self, seen: Path) -> None:
        """The store folder `seen` is gone (removed from outside): a new one, the index emptied."""
        with self._lock:
            if self.root != seen or self.root.is_dir():
                return  # another thread has made it anew already
            log.warning("file store %s was removed from outside; its files are gone, making a new one", seen)
            self._files.clear()
            self.used = 0
            self.root = self._make_root()

    def room(self) -> None:
        """503 + Retry-After at once when the store is full (before a file's work is done)."""
        with self._lock:
            if self.max_bytes and self.used >= self.max_bytes:
                raise self._full(1)

    def _full(self, needed: int) -> ServiceError:
        """The answer when `needed` more bytes do not fit: retry when enough of the oldest files
        will have expired to make room (the caller holds the lock)."""
        now = time.time()
        free, at = (self.max_bytes - self.used if self.max_bytes else 0), now + self.ttl_s
        for size, deadline in self._files.values():
            free += size
            if free >= needed:
                at = deadline
                break
        return ServiceError(503, FULL, headers={"Retry-After": str(max(1, math.ceil(at - now)))})

    def put(self, name: str, data: bytes) -> tuple[str, str]:
        """Store `data` as `name` (made safe: `safe_name`); its token and stored name. Beyond the
        bound or on a full disk: 503 (`FULL`); nothing is left behind when writing fails."""
        size = len(data)
        if self.max_bytes and size > self.max_bytes:
            raise too_large(f"translated file of {size} bytes is larger than the file store ({self.max_bytes})")
        with self._lock:
            if self.max_bytes and self.used + size > self.max_bytes:
                raise self._full(size)
            self.used += size  # reserved while it is written
        token, safe = secrets.token_urlsafe(16), safe_name(name)
        try:
            root = self.root
            try:
                (root / token).mkdir()
            except FileNotFoundError:  # the store folder was removed from outside
                self._renew_root(root)
                root = self.root
                (root / token).mkdir()
            try:
                (root / token / safe).write_bytes(data)
            except BaseException:
                shutil.rmtree(root / token, ignore_errors=True)
                raise
        except OSError as exc:
            with self._lock:
                self.used -= size
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk filled before the bound
                    raise self._full(size) from None
            raise
        except BaseException:
            with self._lock:
                self.used -= size
            raise
        with self._lock:
            if self.root == root:
                self._files[token] = (size, time.time() + self.ttl_s)
            else:  # the folder was made anew meanwhile (which emptied the index): the file went with it
                self.used -= size
        return token, safe

    def open(self, token: str, name: str) -> io.BufferedReader:
        """The stored file `name` under `token`, opened for reading: the open file stays whole
        if expiry removes it while it is being sent. 404 when it is not there (or expired)."""
        if (
            not re.fullmatch(r"[\w-]{16,64}", token)
            or not re.fullmatch(r"[\w.-]+", name)
            or len(name.encode()) > MAX_NAME_BYTES
            or name in (".", "..")
        ):
            raise ServiceError(404, GONE)
        entry = self._files.get(token)
        if entry is None or entry[1] <= time.time():
            raise ServiceError(404, GONE)
        try:
            return (self.root / token / name).open("rb")
        except OSError:  # removed meanwhile (expiry, from outside), or not this name
            raise ServiceError(404, GONE) from None

    def expire(self, now: float | None = None) -> None:
        """Delete the files whose lifetime has passed; make the folder anew if it was removed."""
        now = time.time() if now is None else now
        with self._lock:
            due = []
            for token, (size, deadline) in self._files.items():
                if deadline > now:
                    break  # in deadline order: the rest are younger
                due.append((token, size))
            for token, size in due:
                del self._files[token]
                self.used -= size
            root = self.root
        for token, _ in due:
            shutil.rmtree(root / token, ignore_errors=True)
        if not root.is_dir():
            self._renew_root(root)

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.expire()
            except Exception:  # the timer goes on; the next tick tries again
                log.exception("file store expiry failed")

    def close(self) -> None:
        self._stop.set()
        self.jobs.close()
        shutil.rmtree(self.root, ignore_errors=True)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


sweep_orphans()  # at start-up (the routes import this module): stores left by an earlier process
