"""The translation graphs, written node by node with onnxruntime's fused attention.

``torch.onnx.export`` of one decoding step gives ~200 small nodes per step: per-head reshapes
and transposes, a separate QK^T, mask, softmax and AV per attention, and (with stacked caches)
Split/Gather/Concat copies of every layer's keys and values. Here the same computation is
built directly from the checkpoint's weights, one ``com.microsoft.MultiHeadAttention`` node per
attention (scaling, masking, softmax, AV and the cache append in one kernel), one Q/K/V matrix
multiply per self-attention, and every layer's caches as their own inputs and outputs, so
nothing is sliced or stacked. The encoder is built the same way (the traced one spends a third
of its time outside its matrix multiplies: ~380 nodes of shape arithmetic, per-head reshapes and
transposes): one fused attention node per layer, and every decoder layer's cross-attention keys
and values from one matrix multiply. The export checks both against PyTorch like any other graph.

Decoder step (L decoder layers, N heads, H = head size, D = N * H):
    inputs   input_ids (B, 1) int64, position (B,) int64, src_mask (B, S) bool,
             self_mask (B, P + 1) bool, past_k.{i}, past_v.{i} (B, N, P, H),
             cross_k.{i}, cross_v.{i} (B, N, S, H)
    outputs  logits (B, V), present_k.{i}, present_v.{i} (B, N, P + 1, H),
             align_query.{L} (B, D): the query of layer L's cross-attention, from which the
             engine computes where the step looked in the source when it wants to know
Encoder:
    inputs   src_ids (B, S) int64
    outputs  cross_k.0, cross_v.0, cross_k.1, ... (B, N, S, H)

Every option of ``TransformerConfig`` is written out: the FFN's activation (Relu;
com.microsoft Gelu for the exact GELU, FastGelu for its tanh form; Sigmoid and Mul for swish),
every LayerNormalization's epsilon, embeddings with or without the sqrt(D) scale and the
embedding LayerNorm, each stack's own embedding matrix and positions table (whatever layout:
the model's own ``pe`` buffers), pre- or post-norm, and the output projection tied to the
decoder's embedding or a matrix of its own, with or without a bias. Options at their defaults
add no node: those graphs are the same, byte for byte, as before the options existed. The
embeddings stay Gathers of initializers and every product a MatMul of an initializer, so
training/export.py quantizes them all alike.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.runtime.graph_io import (
    ALIGNMENT,
    INPUT_IDS,
    LOGITS,
    POSITION,
    SELF_MASK,
    SRC_IDS,
    SRC_MASK,
    align_query,
    cross,
    past,
    present,
)
from training.transformer import Seq2SeqTransformer

OPSET = 17
MS_DOMAIN = "com.microsoft"
MS_OPS = ("MultiHeadAttention", "GroupQueryAttention", "Gelu", "FastGelu")  # onnxruntime's contrib ops used
LN_EPS = 1e-5  # nn.LayerNorm's default, the model's unless its config says otherwise (layer_norm_eps)


class _Builder:
    def __init__(self, ln_eps: float = LN_EPS) -> None:
        self.ln_eps = float(ln_eps)  # every LayerNormalization's epsilon (a float attribute)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        # Every tensor's element type, written into the graph: ONNX shape inference stops at the
        # contrib attention op, and onnxruntime's quantizers need the types beyond it.
        self.types: dict[str, int] = {}
        self._n = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        out: list[str] | None = None,
        dtype: int = TensorProto.FLOAT,
        **attrs,
    ) -> list[str]:
        self._n += 1
        outputs = out or [f"{op_type.lower()}_{self._n}_{k}" for k in range(n_out)]
        self.types.update(dict.fromkeys(outputs, dtype))
        domain = MS_DOMAIN if op_type in MS_OPS else ""
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{self._n}", domain=domain, **attrs)
        )
        return outputs

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str, out: str | None = None) -> str:
        """x @ weight.T (+ bias): weight as torch stores it, (out, in); `out` names the result."""
        named = [out] if out else None
        product = self.const(f"{name}.weight_t", weight.T)
        (y,) = self.op("MatMul", [x, product], out=named if bias is None else None)
        if bias is not None:
            (y,) = self.op("Add", [y, self.const(f"{name}.bias", bias)], out=named)
        return y

    def layer_norm(self, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
        return self.op(
            "LayerNormalization",
            [x, self.const(f"{name}.weight", weight), self.const(f"{name}.bias", bias)],
            axis=-1,
            epsilon=self.ln_eps,
        )[0]


def _kv_spec(name: str, n_heads: int, d_head: int, length: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n_heads, length, d_head])


def _model(g: _Builder, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
    declared = {v.name for v in inputs + outputs}
    value_info = [helper.make_tensor_value_info(n, t, None) for n, t in g.types.items() if n not in declared]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits, value_info=value_info)
    model_proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="transerve",
        ir_version=9,  # what onnxruntime 1.2x reads
    )
    onnx.checker.check_model(model_proto)
    return model_proto


class _Residual:
    """The residual stream of a stack of sub-layers. Post-LN: x <- LN(x + f(x)); pre-LN:
    x <- x + f(LN(x)), and a final LayerNorm. (Fusing each Add with the LayerNorm after it into
    onnxruntime's ``SkipLayerNormalization`` was measured slower on CPU: BENCHMARKS.md.)"""

    def __init__(self, g: _Builder, w: dict[str, np.ndarray], pre_norm: bool, x: str) -> None:
        self.g, self.w, self.pre_norm, self.x = g, w, pre_norm, x

    def _norm(self, x: str, prefix: str) -> str:
        return self.g.layer_norm(x, self.w[f"{prefix}.weight"], self.w[f"{prefix}.bias"], prefix)

    def sublayer(self, prefix: str, f) -> None:
        if self.pre_norm:
            self.x = self.g.op("Add", [self.x, f(self._norm(self.x, f"{prefix}.norm"))])[0]
        else:
            self.x = self._norm(self.g.op("Add", [self.x, f(self.x)])[0], f"{prefix}.norm")

    def output(self, final_norm: str) -> str:
        """The stack's output: LN(stream) with the final norm (pre-LN), else the stream."""
        return self._norm(self.x, final_norm) if self.pre_norm else self.x


def _weights(model: Seq2SeqTransformer) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def _packed_qkv(w: dict[str, np.ndarray], a: str) -> tuple[np.ndarray, np.ndarray]:
    """Self-attention `a`'s Q, K and V projections stacked: weight (3D, D), bias (3D,)."""
    return (
        np.concatenate([w[f"{a}.{t}_proj.weight"] for t in "qkv"]),
        np.concatenate([w[f"{a}.{t}_proj.bias"] for t in "qkv"]),
    )


def _self_attention_inputs(
    g: _Builder, w: dict[str, np.ndarray], a: str, hid: str, d: int, seq_axis: str | None = None
) -> list[str]:
    """Self-attention `a`'s Q, K and V projections as one matmul, split apart, and their packed
    bias (which MultiHeadAttention adds itself): [q, k, v, bias]. `seq_axis` first inserts the
    sequence axis the attention op wants (a decoder step's hidden state is 2-D)."""
    qkv_w, qkv_b = _packed_qkv(w, a)
    qkv = g.linear(hid, qkv_w, None, f"{a}.qkv")
    if seq_axis is not None:
        (qkv,) = g.op("Unsqueeze", [qkv, seq_axis])
    q, k, v = g.op("Split", [qkv, g.const(f"{a}.split", np.array([d, d, d], np.int64))], n_out=3, axis=-1)
    return [q, k, v, g.const(f"{a}.qkv_bias", qkv_b)]


def _activation(g: _Builder, x: str, name: str) -> str:
    """The FFN's activation `name` (training.transformer.ACTIVATIONS) of `x`."""
    if name == "relu":
        return g.op("Relu", [x])[0]
    if name == "gelu":  # x * Phi(x), with erf: torch's F.gelu
        return g.op("Gelu", [x])[0]
    if name == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): F.gelu(approximate="tanh")
        return g.op("FastGelu", [x])[0]
    if name == "swish":  # x * sigmoid(x): F.silu
        (gate,) = g.op("Sigmoid", [x])
        return g.op("Mul", [x, gate])[0]
    raise ValueError(f"activation {name!r} has no graph")


