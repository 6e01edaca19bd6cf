"""The decoder step graph, written node by node with onnxruntime's fused attention.

``torch.onnx.export`` of one decoding step gives ~200 small nodes per step: per-head reshapes
and transposes, a separate QK^T, mask, softmax and AV per attention, and (with stacked caches)
Split/Gather/Concat copies of every layer's keys and values. Here the same computation is
built directly from the checkpoint's weights, one ``com.microsoft.MultiHeadAttention`` node per
attention (scaling, masking, softmax, AV and the cache append in one kernel), one Q/K/V matrix
multiply per self-attention, and every layer's caches as their own inputs and outputs, so
nothing is sliced or stacked. The export checks it against PyTorch like any other graph.

Graph (L layers, N heads, H = head size, D = N * H):
    inputs   input_ids (B, 1) int64, src_mask (B, S) bool,
             past_k.{i}, past_v.{i} (B, N, P, H), cross_k.{i}, cross_v.{i} (B, N, S, H)
    outputs  logits (B, V), present_k.{i}, present_v.{i} (B, N, P + 1, H)
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from training.transformer import Seq2SeqTransformer

OPSET = 17
MS_DOMAIN = "com.microsoft"
LN_EPS = 1e-5  # nn.LayerNorm's default, which the model uses


class _Builder:
    def __init__(self) -> None:
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
        domain = MS_DOMAIN if op_type == "MultiHeadAttention" else ""
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
            epsilon=LN_EPS,
        )[0]


def _kv_spec(name: str, n_heads: int, d_head: int, length: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", n_heads, length, d_head])


def build_decoder_step(model: Seq2SeqTransformer) -> onnx.ModelProto:
    """One greedy decoding step of `model` (eval mode: no dropout) as an ONNX model."""
    cfg = model.cfg
    w = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    pe = model.decoder.pos.pe.detach().cpu().numpy()
    g = _Builder()
    n, h, d = cfg.n_heads, cfg.d_head, cfg.d_model

    # Embedding * sqrt(D) + the positional encoding of position P (the cache length).
    emb = w["embed.embedding.weight"]
    # Hidden states are 2-D (B, D) between attentions: one position per step, and 2-D
    # MatMul + Add fuse into one Gemm-like kernel where 3-D ones do not.
    axis1 = g.const("axis1", np.array([1], np.int64))
    (ids,) = g.op("Squeeze", ["input_ids", axis1], dtype=TensorProto.INT64)  # (B,)
    (x,) = g.op("Gather", [g.const("embedding", emb), ids])  # (B, D)
    (x,) = g.op("Mul", [x, g.const("embed_scale", np.array(math.sqrt(d), np.float32))])
    (past_len,) = g.op("Shape", ["past_k.0"], start=2, end=3, dtype=TensorProto.INT64)  # (1,)
    (pos,) = g.op("Gather", [g.const("positional_encoding", pe.astype(np.float32)), past_len])  # (1, D)
    (x,) = g.op("Add", [x, pos])
    (key_mask,) = g.op("Cast", ["src_mask"], to=TensorProto.INT32, dtype=TensorProto.INT32)  # 1 = a real source token

    def sublayer(x: str, prefix: str, f) -> str:
        norm = (w[f"{prefix}.norm.weight"], w[f"{prefix}.norm.bias"], prefix + ".norm")
        if cfg.pre_norm:
            return g.op("Add", [x, f(g.layer_norm(x, *norm))])[0]
        return g.layer_norm(g.op("Add", [x, f(x)])[0], *norm)

    for i in range(cfg.n_decoder_layers):
        p = f"decoder.layers.{i}"

        def self_attention(hid: str, p: str = p, i: int = i) -> str:
            a = f"{p}.self_attn"
            qkv_w = np.concatenate([w[f"{a}.{t}_proj.weight"] for t in "qkv"])  # (3D, D)
            qkv_b = np.concatenate([w[f"{a}.{t}_proj.bias"] for t in "qkv"])
            qkv = g.linear(hid, qkv_w, None, f"{a}.qkv")
            (qkv,) = g.op("Unsqueeze", [qkv, axis1])  # (B, 1, 3D): attention wants a sequence axis
            q, k, v = g.op("Split", [qkv, g.const(f"{a}.split", np.array([d, d, d], np.int64))], n_out=3, axis=-1)
            (ctx, _, _) = g.op(
                "MultiHeadAttention",
                [q, k, v, g.const(f"{a}.qkv_bias", qkv_b), "", "", f"past_k.{i}", f"past_v.{i}"],
                out=[f"{a}.context", f"present_k.{i}", f"present_v.{i}"],
                num_heads=n,
            )
            (ctx,) = g.op("Squeeze", [ctx, axis1])
            return g.linear(ctx, w[f"{a}.out_proj.weight"], w[f"{a}.out_proj.bias"], f"{a}.out")

        def cross_attention(hid: str, p: str = p, i: int = i) -> str:
            a = f"{p}.cross_attn"
            q = g.linear(hid, w[f"{a}.q_proj.weight"], w[f"{a}.q_proj.bias"], f"{a}.q")
            (q,) = g.op("Unsqueeze", [q, axis1])
            (ctx,) = g.op("MultiHeadAttention", [q, f"cross_k.{i}", f"cross_v.{i}", "", key_mask], num_heads=n)
            (ctx,) = g.op("Squeeze", [ctx, axis1])
            return g.linear(ctx, w[f"{a}.out_proj.weight"], w[f"{a}.out_proj.bias"], f"{a}.out")

        def ffn(hid: str, p: str = p) -> str:
            f = f"{p}.ffn"
            up = g.linear(hid, w[f"{f}.linear1.weight"], w[f"{f}.linear1.bias"], f"{f}.linear1")
            (up,) = g.op("Relu", [up])
            return g.linear(up, w[f"{f}.linear2.weight"], w[f"{f}.linear2.bias"], f"{f}.linear2")

        x = sublayer(x, f"{p}.self_block", self_attention)
        x = sublayer(x, f"{p}.cross_block", cross_attention)
        x = sublayer(x, f"{p}.ffn_block", ffn)

    if cfg.pre_norm:
        x = g.layer_norm(x, w["decoder.norm.weight"], w["decoder.norm.bias"], "decoder.norm")
    g.linear(x, emb, None, "output_projection", out="logits")  # tied to the embedding

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 1]),
        helper.make_tensor_value_info("src_mask", TensorProto.BOOL, ["batch", "src_len"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.vocab_size])]
    for i in range(cfg.n_decoder_layers):
        inputs += [_kv_spec(f"past_{t}.{i}", n, h, "past_len") for t in "kv"]
        outputs += [_kv_spec(f"present_{t}.{i}", n, h, "present_len") for t in "kv"]
    for i in range(cfg.n_decoder_layers):
        inputs += [_kv_spec(f"cross_{t}.{i}", n, h, "src_len") for t in "kv"]
    declared = {v.name for v in inputs + outputs}
    value_info = [helper.make_tensor_value_info(name, t, None) for name, t in g.types.items() if name not in declared]
    graph = helper.make_graph(g.nodes, "decoder_step", inputs, outputs, initializer=g.inits, value_info=value_info)
    model_proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="transerve",
        ir_version=9,  # what onnxruntime 1.2x reads
    )
    onnx.checker.check_model(model_proto)
    return model_proto
