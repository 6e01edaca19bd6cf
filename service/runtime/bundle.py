"""The model bundle format: the one place that knows it (the training export writes through it).

A bundle is a folder::

    model/<name>/
      manifest.json     # this module's Manifest, below
      spm.model         # SentencePiece tokenizer (special ids in the manifest)
      encoder.onnx ...  # the ONNX graphs of each variant (fp32, int8, int8-blockwise)
      README.md         # model card; curves.png

``manifest.json`` states the task, languages or labels, the ONNX I/O contract of each graph,
special token ids, limits, metrics (with the command that measured them), the training config,
the data source and license, and the sha256 of every file. Loading verifies every checksum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TASKS = ("translation", "classification")


class BundleError(Exception):
    """A bundle that cannot be served: the message says which file and why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[str | int]


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class Manifest:
    name: str
    task: str
    version: str
    tokenizer: str
    special_ids: dict[str, int]
    vocab_size: int
    max_len: int  # positions the model has; sources and outputs are cut to fit
    model: dict[str, Any]  # the TransformerConfig the graphs were exported from
    variants: dict[str, dict[str, GraphSpec]]  # variant -> graph role -> graph
    default_variant: str
    files: dict[str, str]  # file name -> sha256
    source_lang: str = ""
    target_lang: str = ""
    # A multilingual translation bundle lists its directions ("de-en", ...) instead of one
    # source/target; with target_tags its sources start with the target's tag (tag_source).
    directions: list[str] = field(default_factory=list)
    target_tags: bool = False
    decoding: dict[str, Any] = field(default_factory=dict)  # output-length rule (preprocess.DECODING)
    labels: list[str] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    # Each target language's pieces and the output projection they cut (runtime/vocab.py):
    # {"file": npz, "languages": [...], "projection": {variant: {initializer: vocabulary axis}}}
    target_vocab: dict[str, Any] = field(default_factory=dict)
    # How text becomes the model's ids where that is not `tokenizer`'s ids with </s> after the
    # source (imported models: runtime/codec.py CodecSpec); empty: that rule.
    codec: dict[str, Any] = field(default_factory=dict)
    # Lexical shortlists (runtime/shortlist.py): {"file": npz, "languages": [...], "graphs":
    # {variant: its decoder without the output projection}, and how it was built}
    shortlist: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def graph(self, variant: str, role: str) -> GraphSpec:
        return self.variants[variant][role]

    def pairs(self) -> list[tuple[str, str]]:
        """The (source, target) language pairs a translation bundle serves."""
        if self.directions:
            return [split_direction(d) for d in self.directions]
        return [(self.source_lang, self.target_lang)] if self.task == "translation" else []

    def model_input(self, text: str, target: str) -> str:
        """The text the model is given to translate `text` into `target`."""
        return tag_source(text, target) if self.target_tags else text

    def to_json(self) -> str:
        from dataclasses import asdict

        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def target_tag(lang: str) -> str:
    """The source prefix asking a multilingual model for target language `lang` (Johnson et
    al. 2017): one SentencePiece piece, a user-defined symbol of the bundle's tokenizer. The
    training job tags its sources with the same function."""
    return f"<2{lang}>"


def is_target_tag(piece: str) -> bool:
    """Whether a tokenizer piece is a target tag (`target_tag`'s form)."""
    return piece.startswith("<2")


def tag_source(text: str, target: str) -> str:
    return f"{target_tag(target)} {text}"


def split_direction(direction: str) -> tuple[str, str]:
    src, sep, tgt = direction.partition("-")
    if not (sep and src and tgt) or "-" in tgt:
        raise ValueError(f"direction {direction!r} must look like 'de-en'")
    return src, tgt


REQUIRED_GRAPHS = {"translation": ("encoder", "decoder"), "classification": ("classifier",)}


