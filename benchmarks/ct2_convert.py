"""Convert a transerve translation checkpoint to a CTranslate2 model (for side-by-side benchmarks).

    python benchmarks/ct2_convert.py --checkpoint runs/de-en/best.pt --tokenizer runs/de-en/spm.model \
        --out /tmp/ct2-de-en [--quantization int8]

Written against ``ctranslate2.specs`` (pip install ctranslate2). Notes on the mapping:
- CTranslate2 fuses Q/K/V of self-attention into one linear (and K/V of cross-attention):
  our separate projections are concatenated along the output dimension.
- Its default sinusoidal table is laid out [sin | cos] (tensor2tensor); ours interleaves sin
  and cos (the paper), so the converter writes our own table into ``position_encodings``.
- Embeddings are scaled by sqrt(d_model) in both; the output projection is tied to the
  embedding (plus the logits bias when the model has one, ``output_bias``); the source gets </s>
  appended (``add_source_eos``), decoding starts from <s>.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import sentencepiece as spm


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def convert(checkpoint: Path, tokenizer: Path, out: Path, quantization: str | None = None) -> Path:
    import ctranslate2
    from ctranslate2.specs import transformer_spec

    from training.checkpoint import load_checkpoint
    from training.transformer import PositionalEncoding, TransformerConfig

    ckpt = load_checkpoint(checkpoint)
    cfg = TransformerConfig.from_dict(ckpt["model_config"])
    if not cfg.pre_norm:
        raise ValueError("this converter maps the pre-norm layout; the checkpoint is post-norm")
    if not (cfg.share_embeddings and cfg.tie_output and cfg.scale_embeddings) or cfg.activation != "relu":
        raise ValueError("this converter maps shared, tied, scaled embeddings and ReLU (as Argos / OpenNMT models)")
    if cfg.embedding_norm:
        raise ValueError("this converter does not map an embedding LayerNorm")
    sd = ckpt["model"]
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.n_encoder_layers, cfg.n_decoder_layers), cfg.n_heads, pre_norm=True
    )
    pe = _np(PositionalEncoding(cfg).pe)
    emb = _np(sd["embed.embedding.weight"])

    def linear(dst, *names: str) -> None:
        dst.weight = np.concatenate([_np(sd[f"{n}.weight"]) for n in names], axis=0)
        dst.bias = np.concatenate([_np(sd[f"{n}.bias"]) for n in names], axis=0)

    def norm(dst, name: str) -> None:
        dst.gamma, dst.beta = _np(sd[f"{name}.weight"]), _np(sd[f"{name}.bias"])

    def ffn(dst, prefix: str, block: str) -> None:
        norm(dst.layer_norm, f"{prefix}.{block}.norm")
        linear(dst.linear_0, f"{prefix}.ffn.linear1")
        linear(dst.linear_1, f"{prefix}.ffn.linear2")

    enc = spec.encoder
    enc.embeddings[0].weight = emb
    enc.scale_embeddings = True
    enc.position_encodings.encodings = pe
    for i, layer in enumerate(enc.layer):
        p = f"encoder.layers.{i}"
        norm(layer.self_attention.layer_norm, f"{p}.attn_block.norm")
        linear(layer.self_attention.linear[0], *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        ffn(layer.ffn, p, "ffn_block")
    norm(enc.layer_norm, "encoder.norm")

    dec = spec.decoder
    dec.embeddings.weight = emb
    dec.scale_embeddings = True
    dec.position_encodings.encodings = pe
    dec.projection.weight = emb  # tied output projection
    if cfg.output_bias:  # the logits bias (the engine benchmark's random models: -inf-like on </s>)
        dec.projection.bias = _np(sd["output_bias"])
    for i, layer in enumerate(dec.layer):
        p = f"decoder.layers.{i}"
        norm(layer.self_attention.layer_norm, f"{p}.self_block.norm")
        linear(layer.self_attention.linear[0], *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        norm(layer.attention.layer_norm, f"{p}.cross_block.norm")
        linear(layer.attention.linear[0], f"{p}.cross_attn.q_proj")
        linear(layer.attention.linear[1], f"{p}.cross_attn.k_proj", f"{p}.cross_attn.v_proj")
        linear(layer.attention.linear[2], f"{p}.cross_attn.out_proj")
        ffn(layer.ffn, p, "ffn_block")
    norm(dec.layer_norm, "decoder.norm")

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = cfg.layer_norm_eps  # 1e-5 by default, torch.nn.LayerNorm's
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    assert ctranslate2.contains_model(str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--tokenizer", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quantization", choices=["int8", "int8_float32", "float32"], default=None)
    args = p.parse_args()
    print(convert(args.checkpoint, args.tokenizer, args.out, args.quantization))


if __name__ == "__main__":
    main()
