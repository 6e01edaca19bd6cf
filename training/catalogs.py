"""Parallel corpora from translation catalogs: what a localisation team already has.

``python -m training data gettext`` reads gettext catalogs (``.po``, ``.mo``, folders of them, and
Debian ``.deb`` packages, whose ``usr/share/locale/<lang>/LC_MESSAGES/*.mo`` are read without
unpacking the package); ``python -m training data xliff`` reads XLIFF 1.2 and 2.x files. Both write
the layout of ``../shared/data/l10n``, which ``data.train_sets`` reads as ``de-en DIR train.de-en``:

    <out>/<split>.<xx>-en.<xx>.gz, <split>.<xx>-en.en.gz   aligned by line
    <out>/<split>.<xx>-en.source.gz                          each line's catalog (for only=/drop=)

English is the pivot of every bundle direction, so each pair is stored as ``<xx>-en`` whichever
side the catalog's source is. Entries kept: translated, not fuzzy, not obsolete, both sides
non-empty and different; plural entries give their singular forms; keyboard accelerators
(``_File``, ``&Open``, ``~Save``) are removed from both sides, the same rule on each. Duplicate pairs
are kept once. ``valid``/``test`` take whole English strings chosen by a hash, so a string repeated
in several catalogs never sits in two splits."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from training.data import write_lines

log = logging.getLogger(__name__)

# A locale folder of a gettext installation: .../locale/<lang>/LC_MESSAGES/<domain>.mo
_LOCALE_PATH = re.compile(
    r"(?:^|/)(?:locale|locales|po)/([A-Za-z]{2,3}(?:[_@-][A-Za-z0-9]+)*)/LC_MESSAGES/[^/]+\.[mp]o$"
)
# A po folder named by language: .../po/de.po, .../de/de.po, .../de.po
_PO_NAME = re.compile(r"(?:^|/)([A-Za-z]{2,3}(?:[_@-][A-Za-z0-9]+)*)\.po$")
# One accelerator marker before a letter or digit; && and __ are literal characters
_ACCEL = re.compile(r"(?<![_&~])[_&~](?=[^\W_])")
_ENTITY = re.compile(r"&[A-Za-z]+;|&#\d+;|&#x[0-9A-Fa-f]+;")


def normalize_lang(code: str) -> str:
    """ISO 639-1 code of a catalog's language: ``de_DE`` -> ``de``, ``zh_CN``/``zh-Hans`` -> ``zh``,
    ``sr@latin`` -> ``sr``. Traditional Chinese (``zh_TW``, ``zh_HK``, ``zh-Hant``) keeps its region:
    the bundles translate Simplified Chinese, so those catalogs must not pass as ``zh``."""
    code = code.strip().replace("-", "_")
    base, _, rest = code.partition("_")
    base = base.split("@")[0].lower()
    if base == "zh" and rest.split("@")[0].upper() in ("TW", "HK", "MO", "HANT"):
        return "zh_Hant"
    return base


def strip_accelerators(text: str, other: str = "") -> str:
    """Remove a keyboard-accelerator marker (GTK ``_``, Qt/Windows ``&``, LibreOffice ``~``) when a
    string has exactly one: ``_Open`` -> ``Open``, ``Ö_ffnen`` -> ``Öffnen``. Entities (``&amp;``),
    doubled markers (``&&``) and words with several markers (``MAX_PATH_LEN``) are left alone, as is
    a marked word that the other side of the pair (`other`) has verbatim (``snake_case`` in both: an
    identifier, not an accelerator)."""
    probe = _ENTITY.sub(" ", text)
    marks = list(_ACCEL.finditer(probe))
    if len(marks) != 1:
        return text
    words = re.findall(r"\S+", probe)
    marked = next(w for w in words if _ACCEL.search(w))
    if len(_ACCEL.findall(marked)) == 1 and marked.count(marks[0].group()) > 1:
        return text  # MAX_PATH_LEN: one marker before a letter, more elsewhere in the word
    if other and marked in other.split():
        return text
    parts = _ENTITY.split(text)
    entities = _ENTITY.findall(text)
    out, done = [], False
    for i, part in enumerate(parts):
        if not done and _ACCEL.search(part):
            part, done = _ACCEL.sub("", part, count=1), True
        out.append(part)
        if i < len(entities):
            out.append(entities[i])
    return "".join(out)


@dataclass(frozen=True)
class Pair:
    lang: str  # the non-English side's language
    text: str  # in `lang`
    en: str
    source: str  # the catalog it came from


def _clean(text: str, other: str) -> str:
    return " ".join(strip_accelerators(text, other).split())


def _pair(lang: str, src_lang: str, src: str, tgt: str, source: str) -> Pair | None:
    """The entry as an (xx, en) pair, or None when it is not a usable translation."""
    src, tgt = _clean(src, tgt), _clean(tgt, src)
    if not src or not tgt or src == tgt:
        return None
    if src_lang == "en" and lang != "en":
        return Pair(lang, tgt, src, source)
    if lang == "en" and src_lang != "en":
        return Pair(src_lang, src, tgt, source)
    return None


# ---------------------------------------------------------------------------------------------
# gettext


def _po_language(catalog, name: str) -> str:
    header = (catalog.metadata.get("Language") or "").strip()
    if header:
        return normalize_lang(header)
    m = _LOCALE_PATH.search(name) or _PO_NAME.search(name)
    return normalize_lang(m.group(1)) if m else ""


def _catalog_pairs(catalog, name: str, lang: str | None, source: str) -> Iterator[Pair]:
    lang = lang or _po_language(catalog, name)
    if not lang:
        log.warning("%s: no language (no Language header, no locale/<lang>/ path); skipped", name)
        return
    for entry in catalog:
        if entry.obsolete or "fuzzy" in entry.flags:
            continue
        if entry.msgid_plural:
            forms = entry.msgstr_plural
            first = forms.get(0, "") if isinstance(forms, dict) else ""
            pair = _pair(lang, "en", entry.msgid, first, source)
        else:
            pair = _pair(lang, "en", entry.msgid, entry.msgstr, source)
        if pair:
            yield pair


def _deb_catalogs(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) of every .mo/.po inside a Debian package's data archive."""
    from debian.debfile import DebFile

    deb = DebFile(str(path))
    try:
        tar = deb.data.tgz()
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith((".mo", ".po")):
                f = tar.extractfile(member)
                if f is not None:
                    yield member.name, f.read()
    finally:
        deb.close()


