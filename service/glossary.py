"""Glossaries: terms whose translation a user fixes (`glossary` of /translate, and server-side
files per pair in `TRANSERVE_GLOSSARY_DIR`).

A sentence with terms is translated whole first, as it is, and kept with each term's target in
it where `place` can put it there (the rest of the translation as the model gave it): a target
the translation already holds is kept where it is, in the target's case; else the words that
the model's own alignment (runtime/alignment.py) links to the term are replaced by the target.
Where that fails (no link, links far apart, a route through English, which has no alignment, a
protected span lost), a term is a protected span of the sentence (service/protect.py) whose
replacement is its target: the sentence is translated again with a placeholder digit in its
place and the target put back where the digit comes out (each hypothesis), or, where that fails
too, the text around it translated piece by piece and the target put between the pieces. The
whole sentence first because a digit in place of a word is not a sentence the model was trained
on: long sentences lose more of their digits, and the piecewise fallback breaks them apart.

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
from collections.abc import Iterable, Mapping, Sequence
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


Link = tuple[int, int, int, int]  # (translation start, end, source start, end), as runtime/alignment.py
Edit = tuple[int, int, str]


def _spaced(ch: str) -> bool:
    """A letter or digit of a script written with spaces: a word boundary needs another character."""
    return ch.isalnum() and ord(ch) < 0x2E80


def _occurrences(text: str, target: str) -> list[tuple[int, int]]:
    """Where `target` is in `text` as a word of its own (case-insensitive), one of the endings
    `SUFFIXES` allowed after it (the model's "Dateien" holds "Datei"): (start, end of the target)."""
    out: list[tuple[int, int]] = []
    folded, want = text.casefold(), target.casefold()
    if len(folded) != len(text) or not want:  # a case fold that changes lengths: offsets would not hold
        return out
    at = folded.find(want)
    while at >= 0:
        end = at + len(want)
        ends = ("", *SUFFIXES)
        inflected = any(
            folded.startswith(e, end) and not _spaced(folded[end + len(e) : end + len(e) + 1]) for e in ends
        )
        if inflected and not _spaced(folded[at - 1 : at] if at else ""):
            out.append((at, end))
        at = folded.find(want, at + 1)
    return out


def _region(translation: str, start: int, end: int, links: Sequence[Link], words: int) -> tuple[int, int] | None:
    """The words of `translation` whose pieces the alignment links to the source's [start, end),
    as one (start, end) of the translation; None where none is linked or they lie apart (more
    words between the first and the last than the term's translation has, and two more)."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(translation)]
    hit = sorted(
        {
            k
            for t0, t1, s0, s1 in links
            if s0 < end and start < s1
            for k, (a, b) in enumerate(spans)
            if a < t1 and t0 < b
        }
    )
    if not hit or hit[-1] - hit[0] + 1 > words + 2:
        return None
    return spans[hit[0]][0], spans[hit[-1]][1]


def place(translation: str, found: Sequence[Match], links: Sequence[Link] | None = None) -> str | None:
    """A whole sentence's translation with its glossary terms (`found`: start, end of the source,
    target) in it, the rest of it as the model gave it; None where that cannot be done. A target
    the translation already holds as a word as often as the source holds its terms (ignoring case,
    an ending allowed) is kept where it is, in the target's case; the others replace the words the
    alignment (`links`, of the source and this translation) links to their term: None where
    `links` are needed and not given, or link no words of a term, or words far apart, or words
    another term's are."""
    need: dict[str, list[Match]] = {}
    for m in found:
        need.setdefault(m[2].casefold(), []).append(m)
    edits: list[Edit] = []
    for terms in need.values():
        target = terms[0][2]
        there = _occurrences(translation, target)
        if len(there) >= len(terms):
            edits += [(a, b, target) for a, b in there if translation[a:b] != target]
            continue
        if links is None:
            return None
        for start, end, target in terms:
            region = _region(translation, start, end, links, len(_WORD.findall(target)))
            if region is None:
                return None
            edits.append((*region, target))
    edits.sort()
    if any(a[1] > b[0] for a, b in zip(edits, edits[1:])):
        return None
    out = translation
    for a, b, text in reversed(edits):
        out = out[:a] + text + out[b:]
    return out
