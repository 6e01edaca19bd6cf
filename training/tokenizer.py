"""SentencePiece tokenizer with fixed special ids: <pad>=0, <unk>=1, <s>=2, </s>=3."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from service.runtime.preprocess import BOS_ID, EOS_ID, PAD_ID, SPECIAL_IDS, UNK_ID


def train_tokenizer(
    texts: Iterable[str],
    out_path: Path,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    user_defined_symbols: Iterable[str] = (),
    seed_sentences: int = 2_000_000,
    byte_fallback: bool = False,
) -> Path:
    """Train a SentencePiece model on `texts` and write it to `out_path` (a .model file)."""
    if model_type not in ("unigram", "bpe", "word"):
        raise ValueError(f"model_type={model_type!r} must be 'unigram', 'bpe' or 'word'")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in texts if t.strip()]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        user_defined_symbols=list(user_defined_symbols),
        byte_fallback=byte_fallback,
        input_sentence_size=seed_sentences,
        shuffle_input_sentence=True,
        # Small corpora cannot always fill the requested vocabulary; take what they support.
        hard_vocab_limit=False,
        num_threads=2,
        minloglevel=2,
    )
    out_path.write_bytes(model.getvalue())
    return out_path


class Tokenizer:
    """Thin wrapper over a SentencePiece model that checks the special ids on load."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        found = {
            "pad": self.sp.pad_id(),
            "unk": self.sp.unk_id(),
            "bos": self.sp.bos_id(),
            "eos": self.sp.eos_id(),
        }
        if found != SPECIAL_IDS:
            raise ValueError(f"{self.path}: special ids {found} differ from {SPECIAL_IDS}")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, sample_alpha: float = 0.0) -> list[int]:
        """Pieces of `text`; with `sample_alpha` > 0, one segmentation sampled from the unigram
        lattice (subword regularisation, Kudo 2018; smaller alpha = more varied pieces)."""
        if sample_alpha > 0:
            return self.sp.encode(text, enable_sampling=True, alpha=sample_alpha, nbest_size=-1)
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], sample_alpha: float = 0.0) -> list[list[int]]:
        if sample_alpha > 0:  # one at a time: SentencePiece's batch encode samples in threads
            return [self.encode(t, sample_alpha) for t in texts]
        return self.sp.encode(texts)

    @staticmethod
    def seed_sampling(seed: int) -> None:
        """Make the sampled segmentations that follow reproducible."""
        spm.set_random_generator_seed(seed)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def piece_to_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)