def _ffn(g: _Builder, w: dict[str, np.ndarray], hid: str, f: str, activation: str = "relu") -> str:
    up = g.linear(hid, w[f"{f}.linear1.weight"], w[f"{f}.linear1.bias"], f"{f}.linear1")
    up = _activation(g, up, activation)
    return g.linear(up, w[f"{f}.linear2.weight"], w[f"{f}.linear2.bias"], f"{f}.linear2")


def _positions(model: Seq2SeqTransformer, stack: str) -> np.ndarray:
    """Stack `stack`'s positions table (max_len, D): the model's own buffer, whatever its layout."""
    return getattr(model, stack).pos.pe.detach().float().cpu().numpy().astype(np.float32)


def build_encoder(model: Seq2SeqTransformer) -> onnx.ModelProto:
    """The encoder (eval mode) and every decoder layer's cross-attention keys and values."""
    cfg = model.cfg
    w = _weights(model)
    pe = _positions(model, "encoder")
    g = _Builder(cfg.layer_norm_eps)
    n, h, d, ld = cfg.n_heads, cfg.d_head, cfg.d_model, cfg.n_decoder_layers

    (is_pad,) = g.op("Equal", [SRC_IDS, g.const("pad_id", np.array(cfg.pad_id, np.int64))], dtype=TensorProto.BOOL)
    (real,) = g.op("Not", [is_pad], dtype=TensorProto.BOOL)
    (key_mask,) = g.op("Cast", [real], to=TensorProto.INT32, dtype=TensorProto.INT32)  # (B, S), 1 = real token
    # Embedding * sqrt(D) + the positional encodings of positions 0..S-1 (the source embedding:
    # the one matrix when shared).
    (x,) = g.op("Gather", [g.const("embedding", w["encoder.embed.embedding.weight"]), SRC_IDS])  # (B, S, D)
    if cfg.scale_embeddings:  # (the Mul before the Shape, where the graphs always had it)
        (x,) = g.op("Mul", [x, g.const("embed_scale", np.array(math.sqrt(d), np.float32))])
    (src_len,) = g.op("Shape", [SRC_IDS], start=1, end=2, dtype=TensorProto.INT64)
    zero = g.const("zero", np.array([0], np.int64))
    (pos,) = g.op("Slice", [g.const("positional_encoding", pe), zero, src_len, zero])  # (S, D)
    (x,) = g.op("Add", [x, pos])
    if cfg.embedding_norm:
        x = g.layer_norm(x, w["encoder.embed_norm.weight"], w["encoder.embed_norm.bias"], "encoder.embed_norm")

    stream = _Residual(g, w, cfg.pre_norm, x)
    for i in range(cfg.n_encoder_layers):
        p = f"encoder.layers.{i}"

        def self_attention(hid: str, a: str = f"{p}.self_attn") -> str:
            q, k, v, bias = _self_attention_inputs(g, w, a, hid, d)
            (ctx,) = g.op("MultiHeadAttention", [q, k, v, bias, key_mask], num_heads=n)
            return g.linear(ctx, w[f"{a}.out_proj.weight"], w[f"{a}.out_proj.bias"], f"{a}.out")

        stream.sublayer(f"{p}.attn_block", self_attention)
        stream.sublayer(f"{p}.ffn_block", lambda hid, p=p: _ffn(g, w, hid, f"{p}.ffn", cfg.activation))
    x = stream.output("encoder.norm")

    # Every decoder layer's cross-attention keys and values in one product: (B, S, 2 L D) ->
    # (B, S, 2L, N, H) -> (2L, B, N, S, H) -> one (B, N, S, H) output each.
    a = [f"decoder.layers.{i}.cross_attn.{t}_proj" for i in range(ld) for t in "kv"]
    kv_w, kv_b = (np.concatenate([w[f"{proj}.{t}"] for proj in a]) for t in ("weight", "bias"))
    kv = g.linear(x, kv_w, kv_b, "cross_kv")
    (kv,) = g.op("Reshape", [kv, g.const("cross_kv.shape", np.array([0, 0, 2 * ld, n, h], np.int64))])
    (kv,) = g.op("Transpose", [kv], perm=[2, 0, 3, 1, 4])
    names = [cross(t, i) for i in range(ld) for t in "kv"]
    parts = g.op("Split", [kv, g.const("cross_kv.split", np.ones(2 * ld, np.int64))], n_out=2 * ld, axis=0)
    axis0 = g.const("axis0", np.array([0], np.int64))
    for part, name in zip(parts, names):
        g.op("Squeeze", [part, axis0], out=[name])

    inputs = [helper.make_tensor_value_info(SRC_IDS, TensorProto.INT64, ["batch", "src_len"])]
    outputs = [_kv_spec(name, n, h, "src_len") for name in names]
    return _model(g, "encoder", inputs, outputs)