def _load_catalog(name: str, data: bytes | None = None, path: Path | None = None):
    """A polib catalog from a file or from bytes (a .deb member: nothing unpacked to disk)."""
    import polib

    if data is None:
        assert path is not None
        data = path.read_bytes()
    if name.endswith(".mo"):
        return polib.mofile(data)
    return polib.pofile(data.decode("utf-8", errors="replace"))


def gettext_pairs(inputs: Iterable[Path], lang: str | None = None, source: str | None = None) -> Iterator[Pair]:
    """Every usable pair of the catalogs in `inputs` (files, folders searched recursively, .deb
    packages). `lang` overrides each catalog's language; `source` names every pair's catalog
    (default: the domain, e.g. ``wesnoth-httt`` for ``.../wesnoth-httt.mo``)."""
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".po", ".mo", ".deb") and p.is_file())
            yield from gettext_pairs(files, lang, source)
            continue
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.suffix == ".deb":
            for name, data in _deb_catalogs(path):
                yield from _catalog_pairs(_load_catalog(name, data=data), name, lang, source or Path(name).stem)
        elif path.suffix in (".po", ".mo"):
            name = path.as_posix()
            yield from _catalog_pairs(_load_catalog(name, path=path), name, lang, source or path.stem)
        else:
            raise ValueError(f"{path}: not a .po, .mo or .deb file, nor a folder")


# ---------------------------------------------------------------------------------------------
# XLIFF


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(element) -> str:
    """The translatable text of a <source>/<target>, inline markup (<g>, <x/>, <ph>, <pc>) reduced to its text."""
    return "".join(element.itertext()) if element is not None else ""


