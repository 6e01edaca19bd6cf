"""Where a decoder step's time goes: onnxruntime's profiler (`SessionOptions.enable_profiling`) over
the service's own Translator decoding a batch, its per-node kernel times summed by what the node
computes.

    python -m benchmarks.step_profile --model-size base --variants fp32 int8-static --rows 32 1 \
        --threads 1 --out benchmarks/results/step-profile-base-zen3.json

The bundle is the engine benchmark's cached model (benchmarks/base_model.py; or --bundle), the
sources the first `rows` Tatoeba de valid sentences, decoded greedily to `--output-length` tokens
(default: the sources' mean length), `--passes` times after a warm-up pass. Each node is put in a
class by the weights it reads (the graph builder names them: training/onnx_graphs.py) and its
operator: `output projection` (the logits' product and bias), `self-attn QKV`, `self-attn out`,
`cross-attn Q`, `cross-attn out`, `FFN` (both products, their biases and the activation),
`attention` (the fused attention kernels), `quantize/dequantize` (QuantizeLinear,
DequantizeLinear, DynamicQuantizeLinear: the int8 variants' activations), `layer norm`,
`residual adds`, `other` (embedding gathers, casts, reshapes). The node-to-weights map comes from
the graph as onnxruntime optimized it (saved next to the profile), since its fusions rename nodes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

CLASSES = [  # (class, substrings of the weights' names: training/onnx_graphs.py's `linear` names)
    ("output projection", ("output_projection",)),
    ("self-attn QKV", ("self_attn.qkv", "self_attn.q.", "self_attn.k.", "self_attn.v.")),
    ("self-attn out", ("self_attn.out",)),
    ("cross-attn Q", ("cross_attn.q.",)),
    ("cross-attn out", ("cross_attn.out",)),
    ("FFN", ("ffn.linear",)),
]
QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
ATTENTION = ("GroupQueryAttention", "MultiHeadAttention", "Attention")


def node_inputs(model_path: Path) -> dict[str, list[str]]:
    """Each node's inputs in an (optimized) ONNX file, by node name."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return {n.name: list(n.input) for n in model.graph.node}


def classify(op: str, inputs: list[str], producers: dict[str, str]) -> str:
    """A node's class (module docstring) from its operator and the weights it reads; a node that
    reads no weight (an activation between two FFN products, a bias Add) takes the class of the
    product that made its input."""
    if op in QDQ:
        return "quantize/dequantize"
    if op in ATTENTION:
        return "attention"
    if op in ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"):
        return "layer norm"
    names = " ".join(inputs)
    for cls, keys in CLASSES:
        if any(k in names for k in keys):
            return cls
    after_product = ("Add", "Relu", "Gelu", "FastGelu", "Mul", "Sigmoid")  # a bias, an activation
    for x in inputs:  # the class of the product that made its input
        if op in after_product and producers.get(x) in {c for c, _ in CLASSES}:
            return producers[x]
    if op == "Add":
        return "residual adds"
    return "other"


def profile(bundle: Path, variant: str, rows: int, threads: int, length: int, passes: int, out: Path) -> dict:
    """Decode `rows` sources `passes` times with profiling on; the decoder's per-class times."""
    import onnx
    import onnxruntime as ort

    from benchmarks.base_model import read_lines
    from benchmarks.common import open_translator

    made: list[tuple[str, ort.InferenceSession, Path]] = []
    real = ort.InferenceSession

    def profiled(path, sess_options=None, providers=None, **kw):
        stem = f"{variant}-{rows}-{Path(path).stem}"
        sess_options.enable_profiling = True
        sess_options.profile_file_prefix = str(out / stem)
        sess_options.optimized_model_filepath = str(out / f"{stem}.opt.onnx")
        session = real(path, sess_options=sess_options, providers=providers, **kw)
        made.append((Path(path).stem, session, out / f"{stem}.opt.onnx"))
        return session

    ort.InferenceSession = profiled  # every session the translator opens (service.runtime.sessions)
    try:
        tr = open_translator(bundle, threads, variant, max_output_ratio=0.0, max_output_extra=length)
        sources = tr.encode(read_lines("valid", "de", rows))
        tr.generate(sources)  # warm-up
        for _ in range(passes):
            tr.generate(sources)
    finally:
        ort.InferenceSession = real
    report: dict = {}
    for stem, session, optimized in made:
        events = json.loads(Path(session.end_profiling()).read_text())
        if not optimized.exists() or "decoder" not in stem:
            continue
        inputs = node_inputs(optimized)
        model = onnx.load(str(optimized), load_external_data=False)
        ops = {n.name: n.op_type for n in model.graph.node}
        producers: dict[str, str] = {}
        node_class: dict[str, str] = {}
        for n in model.graph.node:  # topological order: a node's producers are classed first
            node_class[n.name] = classify(n.op_type, list(n.input), producers)
            for o in n.output:
                producers[o] = node_class[n.name]
        by_class: dict[str, float] = defaultdict(float)
        by_op: dict[str, float] = defaultdict(float)
        runs = 0
        for e in events:
            if e.get("cat") == "Session" and e.get("name") == "SequentialExecutor::Execute":
                runs += 1
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            name = e["name"].removesuffix("_kernel_time")
            op = e.get("args", {}).get("op_name", ops.get(name, "?"))
            by_class[node_class.get(name, "other")] += e["dur"]
            by_op[op] += e["dur"]
        total = sum(by_class.values())
        report[stem] = {
            "runs": runs,
            "us_per_step": round(total / max(runs, 1), 1),
            "nodes": len(inputs),
            "share_by_class": {k: round(v / total, 4) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
            "us_per_step_by_op": {
                k: round(v / max(runs, 1), 1) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])
            },
            "op_counts": dict(sorted(_count(ops.values()).items(), key=lambda kv: -kv[1])),
        }
    return report


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for x in items:
        counts[x] += 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", choices=["base", "tiny"], default="base")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path("/work/runs/base-bench"))
    p.add_argument("--bundle", type=Path, help="this bundle instead of the cached model of --model-size")
    p.add_argument("--variants", nargs="+", default=["fp32", "int8-static"])
    p.add_argument("--rows", type=int, nargs="+", default=[32, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-length", type=int, default=0, help="0: the sources' mean length in tokens")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.bundle is None:
        from benchmarks.base_model import build

        args.bundle = build(args.model_size, args.seed, args.cache_dir).bundle
    if not args.output_length:
        import sentencepiece as spm

        from benchmarks.base_model import read_lines

        sp = spm.SentencePieceProcessor(model_file=str(args.bundle / "spm.model"))
        lengths = [len(sp.encode(s)) + 1 for s in read_lines("valid", "de", 300)]
        args.output_length = -(-sum(lengths) // len(lengths))
    results = []
    with tempfile.TemporaryDirectory(prefix="step-profile-") as tmp:
        for variant in args.variants:
            for rows in args.rows:
                rep = profile(args.bundle, variant, rows, args.threads, args.output_length, args.passes, Path(tmp))
                for graph, r in rep.items():
                    row = {"variant": variant, "rows": rows, "graph": graph, "threads": args.threads, **r}
                    results.append(row)
                    shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["share_by_class"].items())
                    print(f"{variant:12s} rows {rows:3d} {graph}: {r['us_per_step']:.0f} us/step; {shares}", flush=True)
    if args.out:
        from benchmarks.machine import describe

        args.out.parent.mkdir(parents=True, exist_ok=True)
        common = {"bundle": str(args.bundle), "output_length": args.output_length, "machine": describe()}
        args.out.write_text(json.dumps([{**r, **common} for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
