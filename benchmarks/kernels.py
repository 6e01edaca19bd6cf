"""Where a decoder step's time goes on this CPU, and what its cores and kernels can do:

    PYTHONPATH=. python benchmarks/kernels.py --bundle model/multi [--variant int8-static] [--out F]

* `profile`: onnxruntime's per-node profile of one decoder step (32 rows, cache 15, source 15),
  summed by operator type;
* `threads`: that step on 2 threads, on 1, and two 16-row halves on two threads at once (do the
  cores add up?);
* `matmul`: uint8 x int8 products (`QLinearMatMul`, requantizing; `MatMulInteger`, int32 out)
  and fp32 `MatMul` at the decoder's shape (32 x 256 x 16,000) and a large one, one thread, in
  GMAC/s (against the CPU's flags, recorded with the result, this tells which kernels ran:
  BENCHMARKS.md has the rates of each CPU family).

Every product is built here as a one-node graph; the decoder step is the bundle's own graph
run directly (not through the Translator), so its profile has nothing but the graph's nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import load_bundle
from benchmarks.machine import describe
from service.runtime import graph_io


def _median_ms(fn, n: int = 200) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 3)


def _session(path: str | bytes, threads: int, profile: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def step_feeds(model: dict, rows: int, past: int = 15, src: int = 15, static: bool = False) -> dict[str, np.ndarray]:
    """A decoder step's inputs; `static`: graph contract 3 (no self mask; the caches here are
    `past` wide and the step returns them one wider, unbound, instead of writing in place)."""
    heads, head = model["n_heads"], model["d_model"] // model["n_heads"]
    rng = np.random.default_rng(0)
    feeds = {
        graph_io.INPUT_IDS: np.full((rows, 1), 5, np.int64),
        graph_io.POSITION: np.full(rows, past, np.int64),
        graph_io.SRC_MASK: np.ones((rows, src), bool),
    }
    if not static:
        feeds[graph_io.SELF_MASK] = np.ones((rows, past + 1), bool)
    for i in range(model["n_decoder_layers"]):
        for t in "kv":
            feeds[graph_io.past(t, i)] = rng.random((rows, heads, past, head), dtype=np.float32)
            feeds[graph_io.cross(t, i)] = rng.random((rows, heads, src, head), dtype=np.float32)
    return feeds


def profile(decoder: str, model: dict, threads: int) -> dict:
    """The step's median ms with profiling on, and each operator type's share of the kernels' time."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(decoder, threads, profile=os.path.join(tmp, "profile"))
        feeds = step_feeds(model, 32, static=_static(session))
        outputs = [
            o.name for o in session.get_outputs() if not graph_io.is_alignment_output(o.name)
        ]  # as the engine asks
        median = _median_ms(lambda: session.run(outputs, feeds), 300)
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values())
    return {
        "step_ms_profiled": median,
        "share_percent": {op: round(100 * us / total, 1) for op, us in sorted(by_op.items(), key=lambda x: -x[1])},
    }


def _static(session: ort.InferenceSession) -> bool:
    return graph_io.SELF_MASK not in {i.name for i in session.get_inputs()}


def threads(decoder: str, model: dict) -> dict:
    """Median ms of the 32-row step on 2 threads and on 1, of a 16-row half on 1, and of two 16-row
    halves at once on a thread each: whether this machine's cores add up within a call or across."""
    two, one = _session(decoder, 2), _session(decoder, 1)
    static = _static(one)
    full, half_a, half_b = (step_feeds(model, r, static=static) for r in (32, 16, 16))
    pool = ThreadPoolExecutor(1)

    def halves() -> None:
        other = pool.submit(one.run, None, half_a)
        one.run(None, half_b)
        other.result()

    return {
        "rows32_2_threads_ms": _median_ms(lambda: two.run(None, full)),
        "rows32_1_thread_ms": _median_ms(lambda: one.run(None, full)),
        "rows16_1_thread_ms": _median_ms(lambda: one.run(None, half_a)),
        "two_rows16_at_once_ms": _median_ms(halves),
    }


def _product(m: int, k: int, n: int, op: str) -> bytes:
    a_type = TensorProto.FLOAT if op == "MatMul" else TensorProto.UINT8
    out_type = {"MatMul": TensorProto.FLOAT, "QLinearMatMul": TensorProto.UINT8, "MatMulInteger": TensorProto.INT32}[op]
    rng = np.random.default_rng(0)
    if op == "MatMul":
        inits = [numpy_helper.from_array(rng.random((k, n), dtype=np.float32), "w")]
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
    else:
        w = rng.integers(-100, 100, (k, n)).astype(np.int8)
        consts = {"as": np.float32(0.1), "az": np.uint8(128), "ws": np.float32(0.01), "wz": np.int8(0)}
        consts.update({"ys": np.float32(1.0), "yz": np.uint8(128)})
        inits = [numpy_helper.from_array(w, "w"), *[numpy_helper.from_array(np.array(v), n) for n, v in consts.items()]]
        if op == "QLinearMatMul":
            node = helper.make_node(op, ["a", "as", "az", "w", "ws", "wz", "ys", "yz"], ["y"])
        else:
            node = helper.make_node(op, ["a", "w", "az", "wz"], ["y"])
            inits = [i for i in inits if i.name in ("w", "az", "wz")]
    graph = helper.make_graph(
        [node],
        "product",
        [helper.make_tensor_value_info("a", a_type, [m, k])],
        [helper.make_tensor_value_info("y", out_type, [m, n])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()


def matmul() -> list[dict]:
    """Each product kind's median ms and GMAC/s at the decoder's output projection (32 x 256 x 16,000),
    its feed-forward (32 x 256 x 1,024) and a large shape, on one thread."""
    rows = []
    rng = np.random.default_rng(0)
    for m, k, n in ((32, 256, 16000), (32, 256, 1024), (512, 1024, 4096)):
        for op in ("QLinearMatMul", "MatMulInteger", "MatMul"):
            session = _session(_product(m, k, n, op), 1)
            a = rng.random((m, k), dtype=np.float32) if op == "MatMul" else rng.integers(0, 255, (m, k), dtype=np.uint8)
            ms = _median_ms(lambda s=session, a=a: s.run(None, {"a": a}), 50)
            rows.append({"shape": [m, k, n], "op": op, "ms": ms, "gmac_per_s": round(m * k * n / ms / 1e6)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("model/multi"))
    p.add_argument("--variant", default=None)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    manifest = load_bundle(args.bundle)
    variant = args.variant or manifest.default_variant
    decoder = str(args.bundle / manifest.graph(variant, "decoder").file)
    result = {
        "bundle": str(args.bundle),
        "variant": variant,
        "profile_2_threads": profile(decoder, manifest.model, 2),
        "threads": threads(decoder, manifest.model),
        "matmul_1_thread": matmul(),
        "machine": describe(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