def parse_manifest(raw: dict[str, Any], where: str = MANIFEST) -> Manifest:
    """Validate a manifest dict; every problem is gathered and reported at once."""
    problems = []
    required = (
        "name",
        "task",
        "version",
        "tokenizer",
        "special_ids",
        "vocab_size",
        "max_len",
        "model",
        "variants",
        "default_variant",
        "files",
    )
    missing = [k for k in required if k not in raw]
    if missing:
        raise BundleError(f"{where}: missing keys {missing}")
    if raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        problems.append(f"format_version {raw.get('format_version')} is not {FORMAT_VERSION}")
    task = raw["task"]
    if task not in TASKS:
        problems.append(f"task {task!r} is not one of {TASKS}")
    directions = raw.get("directions") or []
    if task == "translation" and not directions and not (raw.get("source_lang") and raw.get("target_lang")):
        problems.append("translation needs source_lang and target_lang, or directions")
    for d in directions:
        try:
            split_direction(d)
        except ValueError as e:
            problems.append(str(e))
    if len({d.partition("-")[2] for d in directions}) > 1 and not raw.get("target_tags"):
        problems.append("directions with several target languages need target_tags")
    if task == "classification" and len(raw.get("labels") or []) < 2:
        problems.append("classification needs >= 2 labels")
    for key in ("pad", "unk", "bos", "eos"):
        if not isinstance(raw["special_ids"].get(key), int):
            problems.append(f"special_ids.{key} missing")
    variants: dict[str, dict[str, GraphSpec]] = {}
    for vname, graphs in raw["variants"].items():
        variants[vname] = {}
        for role in REQUIRED_GRAPHS.get(task, ()):
            if role not in graphs:
                problems.append(f"variant {vname!r} lacks the {role!r} graph")
        for role, g in graphs.items():
            try:
                variants[vname][role] = GraphSpec(
                    file=g["file"],
                    inputs=[TensorSpec(**t) for t in g["inputs"]],
                    outputs=[TensorSpec(**t) for t in g["outputs"]],
                )
            except (KeyError, TypeError) as e:
                problems.append(f"variant {vname!r} graph {role!r} is malformed ({e})")
            else:
                if g["file"] not in raw["files"]:
                    problems.append(f"graph file {g['file']!r} has no checksum in files")
    if raw["default_variant"] not in raw["variants"]:
        problems.append(f"default_variant {raw['default_variant']!r} not in {sorted(raw['variants'])}")
    if raw["tokenizer"] not in raw["files"]:
        problems.append(f"tokenizer {raw['tokenizer']!r} has no checksum in files")
    problems += projection_problems(raw)
    problems += codec_problems(raw)
    if problems:
        raise BundleError(f"{where}: " + "; ".join(problems))
    known = {k: raw[k] for k in Manifest.__dataclass_fields__ if k in raw and k != "variants"}
    return Manifest(**known, variants=variants)


def _listed(raw: dict[str, Any], key: str) -> list[str]:
    """What is wrong with the manifest entry `key` of a per-language file (none: nothing): its file
    without a checksum, no languages."""
    spec = raw.get(key) or {}
    problems = []
    if spec and spec.get("file") not in raw["files"]:
        problems.append(f"{key} file {spec.get('file')!r} has no checksum in files")
    if spec and not spec.get("languages"):
        problems.append(f"{key} lists no languages")
    return problems


def projection_problems(raw: dict[str, Any]) -> list[str]:
    """What is wrong with a manifest's `target_vocab` and `shortlist` (files without checksums,
    no languages, graphs or projections of variants the bundle lacks)."""
    problems = _listed(raw, "target_vocab")
    for vname in (raw.get("target_vocab") or {}).get("projection") or {}:
        if vname not in raw["variants"]:
            problems.append(f"target_vocab projection for {vname!r}, not a variant")
    problems += _listed(raw, "shortlist")
    for vname, file in ((raw.get("shortlist") or {}).get("graphs") or {}).items():
        if vname not in raw["variants"]:
            problems.append(f"shortlist graph for {vname!r}, not a variant")
        if file not in raw["files"]:
            problems.append(f"shortlist graph file {file!r} has no checksum in files")
    return problems


def codec_problems(raw: dict[str, Any]) -> list[str]:
    """What is wrong with a manifest's `codec` (runtime/codec.py): unknown keys, unlisted files."""
    from service.runtime.codec import CodecSpec  # codec.py reads Manifest

    if not raw.get("codec"):
        return []
    try:
        spec = CodecSpec.from_dict(raw["codec"])
    except (TypeError, ValueError) as e:
        return [f"codec: {e}"]
    return [f"codec file {name!r} has no checksum in files" for name in spec.files() if name not in raw["files"]]


def load_manifest(bundle_dir: Path, verify: bool = True) -> Manifest:
    """Read `bundle_dir/manifest.json`; with `verify`, check every file's sha256."""
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    manifest = parse_manifest(raw, str(path))
    if verify:
        verify_files(bundle_dir, manifest)
    return manifest


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    bad = []
    for name, expected in manifest.files.items():
        f = bundle_dir / name
        if not f.is_file():
            bad.append(f"{name} is missing")
        elif (actual := sha256_file(f)) != expected:
            bad.append(f"{name} sha256 {actual[:12]}... != manifest {expected[:12]}...")
    if bad:
        raise BundleError(f"{bundle_dir}: checksum verification failed: " + "; ".join(bad))


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """Write the manifest after validating it (the same rules the loader applies)."""
    parse_manifest(json.loads(manifest.to_json()), str(bundle_dir / MANIFEST))
    path = bundle_dir / MANIFEST
    path.write_text(manifest.to_json(), encoding="utf-8")
    return path


def find_bundles(model_dir: Path) -> list[Path]:
    """Every sub-folder of `model_dir` that holds a manifest, sorted by name."""
    return sorted(p.parent for p in model_dir.glob(f"*/{MANIFEST}"))
