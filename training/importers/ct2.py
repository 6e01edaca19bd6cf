"""A CTranslate2 model directory read with our own code: model.bin, config.json, vocabularies.

model.bin (little-endian), as CTranslate2's ``ModelSpec._serialize`` writes it:

    u32 binary version (1-6)
    version >= 2: string spec name ("TransformerSpec"; older "TransformerBase"/"TransformerBig"),
                  u32 spec revision
    u32 number of variables, then each variable:
        string name ("encoder/layer_0/self_attention/linear_0/weight"), u8 rank, u32 x rank dims,
        version >= 4: u8 dtype (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16),
                      u32 size in bytes
        version < 4:  u8 item width (4 float32, 2 int16, 1 int8), u32 number of items
        the raw values, row-major
    version >= 3: u32 number of aliases, then each: string alias, string target name
    string = u16 length including a final NUL, the UTF-8 bytes, the NUL

Scalars (rank 0) hold options: ``encoder/num_heads`` (int16), ``encoder/pre_norm`` and
``*/scale_embeddings`` (int8 booleans, or a float32 factor), ``*/activation`` (int8 enum:
0 ReLU, 1 GELU tanh, 2 swish, 3 GELU, 4 GELU sigmoid, 5 tanh, 6 sigmoid), ...

Quantized weights: ``<name>`` int8 (or int16) with ``<name>_scale`` float32, one per output row
(int16: one for the tensor), written as ``round(w * scale)``: w = q / scale. Aliases name a
variable that was equal to an earlier one in alphabetical order (a tied projection points at
``decoder/embeddings/weight``); an alias's ``_scale`` is its target's ``_scale``.

Q/K/V are fused: self-attention ``linear_0`` is [Q; K; V] (3D rows), cross-attention
``linear_0`` is Q and ``linear_1`` [K; V]; the last linear is the output projection.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.importers.common import (
    BANNED_LOGIT,
    Imported,
    Refused,
    check_shape,
    positions_layout,
)

MAX_BINARY_VERSION = 6
DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
WIDTHS = {4: "float32", 2: "int16", 1: "int8"}  # binary versions 1-3: an item width, not a type
ACTIVATIONS = {0: "relu", 1: "gelu_tanh", 2: "swish", 3: "gelu"}
ACTIVATION_NAMES = {4: "GELU with a sigmoid (Marian's gelu)", 5: "tanh", 6: "sigmoid"}
TRANSFORMER_SPECS = {"TransformerSpec": None, "TransformerBase": 8, "TransformerBig": 16, "": 8}  # -> heads if fixed
CT2_LAYER_NORM_EPS = 1e-5  # a config.json without layer_norm_epsilon (measured, test_import.py)


@dataclass
class ModelBin:
    binary_version: int
    spec: str
    revision: int
    arrays: dict[str, np.ndarray]  # as stored: bfloat16 as uint16
    dtypes: dict[str, str]
    aliases: dict[str, str]


class _Cursor:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Refused(f"{self.path}: corrupt model.bin (truncated at byte {self.pos} of {len(self.data)})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        n = self.unpack("H")
        raw = self.take(n)
        if n == 0 or raw[-1] != 0:
            raise Refused(f"{self.path}: corrupt model.bin (a name without its NUL at byte {self.pos})")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise Refused(f"{self.path}: corrupt model.bin (a name is not UTF-8: {e})") from None


def read_model_bin(path: Path) -> ModelBin:
    """Every variable and alias of a model.bin (see the module docstring), values as stored."""
    cur = _Cursor(path.read_bytes(), path)
    version = cur.unpack("I")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise Refused(f"{path}: model.bin binary version {version} (this reader knows 1 to {MAX_BINARY_VERSION})")
    spec, revision = "", 1
    if version >= 2:
        spec, revision = cur.string(), cur.unpack("I")
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        rank = cur.unpack("B")
        shape = tuple(struct.unpack(f"<{rank}I", cur.take(4 * rank)))
        code = cur.unpack("B")
        if version >= 4:
            dtype, nbytes = DTYPES.get(code), cur.unpack("I")
            if dtype is None:
                raise Refused(f"{path}: variable {name} has an unknown data type {code}")
        else:
            dtype = WIDTHS.get(code)
            if dtype is None:
                raise Refused(f"{path}: variable {name} has an unknown item width {code}")
            nbytes = cur.unpack("I") * code
        storage = "uint16" if dtype == "bfloat16" else dtype
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(storage).itemsize
        if nbytes != expected:
            raise Refused(f"{path}: corrupt model.bin (variable {name}: {nbytes} bytes for shape {shape} {dtype})")
        arrays[name] = np.frombuffer(cur.take(nbytes), dtype=storage).reshape(shape)
        dtypes[name] = dtype
    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(cur.unpack("I")):
            alias = cur.string()
            aliases[alias] = cur.string()
    if cur.pos != len(cur.data):
        raise Refused(f"{path}: corrupt model.bin ({len(cur.data) - cur.pos} bytes after the last record)")
    return ModelBin(version, spec, revision, arrays, dtypes, aliases)


def _float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":  # the upper half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


class Variables:
    """A model.bin's variables by name, aliases resolved, weights dequantized to float32; records
    what was read, so that a variable nobody maps is refused instead of silently dropped."""

    def __init__(self, mb: ModelBin, path: Path) -> None:
        self.mb, self.path = mb, path
        self.used: set[str] = set()

    def dtype(self, name: str) -> str | None:
        target = self._target(name)
        return self.mb.dtypes[target] if target else None

    def _target(self, name: str) -> str | None:
        seen = set()
        while name in self.mb.aliases and name not in seen:
            seen.add(name)
            name = self.mb.aliases[name]
        if name in self.mb.arrays:
            return name
        return None

    def has(self, name: str) -> bool:
        return name in self.mb.arrays or name in self.mb.aliases

    def same(self, a: str, b: str) -> bool:
        """Whether two names are one stored variable (an alias) or equal values."""
        ta, tb = self._target(a), self._target(b)
        if ta is None or tb is None:
            return False
        if ta == tb:
            return True
        x, y = self.mb.arrays[ta], self.mb.arrays[tb]
        return x.dtype == y.dtype and x.shape == y.shape and bool(np.array_equal(x, y))

    def get(self, name: str) -> np.ndarray:
        """The float32 value of `name` (int8/int16 weights divided by their per-row scales)."""
        self.used.add(name)
        target = self._target(name)
        if target is None:
            raise Refused(f"{self.path}: no variable {name}")
        self.used.add(target)
        dtype = self.mb.dtypes[target]
        raw = self.mb.arrays[target]
        if dtype in ("int8", "int16"):
            scale_name = self._target(target + "_scale") or self._target(name + "_scale")
            if scale_name is None:
                raise Refused(f"{self.path}: {name} is {dtype} without a {name}_scale")
            self.used.update({scale_name, name + "_scale", target + "_scale"})
            scale = _float32(self.mb.arrays[scale_name], self.mb.dtypes[scale_name])
            if scale.ndim == 1 and raw.ndim >= 1 and scale.shape[0] == raw.shape[0]:
                scale = scale.reshape((-1,) + (1,) * (raw.ndim - 1))
            elif scale.size != 1:
                raise Refused(f"{self.path}: {name}_scale has shape {scale.shape} for a weight {raw.shape}")
            return raw.astype(np.float32) / scale
        if dtype == "int32":
            return raw.astype(np.float32)
        return _float32(raw, dtype)

    def scalar(self, name: str, default: Any = None) -> Any:
        """A rank-0 option (a Python number), or `default` when absent."""
        target = self._target(name)
        if target is None:
            return default
        self.used.update({name, target})
        value = _float32(self.mb.arrays[target], self.mb.dtypes[target])
        if value.size != 1:
            raise Refused(f"{self.path}: {name} should be a scalar, has shape {value.shape}")
        return float(value.reshape(()))

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.scalar(name)
        return default if value is None else bool(value)

    def string(self, name: str) -> str | None:
        """A string option (stored as int8 bytes), or None."""
        target = self._target(name)
        if target is None:
            return None
        self.used.update({name, target})
        return self.mb.arrays[target].astype(np.uint8).tobytes().decode("utf-8", "replace")

    def unused(self) -> list[str]:
        return sorted(n for n in set(self.mb.arrays) | set(self.mb.aliases) if n not in self.used)


def read_vocabulary_file(path: Path) -> list[str]:
    if path.suffix == ".json":
        tokens = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise Refused(f"{path}: a vocabulary must be a JSON list of strings")
        return tokens
    lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: a token may be U+2028
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_vocabularies(model_dir: Path) -> tuple[list[str], list[str]]:
    """(source, target) tokens: shared_vocabulary.{json,txt}, or source_/target_vocabulary."""

    def find(stem: str) -> Path | None:
        for ext in (".json", ".txt"):
            if (model_dir / f"{stem}{ext}").is_file():
                return model_dir / f"{stem}{ext}"
        return None

    if find("source_1_vocabulary") or find("source_2_vocabulary"):
        raise Refused(f"{model_dir}: several source vocabularies (source features) are not supported")
    shared = find("shared_vocabulary")
    if shared:
        tokens = read_vocabulary_file(shared)
        return tokens, tokens
    source, target = find("source_vocabulary"), find("target_vocabulary")
    if not source or not target:
        raise Refused(f"{model_dir}: no vocabulary (shared_vocabulary.json/.txt or source_/target_vocabulary)")
    return read_vocabulary_file(source), read_vocabulary_file(target)


def read_ct2(model_dir: Path) -> Imported:
    """A CTranslate2 Transformer (encoder-decoder) model directory as an `Imported`; refuses
    what our Transformer cannot compute, naming it."""
    model_dir = Path(model_dir)
    bin_path = model_dir / "model.bin"
    if not bin_path.is_file():
        raise Refused(f"{model_dir}: no model.bin (not a CTranslate2 model directory)")
    mb = read_model_bin(bin_path)
    if mb.spec not in TRANSFORMER_SPECS:
        raise Refused(
            f"{model_dir}: model type {mb.spec!r}: only encoder-decoder Transformers (TransformerSpec) can be imported"
        )
    config: dict[str, Any] = {}
    if (model_dir / "config.json").is_file():
        try:
            config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise Refused(f"{model_dir / 'config.json'}: not JSON ({e})") from None
    v = Variables(mb, bin_path)
    source_vocab, target_vocab = read_vocabularies(model_dir)
    imp = _map_transformer(v, mb, config, source_vocab, target_vocab, model_dir)
    left = v.unused()
    if left:
        raise Refused(f"{model_dir}: variables this importer cannot map (unsupported features): {', '.join(left[:12])}")
    imp.info.update(
        {
            "format": "CTranslate2",
            "model_bin": {"binary_version": mb.binary_version, "spec": mb.spec, "revision": mb.revision},
            "weight_types": sorted(set(mb.dtypes.values())),
        }
    )
    return imp


def _refuse_features(v: Variables, model_dir: Path) -> None:
    names = set(v.mb.arrays) | set(v.mb.aliases)
    features = {
        "relative_position_keys": "relative position representations",
        "relative_attention_bias": "relative attention bias (T5)",
        "relative_asymmetric_position_keys": "relative asymmetric positions",
        "rotary_dim": "rotary position embeddings",
        "num_heads_kv": "multi-query / grouped-query attention",
        "head_dim": "a head size other than d_model / heads",
        "q_norm": "query/key normalization",
        "v_norm": "value normalization",
        "linear_0_noact": "a gated (GLU) feed-forward network",
        "input_layer_norm": "extra layer norms around each sub-layer",
        "shared_layer_norm": "parallel residual blocks",
        "project_in": "input/output projections around the decoder",
        "memory_kv": "merged encoder attention",
        "queries_scale": "a custom query scale",
        "layer_norm_use_residual": "RMS normalization",
        "sliding_window": "sliding-window attention",
        "weight_zero": "AWQ / grouped low-bit quantization",
        "layer_scalar": "per-layer output scalars",
    }
    for name in sorted(names):
        leaf = name.rsplit("/", 1)[-1]
        if leaf in features:
            raise Refused(f"{model_dir}: unsupported feature: {features[leaf]} ({name})")
    if v.flag("decoder/alibi"):
        raise Refused(f"{model_dir}: unsupported feature: ALiBi attention biases (decoder/alibi)")
    for flag in ("decoder/alibi_use_positive_positions", "decoder/scale_alibi"):
        v.flag(flag)
    if v.flag("encoder/multi_query_attention"):
        raise Refused(f"{model_dir}: unsupported feature: multi-query attention")
    if any(n.startswith("encoder/embeddings_1/") for n in names):
        raise Refused(f"{model_dir}: unsupported feature: several source embeddings (source features)")
    if v.has("encoder/layer_norm/gamma") and not v.has("encoder/layer_norm/beta"):
        raise Refused(f"{model_dir}: unsupported feature: RMS normalization (a layer norm without beta)")


def _map_transformer(
    v: Variables,
    mb: ModelBin,
    config: dict[str, Any],
    source_vocab: list[str],
    target_vocab: list[str],
    model_dir: Path,
) -> Imported:
    _refuse_features(v, model_dir)
    enc_embed_name = (
        "encoder/embeddings_0/weight" if v.has("encoder/embeddings_0/weight") else "encoder/embeddings/weight"
    )
    source_embed = v.get(enc_embed_name)
    target_embed = v.get("decoder/embeddings/weight")
    d = source_embed.shape[1]
    names = set(mb.arrays) | set(mb.aliases)

    def count(stack: str) -> int:
        return len(
            {n.split("/")[1] for n in names if n.startswith(f"{stack}/layer_") and n.split("/")[1][6:].isdigit()}
        )

    n_enc, n_dec = count("encoder"), count("decoder")
    if n_enc == 0 or n_dec == 0:
        raise Refused(f"{model_dir}: {n_enc} encoder and {n_dec} decoder layers: not an encoder-decoder Transformer")
    fixed_heads = TRANSFORMER_SPECS[mb.spec]
    heads = v.scalar("encoder/num_heads", fixed_heads)
    dec_heads = v.scalar("decoder/num_heads", heads)
    if heads is None or dec_heads != heads:
        raise Refused(f"{model_dir}: encoder heads {heads} and decoder heads {dec_heads}: must be equal and known")
    heads = int(heads)
    if d % heads:
        raise Refused(f"{model_dir}: d_model {d} is not a multiple of {heads} heads")

    pre = v.flag("encoder/pre_norm", True), v.flag("decoder/pre_norm", True)
    if pre[0] != pre[1]:
        raise Refused(f"{model_dir}: a pre-norm encoder with a post-norm decoder (or the reverse)")
    pre_norm = pre[0]
    acts = [int(v.scalar(f"{s}/activation", 0)) for s in ("encoder", "decoder")]
    for code in acts:
        if code not in ACTIVATIONS:
            raise Refused(f"{model_dir}: unsupported feature: activation {ACTIVATION_NAMES.get(code, code)}")
    if acts[0] != acts[1]:
        raise Refused(f"{model_dir}: encoder and decoder activations differ ({acts})")
    merge = v.scalar("encoder/embeddings_merge", 0)
    del merge  # one source embedding: how several would merge does not matter

    # embedding scale: a boolean (sqrt(D)) or a float factor (Marian's converters), or the
    # older per-embedding flag multiply_by_sqrt_depth; models older than both always scaled
    factors = []
    for stack, emb in (("encoder", enc_embed_name.rsplit("/", 1)[0]), ("decoder", "decoder/embeddings")):
        name = f"{stack}/scale_embeddings"
        if not v.has(name):
            name = f"{emb}/multiply_by_sqrt_depth"
        value = v.scalar(name, 1.0)
        factors.append(float(value) if v.dtype(name) == "float32" else (float(np.sqrt(d)) if value else 1.0))
    scaled = [bool(np.isclose(f, np.sqrt(d), rtol=1e-5, atol=0)) for f in factors]
    if factors[0] != factors[1] or not (scaled[0] or factors[0] == 1.0):
        raise Refused(
            f"{model_dir}: unsupported feature: embedding scales {factors} "
            "(sqrt(d_model) or 1, the same in both stacks)"
        )
    scale_embeddings = scaled[0]

    embedding_norm = v.has("encoder/layernorm_embedding/gamma")
    if embedding_norm != v.has("decoder/layernorm_embedding/gamma"):
        raise Refused(f"{model_dir}: a layer norm of the embeddings in one stack only")
    if v.scalar("decoder/scale_outputs") not in (None, 1.0):
        raise Refused(f"{model_dir}: unsupported feature: scaled decoder outputs (decoder/scale_outputs)")
    if v.scalar("decoder/final_logit_softcapping") not in (None, 0.0):
        raise Refused(f"{model_dir}: unsupported feature: logit soft-capping")
    align = v.scalar("decoder/alignment_layer", -1), v.scalar("decoder/alignment_heads", 1)
    if align != (-1.0, 1.0):
        raise Refused(
            f"{model_dir}: unsupported feature: trained alignment (alignment_layer {align[0]:g}, "
            f"alignment_heads {align[1]:g}); this service aligns with its own decoder layer"
        )
    zero_start = v.flag("decoder/start_from_zero_embedding", False)

    w: dict[str, np.ndarray] = {}

    def linear(ours: str, theirs: str, rows: int, cols: int) -> None:
        w[f"{ours}.weight"] = check_shape(f"{theirs}/weight", v.get(f"{theirs}/weight"), (rows, cols))
        bias = v.get(f"{theirs}/bias") if v.has(f"{theirs}/bias") else np.zeros(rows, np.float32)
        w[f"{ours}.bias"] = check_shape(f"{theirs}/bias", bias, (rows,))

    def split(ours: list[str], theirs: str, parts: int) -> None:
        weight = v.get(f"{theirs}/weight")
        if weight.shape != (parts * d, d):
            raise Refused(
                f"{model_dir}: {theirs}/weight has shape {weight.shape}, expected {(parts * d, d)}: "
                "unsupported feature: multi-query / grouped attention or another head size"
            )
        bias = v.get(f"{theirs}/bias") if v.has(f"{theirs}/bias") else np.zeros(parts * d, np.float32)
        check_shape(f"{theirs}/bias", bias, (parts * d,))
        for i, name in enumerate(ours):
            w[f"{name}.weight"] = weight[i * d : (i + 1) * d]
            w[f"{name}.bias"] = bias[i * d : (i + 1) * d]

    def norm(ours: str, theirs: str) -> None:
        if not v.has(f"{theirs}/beta"):
            raise Refused(f"{model_dir}: unsupported feature: RMS normalization ({theirs} has no beta)")
        w[f"{ours}.weight"] = check_shape(f"{theirs}/gamma", v.get(f"{theirs}/gamma"), (d,))
        w[f"{ours}.bias"] = check_shape(f"{theirs}/beta", v.get(f"{theirs}/beta"), (d,))

    d_ff = v.get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    for i in range(n_enc):
        p, q = f"encoder.layers.{i}", f"encoder/layer_{i}"
        split([f"{p}.self_attn.{x}_proj" for x in "qkv"], f"{q}/self_attention/linear_0", 3)
        linear(f"{p}.self_attn.out_proj", f"{q}/self_attention/linear_1", d, d)
        norm(f"{p}.attn_block.norm", f"{q}/self_attention/layer_norm")
        linear(f"{p}.ffn.linear1", f"{q}/ffn/linear_0", d_ff, d)
        linear(f"{p}.ffn.linear2", f"{q}/ffn/linear_1", d, d_ff)
        norm(f"{p}.ffn_block.norm", f"{q}/ffn/layer_norm")
    for i in range(n_dec):
        p, q = f"decoder.layers.{i}", f"decoder/layer_{i}"
        split([f"{p}.self_attn.{x}_proj" for x in "qkv"], f"{q}/self_attention/linear_0", 3)
        linear(f"{p}.self_attn.out_proj", f"{q}/self_attention/linear_1", d, d)
        norm(f"{p}.self_block.norm", f"{q}/self_attention/layer_norm")
        if not v.has(f"{q}/attention/linear_0/weight"):
            raise Refused(f"{model_dir}: decoder layer {i} has no encoder attention: not an encoder-decoder model")
        linear(f"{p}.cross_attn.q_proj", f"{q}/attention/linear_0", d, d)
        split([f"{p}.cross_attn.k_proj", f"{p}.cross_attn.v_proj"], f"{q}/attention/linear_1", 2)
        linear(f"{p}.cross_attn.out_proj", f"{q}/attention/linear_2", d, d)
        norm(f"{p}.cross_block.norm", f"{q}/attention/layer_norm")
        linear(f"{p}.ffn.linear1", f"{q}/ffn/linear_0", d_ff, d)
        linear(f"{p}.ffn.linear2", f"{q}/ffn/linear_1", d, d_ff)
        norm(f"{p}.ffn_block.norm", f"{q}/ffn/layer_norm")
    for stack in ("encoder", "decoder"):
        if pre_norm:
            if not v.has(f"{stack}/layer_norm/gamma"):
                raise Refused(f"{model_dir}: unsupported feature: a pre-norm {stack} without a final layer norm")
            norm(f"{stack}.norm", f"{stack}/layer_norm")
        if embedding_norm:
            norm(f"{stack}.embed_norm", f"{stack}/layernorm_embedding")

    # positions: each stack's table (row p = position p), or CTranslate2's own sinusoids
    tables = []
    for stack in ("encoder", "decoder"):
        name = f"{stack}/position_encodings/encodings"
        tables.append(v.get(name) if v.has(name) else None)
    if tables[0] is None and tables[1] is None:
        positions, max_positions = "ct2-default", 0  # build.finalize computes CTranslate2's sinusoids
        encoder_pe = decoder_pe = None
    elif tables[0] is None or tables[1] is None:
        raise Refused(f"{model_dir}: a position table in one stack only")
    else:
        for t in tables:
            check_shape("position_encodings/encodings", t, (t.shape[0], d))
        layouts = {positions_layout(t) for t in tables}
        positions = layouts.pop() if len(layouts) == 1 else "table"
        max_positions = min(t.shape[0] for t in tables)
        encoder_pe, decoder_pe = tables
    info: dict[str, Any] = {"positions_source": "model.bin tables" if tables[0] is not None else "ctranslate2 default"}

    # the output projection: tied to the decoder embedding when it is the same variable
    tied = v.same("decoder/projection/weight", "decoder/embeddings/weight")
    output_weight = None if tied else v.get("decoder/projection/weight")
    v.get("decoder/projection/weight")  # read (an alias or equal values): mapped either way
    vt = target_embed.shape[0]
    if output_weight is not None:
        check_shape("decoder/projection/weight", output_weight, (vt, d))
    output_bias = v.get("decoder/projection/bias") if v.has("decoder/projection/bias") else None
    if output_bias is not None:
        check_shape("decoder/projection/bias", output_bias, (vt,))
    shared = v.same(enc_embed_name, "decoder/embeddings/weight")
    if shared:
        source_embed = target_embed

    # vocabularies and the config's tokens
    if len(source_vocab) != source_embed.shape[0]:
        raise Refused(
            f"{model_dir}: source vocabulary has {len(source_vocab)} tokens, the model's source embedding "
            f"{source_embed.shape[0]} rows (a vocabulary of the wrong size)"
        )
    if len(target_vocab) != vt:
        raise Refused(
            f"{model_dir}: target vocabulary has {len(target_vocab)} tokens, the model's target embedding "
            f"{vt} rows (a vocabulary of the wrong size)"
        )
    unk = config.get("unk_token", "<unk>")
    bos = config.get("bos_token", "<s>")
    eos = config.get("eos_token", "</s>")
    start = config.get("decoder_start_token", bos) if "decoder_start_token" in config else bos
    if start is None:
        raise Refused(f"{model_dir}: decoder_start_token is null (the model needs a target prefix): not supported")
    index = {t: i for i, t in enumerate(target_vocab)}
    if eos not in index:
        raise Refused(f"{model_dir}: the end token {eos!r} is not in the target vocabulary")
    if not zero_start and start not in index:
        raise Refused(f"{model_dir}: the decoder start token {start!r} is not in the target vocabulary")
    eps = config.get("layer_norm_epsilon")
    if eps is None:
        eps = CT2_LAYER_NORM_EPS
    return Imported(
        d_model=d,
        n_heads=heads,
        d_ff=d_ff,
        n_encoder_layers=n_enc,
        n_decoder_layers=n_dec,
        pre_norm=pre_norm,
        activation=ACTIVATIONS[acts[0]],
        layer_norm_eps=float(eps),
        scale_embeddings=scale_embeddings,
        embedding_norm=embedding_norm,
        positions=positions,
        encoder_pe=encoder_pe,
        decoder_pe=decoder_pe,
        source_embed=source_embed,
        target_embed=target_embed,
        output_weight=output_weight,
        output_bias=output_bias,
        weights=w,
        source_vocab=source_vocab,
        target_vocab=target_vocab,
        bos_id=index.get(start, -1),
        eos_id=index[eos],
        pad_id=None,
        unk_piece=unk,
        bos_piece=bos,
        eos_piece=eos,
        add_source_bos=bool(config.get("add_source_bos", False)),
        add_source_eos=bool(config.get("add_source_eos", False)),
        zero_start=zero_start,
        max_positions=max_positions,
        info=info,
    )


__all__ = ["BANNED_LOGIT", "ModelBin", "Variables", "read_ct2", "read_model_bin", "read_vocabularies"]
