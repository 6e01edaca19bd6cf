"""Text <-> the model's token ids, for each side of a translation bundle.

Our own bundles have one SentencePiece model whose ids are the model's ids, and a source is its
pieces then </s> (`preprocess.source_ids`). Imported models (training/importers) keep their own
conventions, which a manifest's `codec` states (`CodecSpec`): separate source and target
SentencePiece models (Marian), a vocabulary file mapping pieces to ids that are not the
SentencePiece ids (OpenNMT-py/CTranslate2, Marian's vocab.json), and whether the source gets <s>
and </s> (a CTranslate2 model's own config.json says how that runtime drives it). A missing
`codec` is exactly the first case, so older bundles read as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import sentencepiece as spm

from service.runtime.bundle import Manifest
from service.runtime.utf8 import ByteRepair

Piece = tuple[int, int, int]  # (model id, start, end): a piece and its span in characters of the text


@dataclass(frozen=True)
class CodecSpec:
    """A manifest's `codec`: bundle file names and the source's special-token conventions."""

    source_spm: str = "spm.model"
    target_spm: str = "spm.model"
    # JSON lists of pieces, index = model id; "" = the SentencePiece ids are the model's ids.
    source_vocabulary: str = ""
    target_vocabulary: str = ""
    add_source_bos: bool = False
    add_source_eos: bool = True
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"  # what add_source_bos puts first (a vocabulary's piece)
    eos_piece: str = "</s>"  # what add_source_eos puts last

    def files(self) -> list[str]:
        names = [self.source_spm, self.target_spm, self.source_vocabulary, self.target_vocabulary]
        return sorted({n for n in names if n})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CodecSpec:
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown codec keys {unknown}")
        return cls(**raw)

    @classmethod
    def of(cls, manifest: Manifest) -> CodecSpec:
        if manifest.codec:
            return cls.from_dict(manifest.codec)
        return cls(source_spm=manifest.tokenizer, target_spm=manifest.tokenizer)


def read_vocabulary(path: Path) -> list[str]:
    """A vocabulary file: a JSON list of pieces (index = id), each piece once."""
    pieces = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
        raise ValueError(f"{path.name}: a vocabulary must be a JSON list of strings")
    if len(set(pieces)) != len(pieces):
        raise ValueError(f"{path.name}: a piece appears more than once")
    return pieces


class Side:
    """One side's SentencePiece model and, where the model's ids are not its ids, the vocabulary."""

    def __init__(self, sp: spm.SentencePieceProcessor, vocabulary: list[str] | None, unk_piece: str) -> None:
        self.sp, self.vocabulary = sp, vocabulary
        self.index = {p: i for i, p in enumerate(vocabulary)} if vocabulary is not None else {}
        self.unk = self.index.get(unk_piece, 0)

    def ids(self, texts: list[str], threads: int | None) -> list[list[int]]:
        if self.vocabulary is None:
            return self.sp.encode(texts, num_threads=threads)
        get, unk = self.index.get, self.unk
        return [[get(p, unk) for p in row] for row in self.sp.encode(texts, out_type=str, num_threads=threads)]

    def ids_of(self, text: str) -> list[int]:
        """One text's ids (sentencepiece's list call would start a thread pool for it)."""
        if self.vocabulary is None:
            return self.sp.encode(text)
        get, unk = self.index.get, self.unk
        return [get(p, unk) for p in self.sp.encode(text, out_type=str)]

    def pieces(self, text: str) -> list[Piece]:
        """`text`'s pieces with their spans in characters (sentencepiece gives UTF-8 byte offsets)."""
        proto = self.sp.encode(text, out_type="proto")
        chars = [k for k, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))] + [len(text)]
        if self.vocabulary is None:
            return [(p.id, chars[p.begin], chars[p.end]) for p in proto.pieces]
        return [(self.index.get(p.piece, self.unk), chars[p.begin], chars[p.end]) for p in proto.pieces]

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(i) if self.vocabulary is None else self.vocabulary[i]

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece) if self.vocabulary is None else self.index.get(piece, self.unk)


class Codec:
    """Source text -> the model's source ids; the model's target ids -> text (never half a UTF-8
    character: `utf8.ByteRepair`)."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, sp: spm.SentencePieceProcessor) -> None:
        spec = CodecSpec.of(manifest)
        self.max_len = manifest.max_len
        ids = manifest.special_ids
        same = spec.target_spm == spec.source_spm
        target_sp = sp if same else spm.SentencePieceProcessor(model_file=str(bundle_dir / spec.target_spm))

        def vocabulary(name: str) -> list[str] | None:
            return read_vocabulary(bundle_dir / name) if name else None

        self.source = Side(sp, vocabulary(spec.source_vocabulary), spec.unk_piece)
        target_vocab = vocabulary(spec.target_vocabulary)
        self.target = Side(target_sp, target_vocab, spec.unk_piece)
        mapped = self.source.vocabulary is not None
        bos = self.source.index.get(spec.bos_piece, ids["bos"]) if mapped else ids["bos"]
        eos = self.source.index.get(spec.eos_piece, ids["eos"]) if mapped else ids["eos"]
        self.prefix = [bos] if spec.add_source_bos else []
        self.suffix = [eos] if spec.add_source_eos else []
        self.repair = ByteRepair(target_sp, target_vocab)
        # Imported vocabularies: the decoder's start, padding and end never reach the text.
        self.hidden = {ids["pad"], ids["bos"], ids["eos"]} if target_vocab is not None else set()

    def source_ids(self, pieces: Sequence[int]) -> list[int]:
        """A source as the model reads it: its conventions' specials around the pieces, cut to the
        model's length (the pieces are cut, the specials kept)."""
        room = self.max_len - len(self.prefix) - len(self.suffix)
        return self.prefix + list(pieces[:room]) + self.suffix

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's source ids (`source_ids`)."""
        # sentencepiece encodes a list on a thread pool (started for each call): worth it for a
        # batch, not for a few
        if len(texts) < 8:
            return [self.source_ids(self.source.ids_of(t)) for t in texts]
        return [self.source_ids(ids) for ids in self.source.ids(list(texts), None)]

    def n_tokens(self, text: str) -> int:
        """The source ids `text` takes before the cut to the model's length."""
        return len(self.source.ids_of(text)) + len(self.prefix) + len(self.suffix)

    def decode(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """The texts of target id rows (one SentencePiece call)."""
        if self.hidden:
            rows = [[i for i in r if i not in self.hidden] for r in rows]
        return self.repair.decode(rows)

    def decode_one(self, ids: Sequence[int]) -> str:
        """One row: SentencePiece's list call would start a thread pool for it."""
        return self.repair.decode_one([i for i in ids if i not in self.hidden] if self.hidden else ids)