# the translation units of XLIFF 1.2 (state on <target>) and 2.x (state on <segment>), and the
# states that mark one not translated
UNTRANSLATED = {"trans-unit": ("new", "needs-translation"), "segment": ("initial",)}


def xliff_pairs(inputs: Iterable[Path], source: str | None = None) -> Iterator[Pair]:
    """Every usable pair of XLIFF 1.2 (``<file source-language target-language>``, ``<trans-unit>``)
    and 2.x (``<xliff srcLang trgLang>``, ``<unit><segment>``) files; units marked not translated
    (1.2 ``state="new"``/``needs-translation``, 2.x ``state="initial"``) are skipped."""
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            yield from xliff_pairs(sorted(p for p in path.rglob("*") if p.suffix in (".xlf", ".xliff")), source)
            continue
        root = ElementTree.parse(path).getroot()
        name = source or path.stem
        if _local(root.tag) != "xliff":
            raise ValueError(f"{path}: not an XLIFF file (root <{_local(root.tag)}>)")
        src2, tgt2 = root.get("srcLang", ""), root.get("trgLang", "")
        for file_el in (el for el in root if _local(el.tag) == "file"):
            src_lang = normalize_lang(file_el.get("source-language") or src2)
            tgt_lang = normalize_lang(file_el.get("target-language") or tgt2)
            if not src_lang or not tgt_lang:
                log.warning("%s: a <file> without source and target languages; skipped", path)
                continue
            for unit in file_el.iter():
                kind = _local(unit.tag)
                if kind not in UNTRANSLATED:
                    continue
                src = next((c for c in unit if _local(c.tag) == "source"), None)
                tgt = next((c for c in unit if _local(c.tag) == "target"), None)
                state = unit.get("state") if kind == "segment" else tgt.get("state") if tgt is not None else None
                if tgt is None or state in UNTRANSLATED[kind]:
                    continue
                pair = _pair(tgt_lang, src_lang, _text(src), _text(tgt), name)
                if pair:
                    yield pair


# ---------------------------------------------------------------------------------------------
# the corpus


def _bucket(en: str) -> float:
    return int.from_bytes(hashlib.sha256(en.encode("utf-8")).digest()[:8], "big") / 2**64


def write_corpus(pairs: Iterable[Pair], out: Path, valid: int = 0, test: int = 0) -> dict[str, dict[str, int]]:
    """Write the pairs as ``<split>.<xx>-en.*.gz`` under `out`; returns ``{pair: {split: count}}``.
    Duplicates are dropped; per language pair, `valid` and `test` pairs (at most a fifth each of
    the distinct English strings) are chosen by a hash of the English side (stable across runs,
    whole strings), and the rest is `train`. Lines are ordered by that hash, not by catalog."""
    by_lang: dict[str, dict[tuple[str, str], str]] = {}
    for p in pairs:
        if p.lang == "zh_Hant":
            continue
        by_lang.setdefault(p.lang, {}).setdefault((p.text, p.en), p.source)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    for lang, seen in sorted(by_lang.items()):
        rows = sorted(seen.items(), key=lambda kv: (_bucket(kv[0][1]), kv[0]))
        english = sorted({en for (_, en) in seen}, key=_bucket)
        n_valid = min(valid, len(english) // 5)
        n_test = min(test, len(english) // 5)
        valid_en, test_en = set(english[:n_valid]), set(english[n_valid : n_valid + n_test])
        splits: dict[str, list] = {"train": [], "valid": [], "test": []}
        for (text, en), source in rows:
            split = "valid" if en in valid_en else "test" if en in test_en else "train"
            splits[split].append((text, en, source))
        pair = f"{lang}-en"
        counts[pair] = {}
        for split, items in splits.items():
            if not items:
                continue
            for col, suffix in ((0, lang), (1, "en"), (2, "source")):
                write_lines(out / f"{split}.{pair}.{suffix}.gz", [item[col] for item in items])
            counts[pair][split] = len(items)
    return counts
