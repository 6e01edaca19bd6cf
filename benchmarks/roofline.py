"""The limit: FLOPs per generated token of a translation bundle, and this machine's measured
matrix-multiply rate at the model's own shapes. How close can greedy decoding get?

    python benchmarks/roofline.py --bundle model/multi --batch 32 --src-len 14 --tgt-len 15 \
        --threads 2 --out benchmarks/results/roofline.json

FLOPs are counted analytically from the bundle's config (a multiply-add = 2 FLOPs):

* decoder, per generated token and layer: self-attention projections 4 d^2, cross-attention
  query/output projections 2 d^2 (its keys/values come from the encoder once), feed-forward
  2 d d_ff, attention over t past positions and S source positions 2 d (t + S); the output
  projection d V once per token;
* encoder, per source token and layer: 4 d^2 + 2 d d_ff + attention 2 d S, plus the
  cross-attention key/value projections of every decoder layer, 2 d^2 each. Amortised over the
  generated tokens with the source/target length ratio.

The matmul rate is measured with onnxruntime itself (one MatMul graph per shape, fp32, the same
thread settings as the service), at the shapes one decoding step of `batch` rows uses
(M = batch) and the encoder uses (M = batch * S). The token limit is 1 / sum(flops_i / rate_i):
a perfect engine that spent all its time in these matmuls at the measured rates.

That limit assumes every decoding step has `batch` rows. A real batch shrinks as its sentences
end (a perfect engine does not compute rows that have finished either), and a matmul of fewer
rows runs at a lower rate. With ``--workload`` an engines.py result gives the shapes of an
actual run: how many decoder steps had M rows, how many encoder calls R rows of S positions.
The workload limit is then the time these exact matmuls take at the rates measured for each M
(every M from 1 to the batch size is measured), and the engine's own tokens/s in that result
is compared with it:

    python benchmarks/roofline.py --bundle model/multi --workload benchmarks/results/engines.json \
        --engine ort-fp32 --batch 32 --out benchmarks/results/roofline-workload.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from benchmarks.common import load_bundle
from benchmarks.engines import result_rows


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def matmul_rate(m: int, k: int, n: int, threads: int, seconds: float = 0.6) -> float:
    """GFLOP/s of an (m, k) x (k, n) fp32 MatMul with a constant weight, as in our graphs."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [k, n], rng.standard_normal(k * n).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = session(model, threads)
    x = {"x": rng.standard_normal((m, k)).astype(np.float32)}
    for _ in range(5):
        sess.run(None, x)
    rates = []
    for _ in range(5):
        n_runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            sess.run(None, x)
            n_runs += 1
        rates.append(2 * m * k * n * n_runs / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def decoder_shapes(cfg: dict, vocab: int, m: int) -> list[tuple[str, int, int, int, float]]:
    """(name, M, K, N, count) of one decoding step of m rows."""
    d, ff, ld = cfg["d_model"], cfg["d_ff"], cfg["n_decoder_layers"]
    return [
        ("dec d->d (q,k,v,o self; q,o cross)", m, d, d, 6 * ld),
        ("dec ffn d->d_ff", m, d, ff, ld),
        ("dec ffn d_ff->d", m, ff, d, ld),
        ("dec output d->V", m, d, vocab, 1),
    ]


def encoder_shapes(cfg: dict, m: int) -> list[tuple[str, int, int, int, float]]:
    """(name, M, K, N, count) of one encoder call over m = rows x positions."""
    d, ff, le, ld = cfg["d_model"], cfg["d_ff"], cfg["n_encoder_layers"], cfg["n_decoder_layers"]
    return [
        ("enc d->d (q,k,v,o; cross k,v)", m, d, d, 4 * le + 2 * ld),
        ("enc ffn d->d_ff", m, d, ff, le),
        ("enc ffn d_ff->d", m, ff, d, le),
    ]


def workload_limit(cfg: dict, vocab: int, result: dict, threads: int) -> dict:
    """The seconds the matmuls of one engines.py run take at this machine's measured rates."""
    work = result["workload"]
    rates: dict[tuple[int, int, int], float] = {}

    def cost(shapes: list[tuple[str, int, int, int, float]]) -> tuple[float, float]:
        """Seconds and FLOPs of one call with these matmuls."""
        secs = flops = 0.0
        for _, m, k, n, count in shapes:
            if (m, k, n) not in rates:
                rates[m, k, n] = matmul_rate(m, k, n, threads, seconds=0.3)
            secs += count * 2 * m * k * n / (rates[m, k, n] * 1e9)
            flops += count * 2 * m * k * n
        return secs, flops

    dec = {int(m): c for m, c in work["decoder_steps"].items()}
    enc = {tuple(int(x) for x in key.split(",")): c for key, c in work["encoder_calls"].items()}
    dec_s = enc_s = flops = 0.0
    for m, c in sorted(dec.items()):
        secs, f = cost(decoder_shapes(cfg, vocab, m))
        dec_s, flops = dec_s + c * secs, flops + c * f
    for (r, s_len), c in sorted(enc.items()):
        secs, f = cost(encoder_shapes(cfg, r * s_len))
        enc_s, flops = enc_s + c * secs, flops + c * f
    limit_s = dec_s + enc_s
    tokens = result["tokens"]
    return {
        "engine": result["engine"],
        "batch": result["batch"],
        "tokens": tokens,
        "decoder_steps": sum(dec.values()),
        "mean_rows_per_step": round(sum(m * c for m, c in dec.items()) / sum(dec.values()), 2),
        "encoder_calls": sum(enc.values()),
        "matmul_gflop": round(flops / 1e9, 2),
        "limit_seconds": {"decoder": round(dec_s, 4), "encoder": round(enc_s, 4), "total": round(limit_s, 4)},
        "effective_gflop_s": round(flops / limit_s / 1e9, 1),
        "limit_tokens_per_s": round(tokens / limit_s),
        "measured_tokens_per_s": round(result["tokens_per_s"]),
        "share_of_limit": round(result["tokens_per_s"] * limit_s / tokens, 3),
        "rates_gflop_s": {f"{m}x{k}x{n}": round(r, 1) for (m, k, n), r in sorted(rates.items())},
    }


def token_flops(cfg: dict, vocab: int, src_len: float, tgt_len: float) -> dict[str, float]:
    d, ff, le, ld = cfg["d_model"], cfg["d_ff"], cfg["n_encoder_layers"], cfg["n_decoder_layers"]
    t_mean = (tgt_len + 1) / 2  # mean self-attention length over the generated tokens
    dec = ld * (2 * 4 * d * d + 2 * 2 * d * d + 2 * 2 * d * ff + 2 * 2 * d * (t_mean + src_len)) + 2 * d * vocab
    enc_per_src = le * (2 * 4 * d * d + 2 * 2 * d * ff + 2 * 2 * d * src_len) + ld * 2 * 2 * d * d
    enc = enc_per_src * src_len / tgt_len
    return {"decoder": dec, "encoder_amortised": enc, "total": dec + enc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("model/multi"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--src-len", type=float, default=14.0, help="mean source tokens incl. </s>")
    p.add_argument("--tgt-len", type=float, default=14.8, help="mean generated tokens incl. </s>")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measured-tokens-per-s", type=float, nargs="*", default=[], help="engine results to compare")
    p.add_argument("--workload", type=Path, help="an engines.py result: the limit for its run's shapes")
    p.add_argument("--engine", default="ort-fp32", help="with --workload: whose run")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    manifest = load_bundle(args.bundle)
    cfg, vocab = manifest.model, manifest.vocab_size
    b = args.batch
    flops = token_flops(cfg, vocab, args.src_len, args.tgt_len)

    # (name, M, K, N, matmuls of this shape per generated token of one row, amortised)
    enc_share = args.src_len / args.tgt_len
    enc_rows = int(b * args.src_len)
    shapes = decoder_shapes(cfg, vocab, b) + [
        (name, m, k, n, count * enc_share) for name, m, k, n, count in encoder_shapes(cfg, enc_rows)
    ]
    rows, seconds_per_token = [], 0.0
    for name, m, k, n, count in shapes:
        rate = matmul_rate(m, k, n, args.threads)
        f = 2 * k * n * count  # FLOPs per generated token of one row
        seconds_per_token += f / (rate * 1e9)
        rows.append({"matmul": name, "M": m, "K": k, "N": n, "gflop_s": round(rate, 1), "flops_per_token": f})
        print(f"{name:40s} M={m:5d} K={k:5d} N={n:5d}: {rate:7.1f} GFLOP/s", file=sys.stderr)
    big = matmul_rate(1024, 1024, 1024, args.threads)
    matmul_flops = sum(r["flops_per_token"] for r in rows)
    limit = 1 / seconds_per_token
    result = {
        "bundle": str(args.bundle),
        "batch": b,
        "threads": args.threads,
        "flops_per_token": {k: round(v) for k, v in flops.items()},
        "matmul_flops_per_token": matmul_flops,
        "peak_gflop_s_1024_cube": round(big, 1),
        "effective_gflop_s_at_model_shapes": round(matmul_flops * limit / 1e9, 1),
        "limit_tokens_per_s": round(limit),
        "shapes": rows,
        "measured": [{"tokens_per_s": t, "share_of_limit": round(t / limit, 3)} for t in args.measured_tokens_per_s],
        "command": "python benchmarks/roofline.py " + " ".join(sys.argv[1:]),
    }
    if args.workload:
        runs = result_rows(json.loads(args.workload.read_text()))
        run = next(r for r in runs if r["engine"] == args.engine and r["batch"] == b and "workload" in r)
        result["workload"] = workload_limit(cfg, vocab, run, args.threads)
        w = result["workload"]
        print(
            f"workload of {args.engine} batch {b}: {w['decoder_steps']} steps of {w['mean_rows_per_step']} rows on "
            f"average; limit {w['limit_tokens_per_s']} tokens/s, measured {w['measured_tokens_per_s']} "
            f"({100 * w['share_of_limit']:.0f}%)",
            file=sys.stderr,
        )
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
