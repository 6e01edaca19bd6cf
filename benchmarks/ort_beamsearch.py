"""Beam search in numpy around our graphs (the service's) vs onnxruntime's BeamSearch contrib op
running the same graphs as its subgraphs, on one bundle variant.

The op takes encoder-decoder models in T5's layout (`model_type=1`): an encoder subgraph
`encoder_input_ids, encoder_attention_mask (int32) -> present_{key,value}_cross_{i}` and a
decoder subgraph `input_ids (B, 1) int32, encoder_attention_mask, past_{key,value}_self_{i},
past_{key,value}_cross_{i} -> logits (B, 1, V), present_{key,value}_self_{i}`. `wrap` builds
both from the bundle's graphs without touching their nodes: int32 ids cast to int64, the
source mask cast to bool, each row's `position` (the past length, taken from the cache's shape)
and an all-true `self_mask` made inside the decoder subgraph, the logits unsqueezed. The op
decodes a batch to one `max_length` (the batch's largest output limit: ours stops each row at
its own); both use length penalty 1.0 (score / length) and 4 beams.

    python -m benchmarks.ort_beamsearch --bundle model/multi --source ../shared/data/tatoeba-de-en/valid.de.gz \
        --reference ../shared/data/tatoeba-de-en/valid.en.gz --target en --limit 300 --batch 32 1 \
        --out benchmarks/results/ort-beamsearch-multi-de-en.json
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import statistics
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import length_batches, open_translator, timed
from benchmarks.machine import describe
from service.runtime.translator import Translator
from training.evaluate import translation_metrics


def _kv(t: str) -> str:
    return "key" if t == "k" else "value"


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    for node in graph.node:
        for k, x in enumerate(node.input):
            node.input[k] = names.get(x, x)
        for k, x in enumerate(node.output):
            node.output[k] = names.get(x, x)


def _set(field, values) -> None:
    """Replace a repeated protobuf field's items."""
    del field[:]
    field.extend(values)


def _kv_info(name: str, length: str, heads: int, head: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", heads, length, head])


def encoder_subgraph(encoder: onnx.ModelProto, layers: int, heads: int, head: int) -> onnx.GraphProto:
    """Our encoder as the op's: int32 ids and mask in (the ids cast to int64; the mask is not
    read: our encoder masks the padding by its id), `present_{key,value}_cross_{i}` out."""
    enc = copy.deepcopy(encoder.graph)
    cross = {f"cross_{t}.{i}": f"present_{_kv(t)}_cross_{i}" for i in range(layers) for t in "kv"}
    _rename(enc, cross)
    _set(
        enc.input,
        [
            helper.make_tensor_value_info("encoder_input_ids", TensorProto.INT32, ["batch", "src_len"]),
            helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT32, ["batch", "src_len"]),
        ],
    )
    enc.node.insert(0, helper.make_node("Cast", ["encoder_input_ids"], ["src_ids"], to=TensorProto.INT64))
    _set(enc.output, [_kv_info(cross[f"cross_{t}.{i}"], "src_len", heads, head) for i in range(layers) for t in "kv"])
    return enc


def _decoder_prologue() -> list[onnx.NodeProto]:
    """The op's decoder inputs made into ours: int64 ids, a bool source mask, each row's
    `position` (the past length, from the cache's shape) and an all-true `self_mask`."""
    true = helper.make_tensor("wrap.true", TensorProto.BOOL, [1], [True])
    return [
        helper.make_node("Cast", ["input_ids"], ["ids64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["encoder_attention_mask"], ["src_mask"], to=TensorProto.BOOL),
        helper.make_node("Shape", ["past_key_self_0"], ["wrap.shape"]),
        helper.make_node("Gather", ["wrap.shape", "wrap.i2"], ["wrap.past"], axis=0),
        helper.make_node("Gather", ["wrap.shape", "wrap.i0"], ["wrap.rows"], axis=0),
        helper.make_node("Expand", ["wrap.past", "wrap.rows"], ["position"]),  # each row at the past length
        helper.make_node("Add", ["wrap.past", "wrap.one"], ["wrap.width"]),
        helper.make_node("Concat", ["wrap.rows", "wrap.width"], ["wrap.mask_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["wrap.mask_shape"], ["self_mask"], value=true),
    ]


def decoder_subgraph(decoder: onnx.ModelProto, layers: int, heads: int, head: int, vocab: int) -> onnx.GraphProto:
    """Our decoder step as the op's: `input_ids (B, 1) int32, encoder_attention_mask,
    past_{key,value}_self_{i}, past_{key,value}_cross_{i} -> logits (B, 1, V),
    present_{key,value}_self_{i}`; its own nodes untouched."""
    dec = copy.deepcopy(decoder.graph)
    names = {"input_ids": "ids64", "position": "position", "src_mask": "src_mask", "logits": "logits2d"}
    for i in range(layers):
        for t in "kv":
            names[f"past_{t}.{i}"] = f"past_{_kv(t)}_self_{i}"
            names[f"present_{t}.{i}"] = f"present_{_kv(t)}_self_{i}"
            names[f"cross_{t}.{i}"] = f"past_{_kv(t)}_cross_{i}"
    _rename(dec, names)
    _set(
        dec.input,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", 1]),
            helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT32, ["batch", "src_len"]),
            *[_kv_info(f"past_{_kv(t)}_self_{i}", "past_len", heads, head) for i in range(layers) for t in "kv"],
            *[_kv_info(f"past_{_kv(t)}_cross_{i}", "src_len", heads, head) for i in range(layers) for t in "kv"],
        ],
    )
    for name, value in (("wrap.i0", [0]), ("wrap.i2", [2]), ("wrap.one", [1])):
        dec.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    _set(dec.node, [*_decoder_prologue(), *dec.node])
    dec.node.append(helper.make_node("Unsqueeze", ["logits2d", "wrap.one"], ["logits"]))
    _set(
        dec.output,
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, vocab]),
            *[_kv_info(f"present_{_kv(t)}_self_{i}", "present_len", heads, head) for i in range(layers) for t in "kv"],
        ],
    )
    _set(dec.value_info, [v for v in dec.value_info if v.name not in names])
    return dec


