"""Whole UTF-8 characters out of byte-fallback pieces.

A SentencePiece model with byte fallback spells a character it has no piece for as its UTF-8
bytes (`<0xE5>`, `<0xAE>`, `<0xAB>`). A decoder may emit a lead byte without its continuation
bytes (or stray continuation bytes); SentencePiece then decodes each broken sequence as U+FFFD.
`complete_bytes` drops exactly the bytes that form no whole character, so a translation never
contains a replacement character that its own decoding made up."""

from __future__ import annotations

from collections.abc import Sequence

import sentencepiece as spm


class ByteRepair:
    """Per-tokenizer tables: which ids are byte pieces, and each one's byte value. With `pieces`
    (a vocabulary whose ids are not the SentencePiece ids: id -> piece), ids are that vocabulary's
    and rows are decoded through their pieces."""

    def __init__(self, sp: spm.SentencePieceProcessor, pieces: Sequence[str] | None = None) -> None:
        self.sp, self.pieces = sp, pieces
        self.value: dict[int, int] = {}
        if pieces is None:
            for i in range(sp.get_piece_size()):
                if sp.is_byte(i):
                    self.value[i] = int(sp.id_to_piece(i)[1:-1], 16)
        else:
            for i, piece in enumerate(pieces):
                j = sp.piece_to_id(piece)
                if sp.id_to_piece(j) == piece and sp.is_byte(j):
                    self.value[i] = int(piece[1:-1], 16)
        self.id_of = {v: i for i, v in self.value.items()}

    def complete_bytes(self, ids: Sequence[int]) -> list[int]:
        """`ids` with every byte piece that is not part of a whole UTF-8 character removed."""
        if not any(i in self.value for i in ids):
            return list(ids)
        out: list[int] = []
        run: list[int] = []
        for i in list(ids) + [-1]:
            if i in self.value:
                run.append(self.value[i])
                continue
            if run:
                whole = bytes(run).decode("utf-8", errors="ignore").encode("utf-8")
                out.extend(self.id_of[b] for b in whole)
                run = []
            if i != -1:
                out.append(i)
        return out

    def decode(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """SentencePiece's batch decode of `rows` (one call), broken byte sequences dropped first."""
        fixed = [self.complete_bytes(r) for r in rows]
        if self.pieces is None:
            return self.sp.decode(fixed)
        return [self.sp.decode_pieces([self.pieces[i] for i in r]) for r in fixed]

    def decode_one(self, ids: Sequence[int]) -> str:
        """One row: SentencePiece's list call would start a thread pool for it."""
        if self.pieces is None:
            return self.sp.decode(self.complete_bytes(ids))
        return self.sp.decode_pieces([self.pieces[i] for i in self.complete_bytes(ids)])
