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


# ----------------------------------------------------------------------------- imported codecs

CODEC_FILE = "codec.json"  # in a run folder: the imported bundle's codec, special ids and model


class CodecTokenizer:
    """The text conventions of an imported bundle being fine-tuned (its manifest's `codec`:
    service/runtime/codec.py), read from a run folder where `tasks.prepare_imported` copied them:
    separate source and target SentencePiece models, vocabulary files whose ids are the model's,
    <s>/</s> on the source as the model was driven, the decoder's start token. It encodes with the
    service's own Codec, so a training source is exactly the ids the service feeds the model for
    that text, and a target is the target side's ids of the same codec."""

    def __init__(self, run_dir: Path | str) -> None:
        import json
        from types import SimpleNamespace

        from service.runtime.codec import Codec, CodecSpec

        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CODEC_FILE
        self.info = json.loads(self.path.read_text(encoding="utf-8"))
        self.spec = CodecSpec.from_dict(self.info["codec"])
        # what Codec reads of a manifest
        view = SimpleNamespace(
            codec=self.spec.to_dict(),
            tokenizer=self.spec.source_spm,
            special_ids=self.info["special_ids"],
            max_len=self.info["max_len"],
        )
        self.sp = spm.SentencePieceProcessor(model_file=str(self.run_dir / self.spec.source_spm))
        self.codec = Codec(self.run_dir, view, self.sp)  # type: ignore[arg-type]
        ids = self.info["special_ids"]
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.banned: list[int] = list(self.info.get("banned", []))
        self.vocab_size = int(self.info["model"]["vocab_size"])
        self.specials = len(self.codec.prefix) + len(self.codec.suffix)

    # The fields of the imported model a fine-tuning config may set ([model]); the rest is the
    # bundle's architecture and must stay as it is.
    TRAINING_FIELDS = ("dropout", "attention_dropout")

    def model_config(self, overrides: dict):
        """The imported model's TransformerConfig with the training-only fields of `overrides`."""
        from training.transformer import TransformerConfig

        base = dict(self.info["model"])
        wrong = sorted(k for k, v in overrides.items() if k not in self.TRAINING_FIELDS and base.get(k) != v)
        if wrong:
            raise ValueError(
                f"[model] {', '.join(f'{k}={overrides[k]!r}' for k in wrong)}: the imported model's architecture "
                f"comes from its bundle ({', '.join(f'{k}={base.get(k)!r}' for k in wrong)}); "
                f"a fine-tuning config may set only {', '.join(self.TRAINING_FIELDS)}"
            )
        return TransformerConfig.from_dict({**base, **overrides})

    def source_pieces(self, texts: list[str]) -> list[list[int]]:
        """Each source's pieces as model ids, without the specials (`source_ids` adds them)."""
        return self.codec.source.ids(list(texts), None)

    def source_ids(self, pieces: list[int]) -> list[int]:
        """The service's rule (Codec.source_ids): the specials around the pieces, cut to max_len."""
        return self.codec.source_ids(pieces)

    def encode_sources(self, texts: list[str]) -> list[list[int]]:
        """What the service feeds the encoder for `texts` (Codec.encode)."""
        return self.codec.encode(list(texts))

    def target_ids(self, texts: list[str]) -> list[list[int]]:
        """Each target's pieces as the model's target ids (no start, no end)."""
        return self.codec.target.ids(list(texts), None)

    def decode(self, rows: list[list[int]]) -> list[str]:
        """Target id rows -> text, as the service decodes (specials hidden, bytes repaired)."""
        return self.codec.decode(rows)

    def export_files(self) -> list[Path]:
        """The codec's files besides the source SentencePiece model (written as spm.model)."""
        return [self.run_dir / name for name in self.spec.files() if name != self.spec.source_spm]
