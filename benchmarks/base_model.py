"""A model of a given size for the engine benchmark (`benchmarks/engines.py --model-size base`):
random weights, our bundle exported from them and CTranslate2 conversions of the same weights.

The sizes are the ones users serve: `base` is transformer-base as Argos / OpenNMT-py make it
(d512, 8 heads, FFN 2048, 6+6 layers, pre-norm, ReLU, one ~32k SentencePiece vocabulary shared by
source, target and the tied output projection); `tiny` is the same layout at toy sizes, for tests.

Random weights decode nonsense, so the two engines would stop at different steps: the model gets a
logits bias (`output_bias`) of -10,000 on `</s>`, which no engine ever picks, and the benchmark
decodes every sentence to one fixed length in both engines (ours: the translator's output limit
rule `int(len * ratio) + extra` with ratio 0 and extra = the length; CTranslate2:
`max_decoding_length`). Everything else (the embeddings, the layers) is PyTorch's initialisation.

The tokenizer is a SentencePiece model trained on the Tatoeba de-en training text (both sides),
so the benchmark's sources (Tatoeba de valid) have realistic lengths in pieces.

Building is slow at base size (the export and its int8 variants: minutes), so everything is cached
under `cache_dir/<size>-v<vocab>-s<seed>/` (default /work/runs/base-bench): `spm.model`,
`model.pt` (our checkpoint), `bundle/` (fp32, int8, int8-blockwise, int8-static), `ct2-fp32/`,
`ct2-int8/`, and `built.json` (what was built, last). A rerun with the same key reuses them.

    python -m benchmarks.base_model --size base [--seed 0] [--cache-dir /work/runs/base-bench]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tatoeba-de-en"
CACHE = Path("/work/runs/base-bench")
RUN_CONFIG = ROOT / "training" / "configs" / "multi30k-de-en.toml"  # a de->en translation config, for the manifest
EOS_BIAS = -10_000.0  # the logits bias on </s>: no engine stops early


@dataclass(frozen=True)
class Size:
    d_model: int
    n_heads: int
    d_ff: int
    layers: int
    vocab: int
    tokenizer_lines: int  # training lines of each language for the SentencePiece model


SIZES = {
    "base": Size(d_model=512, n_heads=8, d_ff=2048, layers=6, vocab=32000, tokenizer_lines=400_000),
    "tiny": Size(d_model=32, n_heads=2, d_ff=64, layers=1, vocab=300, tokenizer_lines=2_000),
}


@dataclass(frozen=True)
class Built:
    """What a build made: the folder and its files."""

    folder: Path
    size: str
    seed: int

    @property
    def tokenizer(self) -> Path:
        return self.folder / "spm.model"

    @property
    def checkpoint(self) -> Path:
        return self.folder / "model.pt"

    @property
    def bundle(self) -> Path:
        return self.folder / "bundle"

    @property
    def ct2_fp32(self) -> Path:
        return self.folder / "ct2-fp32"

    @property
    def ct2_int8(self) -> Path:
        return self.folder / "ct2-int8"


def read_lines(split: str, lang: str, limit: int = 0) -> list[str]:
    """Tatoeba de-en `split` (train, valid, test) in `lang`, first `limit` lines (0: all)."""
    with gzip.open(DATA / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return lines[:limit] if limit else lines


def model_config(size: str, vocab_size: int):
    from training.transformer import TransformerConfig

    s = SIZES[size]
    return TransformerConfig(
        vocab_size=vocab_size,
        d_model=s.d_model,
        n_heads=s.n_heads,
        d_ff=s.d_ff,
        n_encoder_layers=s.layers,
        n_decoder_layers=s.layers,
        dropout=0.0,
        attention_dropout=0.0,
        max_len=256,
        pre_norm=True,
        activation="relu",
        share_embeddings=True,
        tie_output=True,
        output_bias=True,
    )


def build(size: str = "base", seed: int = 0, cache_dir: Path = CACHE, int8: bool = True, log=print) -> Built:
    """The cached model of `size` and `seed` (built when absent): tokenizer, checkpoint, our bundle
    (with its int8 variants unless `int8` is off), CTranslate2 float32 and int8 conversions."""
    s = SIZES[size]
    built = Built(cache_dir / f"{size}-v{s.vocab}-s{seed}{'' if int8 else '-fp32only'}", size, seed)
    stamp = built.folder / "built.json"
    if stamp.exists():
        return built
    built.folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not built.tokenizer.exists():
        from training.tokenizer import train_tokenizer

        texts = read_lines("train", "de", s.tokenizer_lines) + read_lines("train", "en", s.tokenizer_lines)
        train_tokenizer(texts, built.tokenizer, s.vocab, seed_sentences=len(texts))
        log(f"tokenizer: {time.perf_counter() - t0:.1f}s")
    import sentencepiece as spm
    import torch

    from service.runtime.preprocess import EOS_ID
    from training.checkpoint import save_checkpoint
    from training.transformer import Seq2SeqTransformer

    vocab = spm.SentencePieceProcessor(model_file=str(built.tokenizer)).get_piece_size()
    cfg = model_config(size, vocab)
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(cfg).eval()
    with torch.no_grad():
        model.output_bias[EOS_ID] = EOS_BIAS
    save_checkpoint({"model_config": cfg.to_dict(), "model": model.state_dict()}, built.checkpoint)
    if not (built.bundle / "manifest.json").exists():
        from training.config import load_config
        from training.export import export_bundle

        run_cfg = load_config(RUN_CONFIG)
        run_cfg = dataclasses.replace(run_cfg, name=f"{size}-bench")
        t1 = time.perf_counter()
        parity = read_lines("valid", "de", 8)
        calibration = read_lines("train", "de")[-256:]  # training text (the sources are valid text)
        export_bundle(model, run_cfg, built.tokenizer, built.bundle, parity, force=True, int8=int8,
                      calibration_texts=calibration)  # fmt: skip
        log(f"export: {time.perf_counter() - t1:.1f}s")
    from benchmarks.ct2_convert import convert

    t2 = time.perf_counter()
    convert(built.checkpoint, built.tokenizer, built.ct2_fp32)
    convert(built.checkpoint, built.tokenizer, built.ct2_int8, quantization="int8")
    log(f"ctranslate2 conversions: {time.perf_counter() - t2:.1f}s")
    done = {"size": size, "seed": seed, "vocab": vocab, "config": cfg.to_dict(), "eos_bias": EOS_BIAS}
    stamp.write_text(json.dumps({**done, "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    return built


def with_target_vocab(built: Built) -> Path:
    """A copy of the built bundle with a target vocabulary for English (training/vocab.py: the
    pieces of the Tatoeba de-en training targets, as the release gives `multi` one per language),
    cached as `bundle-tv/`: the output projection cut to the pieces English text uses, which a
    single-pair model's export does not do by itself."""
    import shutil

    import sentencepiece as spm

    from training.vocab import with_continuation_bytes, write_target_vocab

    out = built.folder / "bundle-tv"
    done = built.folder / "bundle-tv.done"  # outside the bundle: its files are the manifest's
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(built.bundle, out)
    sp = spm.SentencePieceProcessor(model_file=str(built.tokenizer))
    ids = {i for line in read_lines("train", "en") for i in sp.encode(line)}
    write_target_vocab(out, with_continuation_bytes({"en": ids}, sp))
    done.write_text(f"{len(ids)} pieces\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=CACHE)
    args = p.parse_args()
    print(build(args.size, args.seed, args.cache_dir).folder)


if __name__ == "__main__":
    main()
