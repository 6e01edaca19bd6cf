"""A Hugging Face Marian folder read with our own code: config.json (and generation_config.json),
model.safetensors or pytorch_model.bin, source.spm, target.spm, vocab.json (target_vocab.json
when the vocabularies are separate).

Hugging Face's MarianMTModel is the post-norm Transformer: embeddings times sqrt(D) (scale_embedding),
sinusoidal positions laid out [sin | cos] (angle pos / 10000^(2j/D), from position 0), every
LayerNorm with eps 1e-5, the FFN's activation from the config (swish for Opus-MT), logits =
decoder output x lm_head (the shared embedding when tied) + final_logits_bias. A source is its
pieces mapped through vocab.json, then </s>; decoding starts from decoder_start_token_id (<pad>,
whose embedding is zero) and never produces the tokens of bad_words_ids.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from training.importers.common import Imported, Refused, check_shape, positions_layout

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
ACTIVATIONS = {
    "swish": "swish",
    "silu": "swish",
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
MARIAN_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default: Hugging Face's Marian layers use it


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A .safetensors file: u64 header size, a JSON header {name: {dtype, shape, data_offsets}},
    then the raw little-endian data."""
    data = path.read_bytes()
    if len(data) < 8:
        raise Refused(f"{path}: corrupt safetensors file (no header)")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise Refused(f"{path}: corrupt safetensors file (header past the end)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Refused(f"{path}: corrupt safetensors header ({e})") from None
    body = memoryview(data)[8 + size :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise Refused(f"{path}: {name} has data type {meta.get('dtype')} (floating point weights only)")
        start, end = meta["data_offsets"]
        storage = "uint16" if dtype == "bfloat16" else dtype
        shape = tuple(meta["shape"])
        if end > len(body) or end - start != int(np.prod(shape, dtype=np.int64)) * np.dtype(storage).itemsize:
            raise Refused(f"{path}: corrupt safetensors file ({name}: offsets {start}-{end} for shape {shape})")
        array = np.frombuffer(body[start:end], dtype=storage).reshape(shape)
        if dtype == "bfloat16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array.astype(np.float32)
    return out


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """A pytorch_model.bin state dict, loaded as data only (weights_only: no pickled code)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one refusal
        raise Refused(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "is_floating_point") and v.is_floating_point()}


def _vocab(path: Path, size: int, what: str) -> list[str]:
    if not path.is_file():
        raise Refused(f"{path.parent}: missing {path.name} (the {what} vocabulary)")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise Refused(f"{path}: not JSON ({e})") from None
    if not isinstance(mapping, dict):
        raise Refused(f"{path}: a vocabulary must map pieces to ids")
    pieces = [""] * len(mapping)
    for piece, i in mapping.items():
        if not isinstance(i, int) or not 0 <= i < len(mapping) or pieces[i]:
            raise Refused(f"{path}: ids are not 0..{len(mapping) - 1}, each once ({piece!r}: {i})")
        pieces[i] = piece
    if len(pieces) != size:
        raise Refused(
            f"{path}: {len(pieces)} pieces for a {what} embedding of {size} rows (a vocabulary of the wrong size)"
        )
    return pieces


def read_marian(folder: Path) -> Imported:
    """A Hugging Face Marian folder as an `Imported`."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise Refused(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        config: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise Refused(f"{cfg_path}: not JSON ({e})") from None
    generation: dict[str, Any] = {}
    if (folder / "generation_config.json").is_file():
        generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "marian":
        raise Refused(
            f"{folder}: model type {config.get('model_type')!r}: only Marian (model_type 'marian') folders are read"
        )
    if (folder / "model.safetensors").is_file():
        sd, weights_file = read_safetensors(folder / "model.safetensors"), "model.safetensors"
    elif (folder / "pytorch_model.bin").is_file():
        sd, weights_file = read_torch_bin(folder / "pytorch_model.bin"), "pytorch_model.bin"
    else:
        raise Refused(f"{folder}: no model.safetensors or pytorch_model.bin")
    if any(k.startswith("model.") for k in sd):
        sd = {k[len("model.") :] if k.startswith("model.") else k: v for k, v in sd.items()}
    used: set[str] = set()

    def get(*names: str) -> np.ndarray:
        for name in names:
            if name in sd:
                used.add(name)
                return sd[name]
        raise Refused(f"{folder}/{weights_file}: no weight {names[0]}")

    d = int(config["d_model"])
    heads = int(config["encoder_attention_heads"])
    if int(config.get("decoder_attention_heads", heads)) != heads:
        raise Refused(f"{folder}: encoder and decoder head counts differ: not supported")
    d_ff = int(config["encoder_ffn_dim"])
    if int(config.get("decoder_ffn_dim", d_ff)) != d_ff:
        raise Refused(f"{folder}: encoder and decoder FFN sizes differ: not supported")
    act = config.get("activation_function", "swish")
    if act not in ACTIVATIONS:
        raise Refused(f"{folder}: unsupported feature: activation {act!r}")
    if config.get("normalize_before") or config.get("normalize_embedding"):
        raise Refused(f"{folder}: unsupported feature: normalize_before/normalize_embedding in a Marian config")
    n_enc, n_dec = int(config["encoder_layers"]), int(config["decoder_layers"])
    vs = int(config["vocab_size"])
    vt = int(config.get("decoder_vocab_size") or vs)
    shared = bool(config.get("share_encoder_decoder_embeddings", True))
    tied = bool(config.get("tie_word_embeddings", True))

    source_embed = get("shared.weight", "encoder.embed_tokens.weight") if shared else get("encoder.embed_tokens.weight")
    target_embed = source_embed if shared else get("decoder.embed_tokens.weight")
    if shared:
        for extra in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if extra in sd:
                used.add(extra)
                if not np.array_equal(sd[extra], source_embed):
                    raise Refused(f"{folder}: {extra} differs from the shared embedding while the config shares them")
    check_shape("source embedding", source_embed, (vs, d))
    check_shape("target embedding", target_embed, (vt, d))
    output_weight = None
    if "lm_head.weight" in sd:
        used.add("lm_head.weight")
        if not (tied and np.array_equal(sd["lm_head.weight"], target_embed)):
            output_weight = check_shape("lm_head.weight", sd["lm_head.weight"], (vt, d))
    elif not tied:
        raise Refused(f"{folder}: no lm_head.weight and tie_word_embeddings is false")
    bias = sd.get("final_logits_bias")
    output_bias = None
    if bias is not None:
        used.add("final_logits_bias")
        output_bias = check_shape("final_logits_bias", bias.reshape(-1), (vt,))
        if not output_bias.any():
            output_bias = None

    w: dict[str, np.ndarray] = {}

    def linear(ours: str, theirs: str, rows: int, cols: int) -> None:
        w[f"{ours}.weight"] = check_shape(f"{theirs}.weight", get(f"{theirs}.weight"), (rows, cols))
        w[f"{ours}.bias"] = check_shape(f"{theirs}.bias", get(f"{theirs}.bias"), (rows,))

    def norm(ours: str, theirs: str) -> None:
        w[f"{ours}.weight"] = check_shape(f"{theirs}.weight", get(f"{theirs}.weight"), (d,))
        w[f"{ours}.bias"] = check_shape(f"{theirs}.bias", get(f"{theirs}.bias"), (d,))

    def attention(ours: str, theirs: str) -> None:
        for x in ("q", "k", "v", "out"):
            linear(f"{ours}.{x}_proj", f"{theirs}.{x}_proj", d, d)

    for i in range(n_enc):
        p, q = f"encoder.layers.{i}", f"encoder.layers.{i}"
        attention(f"{p}.self_attn", f"{q}.self_attn")
        norm(f"{p}.attn_block.norm", f"{q}.self_attn_layer_norm")
        linear(f"{p}.ffn.linear1", f"{q}.fc1", d_ff, d)
        linear(f"{p}.ffn.linear2", f"{q}.fc2", d, d_ff)
        norm(f"{p}.ffn_block.norm", f"{q}.final_layer_norm")
    for i in range(n_dec):
        p, q = f"decoder.layers.{i}", f"decoder.layers.{i}"
        attention(f"{p}.self_attn", f"{q}.self_attn")
        norm(f"{p}.self_block.norm", f"{q}.self_attn_layer_norm")
        attention(f"{p}.cross_attn", f"{q}.encoder_attn")
        norm(f"{p}.cross_block.norm", f"{q}.encoder_attn_layer_norm")
        linear(f"{p}.ffn.linear1", f"{q}.fc1", d_ff, d)
        linear(f"{p}.ffn.linear2", f"{q}.fc2", d, d_ff)
        norm(f"{p}.ffn_block.norm", f"{q}.final_layer_norm")

    # Positions: Marian's sinusoids; a stored table (older checkpoints save it) is checked
    positions, tables = "sinusoidal-concat", []
    for stack in ("encoder", "decoder"):
        name = f"{stack}.embed_positions.weight"
        if name in sd:
            used.add(name)
            tables.append(check_shape(name, sd[name], (sd[name].shape[0], d)))
    if tables and {positions_layout(t) for t in tables} != {"sinusoidal-concat"}:
        positions = "table"
    leftover = sorted(set(sd) - used)
    if leftover:
        raise Refused(f"{folder}: weights this importer cannot map (unsupported features): {', '.join(leftover[:12])}")

    source_vocab = _vocab(folder / "vocab.json", vs, "source")
    if shared and not (folder / "target_vocab.json").is_file():
        target_vocab = source_vocab if vt == vs else _vocab(folder / "vocab.json", vt, "target")
    else:
        target_vocab = _vocab(folder / "target_vocab.json", vt, "target")
    tok_cfg = {}
    if (folder / "tokenizer_config.json").is_file():
        tok_cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))

    def token_id(key: str) -> int:
        value = generation.get(key, config.get(key))
        if not isinstance(value, int) or not 0 <= value < vt:
            raise Refused(f"{folder}: {key} = {value!r} is not a target id")
        return value

    bad = generation.get("bad_words_ids", config.get("bad_words_ids")) or []
    banned = sorted({b[0] for b in bad if isinstance(b, list) and len(b) == 1 and isinstance(b[0], int)})
    if any(isinstance(b, list) and len(b) > 1 for b in bad):
        raise Refused(f"{folder}: unsupported feature: bad_words_ids of several tokens")
    max_pos = int(config.get("max_position_embeddings", 512))
    spms = {}
    for side in ("source", "target"):
        path = folder / f"{side}.spm"
        spms[side] = path if path.is_file() else None
    pad = token_id("pad_token_id")
    if pad >= vs:
        raise Refused(f"{folder}: pad_token_id {pad} is not a source id")
    return Imported(
        d_model=d,
        n_heads=heads,
        d_ff=d_ff,
        n_encoder_layers=n_enc,
        n_decoder_layers=n_dec,
        pre_norm=False,
        activation=ACTIVATIONS[act],
        layer_norm_eps=MARIAN_LAYER_NORM_EPS,
        scale_embeddings=bool(config.get("scale_embedding", True)),
        embedding_norm=False,
        positions=positions,
        encoder_pe=tables[0] if positions == "table" else None,
        decoder_pe=tables[-1] if positions == "table" else None,
        source_embed=source_embed,
        target_embed=target_embed,
        output_weight=output_weight,
        output_bias=output_bias,
        weights=w,
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        bos_id=token_id("decoder_start_token_id"),
        eos_id=token_id("eos_token_id"),
        pad_id=pad,
        unk_piece=tok_cfg.get("unk_token", "<unk>") if isinstance(tok_cfg.get("unk_token", ""), str) else "<unk>",
        eos_piece=target_vocab[token_id("eos_token_id")],
        add_source_bos=False,
        add_source_eos=True,
        banned=banned,
        source_spm=spms["source"],
        target_spm=spms["target"],
        max_positions=max_pos,
        info={"format": "Hugging Face Marian", "files": {"weights": weights_file}, "name": folder.name},
    )
