"""Glossaries: terms whose translation a user fixes (`glossary` of /translate, and server-side
files per pair in `TRANSERVE_GLOSSARY_DIR`).

A term of the source matched in a sentence becomes a protected span of it (service/protect.py)
whose replacement is the term's target: the sentence is translated with a placeholder digit in
its place and the target put back where the digit comes out (each hypothesis), or, where that
fails, the text around it translated piece by piece and the target put between the pieces.

Matching (`Terms.find`): whole words (`\\w+` runs; words of a term separated by whitespace in
the text), case-insensitive, leftmost, longest term first; the last word of a term may carry one
of the plural/inflection endings `SUFFIXES` ("File" matches "Files", "Datei" "Dateien"); a term
is never matched inside a word joined by a hyphen ("File-Menu"). A script written without spaces
(zh) matches only a whole run of its characters. The target is put in as it is given (not
inflected).

Files: `<dir>/<source>-<target>.tsv`, one `term<TAB>translation` a line, `#` comments and blank
lines skipped (a line without a tab too, logged); read at the first use and again when a file's
modification time changes or a file appears or goes (checked at most once a second, on use: no
thread). A request's terms override and extend the file's for that request.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIXES = ("es", "en", "s", "e", "n")  # longest first; a stem keeps at least 2 characters
MAX_WORDS = 8  # words of a term
_WORD = re.compile(r"\w+")
_FILE = re.compile(r"^([a-z]{2,3}(?:-[A-Za-z]{2,4})?)-([a-z]{2,3}(?:-[A-Za-z]{2,4})?)\.tsv$")

Match = tuple[int, int, str]  # start, end, the target term


def words(term: str) -> tuple[str, ...]:
    """A term's key: its words, case-folded."""
    return tuple(w.casefold() for w in _WORD.findall(term))


@dataclass
class Terms:
    """Terms of one pair, by key: the request's first, then the file's."""

    layers: list[Mapping[tuple[str, ...], str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(self.layers)

    def _get(self, key: tuple[str, ...]) -> str | None:
        for layer in self.layers:
            if key in layer:
                return layer[key]
        return None

    def _lookup(self, key: tuple[str, ...]) -> str | None:
        found = self._get(key)
        if found is not None:
            return found
        last = key[-1]
        for suffix in SUFFIXES:
            if last.endswith(suffix) and len(last) - len(suffix) >= 2:
                found = self._get((*key[:-1], last[: -len(suffix)]))
                if found is not None:
                    return found
        return None

    def find(self, text: str) -> list[Match]:
        """The terms of `text`, in order, none overlapping."""
        if not self:
            return []
        longest = max((len(k) for layer in self.layers for k in layer), default=0)
        found = [(m.start(), m.end(), m.group().casefold()) for m in _WORD.finditer(text)]
        out: list[Match] = []
        i = 0
        while i < len(found):
            hit = None
            if not _hyphen(text, found[i][0] - 1):
                for n in range(min(longest, len(found) - i), 0, -1):
                    run = found[i : i + n]
                    if not all(text[a[1] : b[0]].isspace() for a, b in zip(run, run[1:])):
                        continue  # words of a term: apart by whitespace only
                    end = run[-1][1]
                    if _hyphen(text, end):
                        continue
                    target = self._lookup(tuple(w for _, _, w in run))
                    if target is not None:
                        hit = (found[i][0], end, target), n
                        break
            if hit is None:
                i += 1
                continue
            out.append(hit[0])
            i += hit[1]
        return out


def _hyphen(text: str, at: int) -> bool:
    return 0 <= at < len(text) and text[at] in "-‐"


def digest(applied: Iterable[tuple[str, str]]) -> str | None:
    """A stable digest of the (matched text, target) pairs a sentence was translated with, for
    its cache key; None for none (the key of a sentence without a glossary)."""
    pairs = sorted(set(applied))
    if not pairs:
        return None
    return hashlib.sha256(repr(pairs).encode()).hexdigest()[:24]


def parse_tsv(text: str, name: str = "") -> dict[tuple[str, ...], str]:
    """A glossary file's terms by key (a later line for the same term wins)."""
    out: dict[tuple[str, ...], str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        source, tab, target = line.partition("\t")
        key, target = words(source), target.strip()
        if not tab or not key or not target or len(key) > MAX_WORDS:
            log.warning("glossary %s line %d: not `term<TAB>translation`, skipped", name, n)
            continue
        out[key] = target
    return out


class Files:
    """The glossary files of one folder, by (source, target) pair, reloaded on change."""

    def __init__(self, folder: Path, interval: float = 1.0) -> None:
        self.folder, self.interval = folder, interval
        self.checked = -interval
        self.seen: dict[Path, tuple[float, int]] = {}  # path -> (mtime, size)
        self.pairs: dict[tuple[str, str], dict[tuple[str, ...], str]] = {}
        self.lock = threading.Lock()

    def get(self, source: str, target: str) -> Mapping[tuple[str, ...], str]:
        now = time.monotonic()
        if now - self.checked >= self.interval:
            with self.lock:
                self.checked = now
                self.refresh()
        return self.pairs.get((source, target), {})

    def refresh(self) -> None:
        try:
            paths = [p for p in self.folder.iterdir() if _FILE.match(p.name) and p.is_file()]
        except OSError as e:
            if self.seen or self.pairs:
                log.warning("glossary folder %s unreadable (%s): no server glossaries", self.folder, e)
            self.seen, self.pairs = {}, {}
            return
        seen: dict[Path, tuple[float, int]] = {}
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            seen[path] = (st.st_mtime, st.st_size)
        if seen == self.seen:
            return
        pairs = {}
        for path in seen:
            m = _FILE.match(path.name)
            assert m is not None
            try:
                pairs[(m.group(1), m.group(2))] = parse_tsv(path.read_text(encoding="utf-8"), path.name)
            except (OSError, UnicodeDecodeError) as e:
                log.warning("glossary %s unreadable: %s", path, e)
        self.seen, self.pairs = seen, pairs
        log.info("glossaries loaded from %s: %s", self.folder, {f"{s}-{t}": len(v) for (s, t), v in pairs.items()})


_files: dict[Path, Files] = {}


def files(folder: Path | None) -> Files | None:
    """The server's glossary files (one reader per folder, made at its first use)."""
    if folder is None or str(folder) == "":
        return None
    reader = _files.get(folder)
    if reader is None:
        reader = _files[folder] = Files(folder)
    return reader


def terms(folder: Path | None, source: str, target: str, request: Iterable[tuple[str, str]] = ()) -> Terms:
    """The terms for one pair: the request's (source, target) over the folder's file."""
    own = {words(s): t for s, t in request if words(s)}
    reader = files(folder)
    layers: list[Mapping[tuple[str, ...], str]] = [own]
    if reader is not None:
        layers.append(reader.get(source, target))
    return Terms([layer for layer in layers if layer])