def align_layer(n_layers: int) -> int:
    """The decoder layer whose cross-attention gives the `alignment` output: the one before
    the last (the penultimate layer's attention aligns best in models trained without
    alignment supervision, Garg et al. 2019; measured on tagged HTML: docs/training.md)."""
    return max(n_layers - 2, 0)


def build_decoder_step(
    model: Seq2SeqTransformer,
    alignment_layer: int | None = None,
    static_cache: bool = True,
    alignment_in_graph: bool = False,
) -> onnx.ModelProto:
    """One greedy decoding step of `model` (eval mode: no dropout) as an ONNX model. Besides the
    logits and caches it outputs `align_query.{L}`, the query of the cross-attention of layer L
    = `alignment_layer` (default `align_layer`): with that layer's `cross_k.{L}` the engine
    computes where the step looked in the source (service/html.py carries inline markup by it),
    in the one pass that asks (the fused attention kernel does not expose its weights). Older
    graphs computed those weights themselves, at a cost to every step (BENCHMARKS.md section 9):
    `alignment_in_graph` still builds that form (the `alignment` output; tests of old bundles).

    `static_cache` (graph contract 3, the default): each self-attention is one
    `GroupQueryAttention` over fixed-width caches that the step writes in place at each row's
    `position` (the engine binds past and present to one buffer); else (contract 2) a
    `MultiHeadAttention` that appends to caches one slot longer every step, with `self_mask`."""
    cfg = model.cfg
    layer_of_alignment = align_layer(cfg.n_decoder_layers) if alignment_layer is None else alignment_layer
    w = _weights(model)
    pe = _positions(model, "decoder")
    g = _Builder(cfg.layer_norm_eps)
    n, h, d = cfg.n_heads, cfg.d_head, cfg.d_model

    # Embedding * sqrt(D) + the positional encoding of each row's own position (the target
    # embedding: the one matrix when shared).
    emb = w["decoder.embed.embedding.weight"]
    # Hidden states are 2-D (B, D) between attentions: one position per step, and 2-D
    # MatMul + Add fuse into one Gemm-like kernel where 3-D ones do not.
    axis1 = g.const("axis1", np.array([1], np.int64))
    (ids,) = g.op("Squeeze", [INPUT_IDS, axis1], dtype=TensorProto.INT64)  # (B,)
    (x,) = g.op("Gather", [g.const("embedding", emb), ids])  # (B, D)
    if cfg.scale_embeddings:
        (x,) = g.op("Mul", [x, g.const("embed_scale", np.array(math.sqrt(d), np.float32))])
    (pos,) = g.op("Gather", [g.const("positional_encoding", pe), POSITION])  # (B, D)
    (x,) = g.op("Add", [x, pos])
    if cfg.embedding_norm:
        x = g.layer_norm(x, w["decoder.embed_norm.weight"], w["decoder.embed_norm.bias"], "decoder.embed_norm")
    (key_mask,) = g.op("Cast", [SRC_MASK], to=TensorProto.INT32, dtype=TensorProto.INT32)  # 1 = a real source token
    if static_cache:
        # GroupQueryAttention's per-row lengths: a row attends to its slots 0..position (the
        # one this step writes included), in a buffer as wide as the longest row needs
        (seqlens,) = g.op("Cast", [POSITION], to=TensorProto.INT32, dtype=TensorProto.INT32)
        (longest,) = g.op("ReduceMax", [seqlens], keepdims=0, dtype=TensorProto.INT32)
        (total,) = g.op("Add", [longest, g.const("one_int32", np.array(1, np.int32))], dtype=TensorProto.INT32)
    else:
        # 1 = a cache slot of this row (a row that joined a running batch late has masked slots first)
        (self_key_mask,) = g.op("Cast", [SELF_MASK], to=TensorProto.INT32, dtype=TensorProto.INT32)  # (B, P + 1)

    stream = _Residual(g, w, cfg.pre_norm, x)

    for i in range(cfg.n_decoder_layers):
        p = f"decoder.layers.{i}"

        def self_attention(hid: str, p: str = p, i: int = i) -> str:
            a = f"{p}.self_attn"
            outs = [f"{a}.context", present("k", i), present("v", i)]  # context, then the caches
            if static_cache:
                # packed Q|K|V (B, 1, 3D), biases added by the product (GroupQueryAttention has no bias input)
                (qkv,) = g.op("Unsqueeze", [g.linear(hid, *_packed_qkv(w, a), f"{a}.qkv"), axis1])
                (ctx, _, _) = g.op(
                    "GroupQueryAttention",
                    [qkv, "", "", past("k", i), past("v", i), seqlens, total],
                    out=outs,
                    num_heads=n,
                    kv_num_heads=n,
                )
            else:
                q, k, v, bias = _self_attention_inputs(g, w, a, hid, d, seq_axis=axis1)  # (B, 1, D) each
                (ctx, _, _) = g.op(
                    "MultiHeadAttention",
                    [q, k, v, bias, self_key_mask, "", past("k", i), past("v", i)],
                    out=outs,
                    num_heads=n,
                )
            (ctx,) = g.op("Squeeze", [ctx, axis1])
            return g.linear(ctx, w[f"{a}.out_proj.weight"], w[f"{a}.out_proj.bias"], f"{a}.out")

        def cross_attention(hid: str, p: str = p, i: int = i) -> str:
            a = f"{p}.cross_attn"
            q = g.linear(hid, w[f"{a}.q_proj.weight"], w[f"{a}.q_proj.bias"], f"{a}.q")
            if i == layer_of_alignment and alignment_in_graph:
                _alignment(g, q, cross("k", i), n, h)
            elif i == layer_of_alignment:  # the engine computes this layer's attention weights from it
                g.op("Identity", [q], out=[align_query(i)])
            (q,) = g.op("Unsqueeze", [q, axis1])
            (ctx,) = g.op("MultiHeadAttention", [q, cross("k", i), cross("v", i), "", key_mask], num_heads=n)
            (ctx,) = g.op("Squeeze", [ctx, axis1])
            return g.linear(ctx, w[f"{a}.out_proj.weight"], w[f"{a}.out_proj.bias"], f"{a}.out")

        def ffn(hid: str, p: str = p) -> str:
            return _ffn(g, w, hid, f"{p}.ffn", cfg.activation)

        stream.sublayer(f"{p}.self_block", self_attention)
        stream.sublayer(f"{p}.cross_block", cross_attention)
        stream.sublayer(f"{p}.ffn_block", ffn)

    x = stream.output("decoder.norm")
    # tied to the decoder's embedding (its own transposed copy: the embedding is a Gather's
    # table, quantized apart) or a matrix of its own; with the logits bias when there is one
    if cfg.tie_output:
        g.linear(x, emb, w.get("output_bias"), "output_projection", out=LOGITS)
    else:
        g.linear(x, w["output.weight"], w.get("output.bias"), "output_projection", out=LOGITS)

    inputs = [
        helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", 1]),
        helper.make_tensor_value_info(POSITION, TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info(SRC_MASK, TensorProto.BOOL, ["batch", "src_len"]),
    ]
    if not static_cache:
        inputs.append(helper.make_tensor_value_info(SELF_MASK, TensorProto.BOOL, ["batch", "present_len"]))
    past_len, present_len = ("cache_len", "cache_len") if static_cache else ("past_len", "present_len")
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", cfg.vocab_size])]
    for i in range(cfg.n_decoder_layers):
        inputs += [_kv_spec(past(t, i), n, h, past_len) for t in "kv"]
        outputs += [_kv_spec(present(t, i), n, h, present_len) for t in "kv"]
    for i in range(cfg.n_decoder_layers):
        inputs += [_kv_spec(cross(t, i), n, h, "src_len") for t in "kv"]
    if alignment_in_graph:
        outputs.append(helper.make_tensor_value_info(ALIGNMENT, TensorProto.FLOAT, ["batch", "src_len"]))
    else:
        outputs.append(helper.make_tensor_value_info(align_query(layer_of_alignment), TensorProto.FLOAT, ["batch", d]))
    return _model(g, "decoder_step", inputs, outputs)


def _alignment(g: _Builder, q: str, keys: str, n: int, h: int) -> None:
    """`alignment` (B, S): softmax(q K^T / sqrt(H)) over the real source tokens, averaged over
    the N heads; q (B, D) is the layer's cross-attention query, keys (B, N, S, H)."""
    (q4,) = g.op("Reshape", [q, g.const("alignment.q_shape", np.array([0, n, 1, h], np.int64))])  # (B, N, 1, H)
    (kt,) = g.op("Transpose", [keys], perm=[0, 1, 3, 2])  # (B, N, H, S)
    (scores,) = g.op("MatMul", [q4, kt])  # (B, N, 1, S)
    (scores,) = g.op("Mul", [scores, g.const("alignment.scale", np.array(1 / math.sqrt(h), np.float32))])
    # padding columns get -1e9 (where src_mask is False): nothing of the weight goes there
    (real,) = g.op("Cast", [SRC_MASK], to=TensorProto.FLOAT)
    (bias,) = g.op("Sub", [real, g.const("alignment.one", np.array(1.0, np.float32))])
    (bias,) = g.op("Mul", [bias, g.const("alignment.big", np.array(1e9, np.float32))])  # 0 or -1e9
    (bias,) = g.op("Unsqueeze", [bias, g.const("alignment.axes", np.array([1, 2], np.int64))])  # (B, 1, 1, S)
    (scores,) = g.op("Add", [scores, bias])
    (weights,) = g.op("Softmax", [scores], axis=-1)
    (mean,) = g.op("ReduceMean", [weights], axes=[1], keepdims=0)  # (B, 1, S); opset 17 takes axes as an attribute
    g.op("Squeeze", [mean, g.const("alignment.squeeze", np.array([1], np.int64))], out=[ALIGNMENT])


def build_beam_topk() -> onnx.ModelProto:
    """The beam search's per-step selection, model-independent (any rows, any vocabulary):
    logits (R, V) and k (1,) -> each row's k best log-probabilities (R, k), best first, and
    their token ids (R, k); equal values in ascending id order (ONNX TopK). Shipped, built
    once, as service/runtime/graphs/beam_topk.onnx (the service has no onnx package);
    tests/training/test_export.py checks the file is what this builds. In numpy the same
    selection (argpartition over k x V per sentence and a log-sum-exp) took 40% of a batch-32
    beam-4 decode; onnxruntime's LogSoftmax and TopK take a tenth of that (BENCHMARKS.md)."""
    nodes = [
        helper.make_node("LogSoftmax", ["logits"], ["logprobs"], axis=-1),
        helper.make_node("TopK", ["logprobs", "k"], ["values", "indices"], axis=-1, largest=1, sorted=1),
    ]
    graph = helper.make_graph(
        nodes,
        "beam_topk",
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", "vocab"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["rows", "k"]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["rows", "k"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="transerve")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_rows_gather() -> onnx.ModelProto:
    """Rows of a float32 (N, H, L, D) tensor, in the order of `rows` (a Gather on axis 0):
    the beam search's cache reordering where the caches stay on the device (IO binding, CUDA).
    Shipped as service/runtime/graphs/rows_gather.onnx, like build_beam_topk."""
    node = helper.make_node("Gather", ["data", "rows"], ["out"], axis=0)
    graph = helper.make_graph(
        [node],
        "rows_gather",
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, ["n", "heads", "length", "head_dim"]),
            helper.make_tensor_value_info("rows", TensorProto.INT64, ["n"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["rows", "heads", "length", "head_dim"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="transerve")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
