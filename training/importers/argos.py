"""Argos Translate packages: a package folder, an ``.argosmodel`` zip, or a folder of packages
(LibreTranslate's ``~/.local/share/argos-translate/packages/``).

A package holds ``metadata.json`` (from_code, to_code, package_version, name, ...), a
CTranslate2 model in ``model/``, ``sentencepiece.model`` (the one SentencePiece model of both
sides) and usually a README.md naming the data and the license. Argos feeds the model the source's
pieces as they are (the model's config.json says whether <s> or </s> go around them) and
decodes the target pieces with the same SentencePiece model.
"""

from __future__ import annotations

import json
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from training.importers.common import Imported, Refused
from training.importers.ct2 import read_ct2

MAX_UNPACKED = 8 << 30  # bytes: a package is a few hundred MB at most
MAX_RATIO = 200  # unpacked / packed, per member: beyond it the zip is refused as a bomb


@dataclass
class Package:
    source: Path  # what was given: a folder or a .argosmodel file
    folder: Path  # the unpacked package (metadata.json inside)
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        """The bundle's folder name: the package's file or folder name, made safe."""
        stem = self.source.name[: -len(".argosmodel")] if self.source.name.endswith(".argosmodel") else self.source.name
        return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-") or "argos-package"


def find_packages(path: Path) -> list[Path]:
    """The packages `path` names: itself (a package folder or .argosmodel), or every package in
    it (a packages folder), sorted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    if (path / "metadata.json").is_file():
        return [path]
    found = sorted(p for p in path.iterdir() if (p.is_dir() and (p / "metadata.json").is_file()))
    found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".argosmodel")
    if not found:
        raise Refused(f"{path}: neither an Argos package (metadata.json) nor a folder of packages")
    return found


def unpack(archive: Path, dest: Path) -> Path:
    """Extract an .argosmodel zip into `dest`, refusing unsafe or corrupt archives; returns the
    folder holding metadata.json."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = 0
            for info in members:
                parts = PurePosixPath(info.filename).parts
                if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in info.filename:
                    raise Refused(f"{archive}: unsafe path in the archive: {info.filename!r}")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise Refused(f"{archive}: the archive holds a symbolic link ({info.filename})")
                total += info.file_size
                if total > MAX_UNPACKED or (info.compress_size and info.file_size / info.compress_size > MAX_RATIO):
                    raise Refused(f"{archive}: unpacks to too much data (a zip bomb?)")
            bad = zf.testzip()
            if bad is not None:
                raise Refused(f"{archive}: corrupt .argosmodel ({bad} fails its CRC check)")
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise Refused(f"{archive}: corrupt .argosmodel (not a zip: {e})") from None
    except (OSError, EOFError, zlib.error, zipfile.LargeZipFile) as e:
        raise Refused(f"{archive}: corrupt .argosmodel ({type(e).__name__}: {e})") from None
    found = sorted(p.parent for p in dest.rglob("metadata.json"))
    if not found:
        raise Refused(f"{archive}: no metadata.json in the archive (not an Argos package)")
    return found[0]


def open_package(source: Path, workdir: Path) -> Package:
    """The package at `source` (unpacked under `workdir` when it is a zip), metadata read."""
    folder = unpack(source, workdir) if source.is_file() else source
    try:
        metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Refused(f"{source}: metadata.json is not JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise Refused(f"{source}: metadata.json is not an object")
    return Package(source, folder, metadata)


def license_of(folder: Path, metadata: dict[str, Any]) -> str:
    """The license the package states: metadata's `license`, else the README's line on it."""
    if isinstance(metadata.get("license"), str) and metadata["license"].strip():
        return metadata["license"].strip()
    readme = next(
        (folder / n for n in ("README.md", "README.txt", "README", "readme.md") if (folder / n).is_file()), None
    )
    if readme is None:
        return ""
    lines = [line.strip() for line in readme.read_text(encoding="utf-8", errors="replace").splitlines()]
    for i, line in enumerate(lines):
        if "licen" not in line.lower():
            continue
        text = line.lstrip("#*- ").strip()
        if re.fullmatch(r"licen[cs]es?:?", text, flags=re.I):  # a heading: its next line
            text = next((x for x in lines[i + 1 :] if x), "")
        return re.sub(r"\s+", " ", text)[:300]
    return ""


def read_argos(pkg: Package) -> Imported:
    """A package's model as an `Imported`, with its tokenizer and provenance."""
    meta, folder = pkg.metadata, pkg.folder
    kind = meta.get("type", "translate")
    if kind != "translate":
        raise Refused(f"{pkg.source}: package type {kind!r}: only translation packages are imported")
    for key in ("from_code", "to_code"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise Refused(f"{pkg.source}: metadata.json has no {key}")
    if meta.get("target_prefix"):
        raise Refused(f"{pkg.source}: unsupported feature: a target prefix ({meta['target_prefix']!r})")
    spm_path = folder / "sentencepiece.model"
    if not spm_path.is_file():
        if (folder / "bpe.model").is_file():
            raise Refused(f"{pkg.source}: unsupported feature: a BPE tokenizer (bpe.model); SentencePiece only")
        raise Refused(f"{pkg.source}: missing tokenizer: no sentencepiece.model in the package")
    if not (folder / "model").is_dir():
        raise Refused(f"{pkg.source}: no model/ folder in the package")
    imp = read_ct2(folder / "model")
    imp.source_spm = imp.target_spm = spm_path
    imp.info.update(
        {
            "format": "Argos Translate package (CTranslate2 model)",
            "source_path": str(pkg.source),
            "package": {
                "name": meta.get("name", ""),
                "version": str(meta.get("package_version", "")),
                "argos_version": str(meta.get("argos_version", "")),
                "from": meta.get("from_name", meta["from_code"]),
                "to": meta.get("to_name", meta["to_code"]),
            },
            "license": license_of(folder, meta),
            "provenance": [
                f"Argos package `{pkg.source.name}`: {meta.get('name', '?')} {meta.get('package_version', '')}, "
                f"{meta.get('from_name', meta['from_code'])} -> {meta.get('to_name', meta['to_code'])}",
            ],
        }
    )
    if (folder / "README.md").is_file():
        imp.info["readme"] = (folder / "README.md").read_text(encoding="utf-8", errors="replace")[:2000]
    return imp