def wrap(encoder: onnx.ModelProto, decoder: onnx.ModelProto, model: dict, bos: int, eos: int, pad: int):
    """One model: BeamSearch with our encoder and decoder graphs as its T5-layout subgraphs."""
    layers, heads = model["n_decoder_layers"], model["n_heads"]
    head, vocab = model["d_model"] // heads, model["vocab_size"]
    scalars = ("max_length", "min_length", "num_beams", "num_return_sequences")
    node = helper.make_node(
        "BeamSearch",
        ["input_ids", *scalars, "length_penalty", "repetition_penalty"],
        ["sequences", "sequences_scores"],
        domain="com.microsoft",
        model_type=1,
        decoder_start_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        no_repeat_ngram_size=0,
        early_stopping=0,
        encoder=encoder_subgraph(encoder, layers, heads, head),
        decoder=decoder_subgraph(decoder, layers, heads, head, vocab),
    )
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "src_len"])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.INT32, [1]) for n in scalars]
    penalties = ("length_penalty", "repetition_penalty")
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in penalties]
    outputs = [
        helper.make_tensor_value_info("sequences", TensorProto.INT32, ["batch", "returned", "length"]),
        helper.make_tensor_value_info("sequences_scores", TensorProto.FLOAT, ["batch", "returned"]),
    ]
    graph = helper.make_graph([node], "beam_search", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def _read(path: Path, limit: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f][:limit]


def beam_search_op(ours: Translator, beam: int, threads: int):
    """onnxruntime's BeamSearch op on the same graphs as `ours` (its variant): a function from
    a batch of source id lists to each one's best hypothesis's ids, as `Translator.generate_nbest`
    gives them (no start token, none after </s>). The op decodes the batch to one `max_length`,
    the batch's largest output limit (ours stops each row at its own)."""
    files = ours.manifest.variants[ours.variant]
    model = wrap(
        onnx.load(str(ours.bundle_dir / files["encoder"].file)),
        onnx.load(str(ours.bundle_dir / files["decoder"].file)),
        ours.manifest.model,
        ours.bos,
        ours.eos,
        ours.pad,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    op = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(sources: list[list[int]]) -> list[list[int]]:
        src, limits = ours.padded(sources)
        feeds = {
            "input_ids": src.astype(np.int32),
            "max_length": np.array([int(limits.max()) + 1], np.int32),  # + the start token
            "min_length": np.array([1], np.int32),
            "num_beams": np.array([beam], np.int32),
            "num_return_sequences": np.array([1], np.int32),
            "length_penalty": np.array([1.0], np.float32),
            "repetition_penalty": np.array([1.0], np.float32),
        }
        out = []
        for row in op.run(["sequences"], feeds)[0][:, 0].tolist():
            row = row[1:]  # the start token
            out.append(row[: row.index(ours.eos)] if ours.eos in row else [t for t in row if t != ours.pad])
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("model/multi"))
    ap.add_argument("--variant", help="default: the bundle's served variant")
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--target", default="en")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    ours = open_translator(args.bundle, args.threads, args.variant)
    op = beam_search_op(ours, args.beam, args.threads)
    sources, refs = _read(args.source, args.limit), _read(args.reference, args.limit)
    ids = ours.encode([ours.manifest.model_input(s, args.target) for s in sources])
    engines = {
        "numpy loop (served)": lambda batch: [h[0].tokens for h in ours.generate_nbest(batch, args.beam)],
        "onnxruntime BeamSearch": op,
    }
    rows = []
    for size in args.batch:
        batches = length_batches(len(ids), [len(x) for x in ids], size)
        for name, decode in engines.items():
            times, outputs = timed(lambda b, d=decode: d([ids[i] for i in b]), batches, len(ids), args.repeats)
            tokens = sum(len(o) + 1 for o in outputs)
            bleu = translation_metrics(ours.text.decode(outputs), refs, args.target)["bleu"]
            row = {"engine": name, "variant": ours.variant, "beam": args.beam, "batch": size}
            row.update(tokens_per_s=round(tokens / statistics.median(times), 1), seconds=times, bleu=round(bleu, 2))
            rows.append(row)
            print(f"{name:24s} batch {size:3d}: {row['tokens_per_s']:8.1f} tok/s  BLEU {row['bleu']:.2f}", flush=True)
    result = {"bundle": str(args.bundle), "sentences": len(ids), "threads": args.threads, "rows": rows}
    result["machine"] = describe()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
