"""Offline engine benchmark: the same weights decoded by every engine, greedy and beam, in one run.

On a released bundle (its shipped graphs as served, and CTranslate2 converted from its weights):

    python -m benchmarks.engines --bundle model/multi --direction de-en --beam 1 4 --batch 1 32 \
        --engines served ct2 --out benchmarks/results/engines.json

(`make bench-engines` installs CTranslate2 and runs that.) The config, checkpoint and tokenizer come
from the bundle (its manifest's training config, `weights.pt`, its tokenizer) unless given; the
split defaults to the config's first validation evaluation set (tatoeba-valid). On a checkpoint:

    python -m benchmarks.engines --config training/configs/multi30k-de-en.toml \
        --checkpoint runs/de-en/best.pt --tokenizer runs/de-en/spm.model \
        --split test_2016_flickr --threads 2 --batch 1 32 --repeats 3 --out benchmarks/results/engines.json

The result file is a JSON list of rows, one per (engine, threads, workers, beam, batch): engine, beam,
batch, tokens_per_s, bleu, ratio_to_best_ct2 (to CTranslate2's fastest engine at the same beam and
batch), the CPU model and flags, the command; greedy rows also the products' multiply-accumulates per
token and the rate achieved (`matmul_macs`: engines that compute fewer products per token win at equal
kernel speed).

Engines: `served` (the bundle's graphs as shipped, its default variant, target vocabularies on: exactly what
the service runs; needs --bundle), PyTorch eager greedy without cache (`torch-nocache`), PyTorch with the KV
cache (`torch-cache`), our onnxruntime engine fp32, int8, int8-blockwise and int8-static (`ort-fp32`,
`ort-int8`, `ort-int8-blockwise`, `ort-int8-static`: the service's Translator over a bundle exported from the
checkpoint; `ort-c2-fp32`, `ort-c2-int8-static`: the same with the decoder of graph contract 2, caches grown
by a copy every step, as older bundles), CTranslate2 fp32 and int8 (`ct2-fp32`, `ct2-int8`:
converted by benchmarks/ct2_convert.py; `ct2` names both). Every (engine, batch) run is a fresh subprocess, so
its peak RSS is its own. Sentences are sorted by length and cut into batches of `batch` sentences for every
engine alike. Reported: sentences/s, target tokens/s, peak RSS, BLEU (cased sacreBLEU and lowercased
tokenized), and agreement with ort-fp32 (identical greedy outputs). Ratios to the best CTranslate2 engine are
printed in the same run.

`--workers 1 2`: each batch also cut into W parts of neighbouring lengths decoded at once, each on a
thread of its own with the run's threads (ours: as the service's decode workers share a request;
CTranslate2: `inter_threads=W` and `max_batch_size` = batch / W, its own parallel sub-batches).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.machine import describe

ENGINES = [
    "served",  # a released bundle's own graphs (--bundle), as the service runs them
    "torch-nocache",
    "torch-cache",
    "ort-fp32",
    "ort-int8",
    "ort-int8-blockwise",
    "ort-int8-static",
    "ort-fv-int8-static",  # the served graphs with the full vocabulary (no target vocabularies)
    "ort-c2-fp32",  # the same graphs with the decoder of graph contract 2 (caches grown every step)
    "ort-c2-int8-static",
    "ct2-fp32",
    "ct2-int8",
]
ALIASES = {"ct2": ["ct2-fp32", "ct2-int8"]}


def engine_names(names: list[str]) -> list[str]:
    """The engines asked for, aliases (`ct2`) expanded, each once, in order."""
    out: list[str] = []
    for name in names:
        for engine in ALIASES.get(name, [name]):
            if engine not in ENGINES:
                raise SystemExit(f"unknown engine {engine!r} (one of {ENGINES + list(ALIASES)})")
            if engine not in out:
                out.append(engine)
    return out


def length_batches(n: int, lengths: list[int], size: int) -> list[list[int]]:
    """Sentence indices sorted by length, cut into batches of `size` (every engine alike)."""
    order = sorted(range(n), key=lambda i: lengths[i])
    return [order[i : i + size] for i in range(0, n, size)]


def timed(run, batches: list[list[int]], n: int, repeats: int) -> tuple[list[float], list]:
    """`run(batch)` over every batch, `repeats` times after a warm-up (sessions, allocators,
    caches): the seconds of each pass and each sentence's output."""
    run(batches[0][:2])
    times, outputs = [], [None] * n
    for _ in range(repeats):
        t0 = time.perf_counter()
        for batch in batches:
            for i, out in zip(batch, run(batch)):
                outputs[i] = out
        times.append(time.perf_counter() - t0)
    return times, outputs


def workload(batches: list[list[int]], src_lengths: list[int], outputs: list) -> dict[str, dict[str, int]]:
    """The matrix shapes this run asked of the hardware, for the limit (benchmarks/roofline.py):
    how many encoder calls had R rows of S positions (padded to the batch's longest source), and
    how many decoder steps had M rows (a row stays until it has produced its </s>: finished rows
    are dropped, as our engine does). Keys are strings for JSON: "R,S" and "M"."""
    enc: dict[str, int] = {}
    dec: dict[str, int] = {}
    for batch in batches:
        key = f"{len(batch)},{max(src_lengths[i] for i in batch)}"
        enc[key] = enc.get(key, 0) + 1
        steps = [len(outputs[i]) + 1 for i in batch]  # + the step that produced </s>
        for t in range(max(steps)):
            m = str(sum(n > t for n in steps))
            dec[m] = dec.get(m, 0) + 1
    return {"encoder_calls": enc, "decoder_steps": dec}


def matmul_macs(
    work: dict[str, dict[str, int]], d_model: int, d_ff: int, enc_layers: int, dec_layers: int, logits: int
) -> dict[str, int]:
    """The multiply-accumulates of a greedy run's matrix products (attention's own products, a few
    percent at these lengths, left out): per source position, each encoder layer's Q, K, V, output
    and feed-forward products plus each decoder layer's cross-attention K and V (computed once, by
    the encoder); per decoder row-step, each decoder layer's self-attention Q, K, V, output,
    cross-attention Q and output and feed-forward products, and the output projection over the
    `logits` columns it computes (a target vocabulary, or every piece). Split in encoder and decoder."""
    d, f = d_model, d_ff
    per_position = enc_layers * (4 * d * d + 2 * d * f) + dec_layers * 2 * d * d
    per_row_step = dec_layers * (6 * d * d + 2 * d * f) + d * logits
    positions = sum(int(r) * int(s) * n for key, n in work["encoder_calls"].items() for r, s in [key.split(",")])
    row_steps = sum(int(m) * n for m, n in work["decoder_steps"].items())
    return {"encoder": positions * per_position, "decoder": row_steps * per_row_step}


def in_parallel(run, workers: int):
    """`run` over a batch cut into `workers` parts (of neighbouring lengths), each on a thread of
    its own at once, as the service's decode workers share a request's sentences (and as
    CTranslate2 runs the sub-batches of one translate_batch call with inter_threads)."""
    pool = ThreadPoolExecutor(workers)

    def parallel(batch: list[int]) -> list:
        k = math.ceil(len(batch) / workers)
        parts = [batch[i : i + k] for i in range(0, len(batch), k)]
        return [out for part in pool.map(run, parts) for out in part]

    return parallel


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss, it starts afresh at exec,
    so a worker does not inherit the parent's high-water mark."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """One engine, one batch size: decode the split `repeats` times; print JSON."""
    threads, beam = args.threads, args.beam[0]
    os.environ["OMP_NUM_THREADS"] = str(threads)
    from service.runtime.sessions import retain_freed_memory

    retain_freed_memory(args.retain_freed_mb)  # the service's default, for every engine alike
    sources = json.loads(Path(args.sources).read_text())
    engine = args.worker
    if engine.startswith("torch"):
        import torch

        from training.checkpoint import model_from_checkpoint
        from training.evaluate import encode_source, pad_batch
        from training.tokenizer import Tokenizer

        torch.set_num_threads(threads)
        model = model_from_checkpoint(Path(args.checkpoint))
        tok = Tokenizer(Path(args.tokenizer))
        encoded = [encode_source(tok, s, model.cfg.max_len) for s in sources]
        use_cache = engine == "torch-cache"

        def run(batch: list[int]) -> list[list[int]]:
            return model.greedy_decode(pad_batch([encoded[i] for i in batch], 0), use_cache=use_cache)

        decode = tok.decode
        lengths = [len(e) for e in encoded]
        logits = model.cfg.vocab_size
    elif engine.startswith("ort") or engine == "served":
        from service.runtime.bundle import load_manifest
        from service.runtime.sessions import resolve_providers, share_thread_pool
        from service.runtime.translator import Translator

        if args.thread_pool == "shared":  # as the service does by default
            share_thread_pool(threads)
        contract2, full_vocab = engine.startswith("ort-c2-"), engine.startswith("ort-fv-")
        if engine == "served":  # the released bundle as shipped, its default variant
            bundle, variant = Path(args.bundle), None
        else:
            bundle = Path(args.bundle_c2 if contract2 else args.ort_bundle)
            variant = engine.removeprefix("ort-c2-").removeprefix("ort-fv-") if contract2 or full_vocab else engine[4:]
        tr = Translator(
            bundle,
            load_manifest(bundle),
            resolve_providers("cpu"),
            threads=threads,
            variant=variant,
            target_vocab=not full_vocab,
        )
        encoded = tr.encode(sources)

        def run(batch: list[int]) -> list[list[int]]:
            if beam > 1:
                return [h[0].tokens for h in tr.generate_nbest([encoded[i] for i in batch], beam)]
            return tr.generate([encoded[i] for i in batch])

        def decode(ids: list[int]) -> str:
            return tr.sp.decode(ids)

        lengths = [len(e) for e in encoded]
        logits = tr.view(tr.target_of(encoded[0])).n_logits  # the output projection's width (target vocabulary)
    else:
        import ctranslate2
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
        model_dir = str(args.ct2_int8 if engine == "ct2-int8" else args.ct2_fp32)
        tr = ctranslate2.Translator(
            model_dir,
            device="cpu",
            intra_threads=threads,
            inter_threads=args.parts,  # its sub-batches (max_batch_size below) in parallel
            compute_type="int8" if engine == "ct2-int8" else "float32",
        )
        pieces = [sp.encode(s, out_type=str) for s in sources]
        lengths = [len(p) + 1 for p in pieces]
        logits = sp.get_piece_size()  # no vocabulary map: every piece's logit

        def run(batch: list[int]) -> list[list[int]]:
            limit = max(int(lengths[i] * 1.5) + 10 for i in batch)
            res = tr.translate_batch(
                [pieces[i] for i in batch],
                beam_size=beam,
                length_penalty=1.0,
                max_decoding_length=limit,
                max_batch_size=math.ceil(len(batch) / args.parts),
            )
            return [[sp.piece_to_id(t) for t in r.hypotheses[0]] for r in res]

        def decode(ids: list[int]) -> str:
            return sp.decode(ids)

    if args.parts > 1 and not engine.startswith("ct2"):  # CTranslate2 splits a batch itself
        run = in_parallel(run, args.parts)
    size = args.batch[0]
    batches = length_batches(len(sources), lengths, size)
    times, outputs = timed(run, batches, len(sources), args.repeats)
    tokens = sum(len(o) + 1 for o in outputs)  # + </s>
    print(
        json.dumps(
            {
                "engine": engine,
                "beam": beam,
                "batch": size,
                "seconds": times,
                "tokens": tokens,
                "hypotheses": [decode(o) for o in outputs],
                "workload": workload(batches, lengths, outputs),
                "peak_rss_mb": peak_rss_mb(),
                "logits": logits,
            }
        )
    )


def bundle_defaults(args: argparse.Namespace) -> dict:
    """With --bundle: the config, checkpoint and tokenizer it was released from, where not given
    (its manifest's training config, its `weights.pt`, its tokenizer); returns the manifest."""
    bundle = Path(args.bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    if args.config is None:
        source = manifest.get("training", {}).get("config", {}).get("source")
        if not source:
            raise SystemExit(f"{bundle}: its manifest names no training config; give --config")
        args.config = source
    if args.checkpoint is None:
        if not (bundle / "weights.pt").exists():
            raise SystemExit(f"{bundle}: no weights.pt; give --checkpoint")
        args.checkpoint = bundle / "weights.pt"
    if args.tokenizer is None:
        args.tokenizer = bundle / manifest["tokenizer"]
    return manifest


def default_split(cfg) -> str:
    """The config's first validation evaluation set (test sets are kept for the release)."""
    names = [s.split()[0] for s in cfg.data.eval_sets] + list(cfg.data.test_splits)
    return next((n for n in names if "valid" in n), "test_2016_flickr")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="a released bundle: engine `served` runs its graphs; config, weights from it")
    p.add_argument("--config", help="training config (default: the bundle's)")
    p.add_argument("--checkpoint", type=Path, help="weights (default: the bundle's weights.pt)")
    p.add_argument("--tokenizer", type=Path, help="SentencePiece model (default: the bundle's)")
    p.add_argument("--split", help="evaluation split (default: the config's first validation set)")
    p.add_argument("--limit", type=int, default=0, help="first N sentences only (0 = all)")
    p.add_argument(
        "--beam", type=int, nargs="+", default=[1], help="beam sizes, each a run (1 = greedy; torch engines: 1 only)"
    )
    p.add_argument("--direction", help="a multilingual config's direction to decode, e.g. de-en")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--ct2-threads",
        type=int,
        nargs="+",
        help="CTranslate2's intra-op threads, each a run of its own (default: --threads); its best counts "
        "(on 2-vCPU machines one thread can be several times faster than two: BENCHMARKS.md)",
    )
    p.add_argument(
        "--ort-threads",
        type=int,
        nargs="+",
        help="our engines' intra-op threads, each a run of its own (default: --threads); on a VM whose two "
        "vCPUs share a core's time a second thread can slow batch 1 down",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="batches cut into W parts decoded at once, each on a thread of its own with the run's threads "
        "(ours: as the service's decode workers; CTranslate2: inter_threads=W); each W a run of its own",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=3, help="passes over the split per worker run")
    p.add_argument(
        "--retain-freed-mb",
        type=int,
        default=64,
        help="glibc malloc retention in every worker, as the service (0: off)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="worker runs per engine, interleaved (each round runs every engine once; medians over all passes)",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        help=f"of {ENGINES}, or `ct2` for both CTranslate2 engines "
        "(default: served ct2 with --bundle, else all but served)",
    )
    p.add_argument(
        "--thread-pool",
        choices=["shared", "per-session"],
        default="shared",
        help="our engines: one onnxruntime thread pool for the encoder and decoder (the service's default) or one each",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/engines.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--sources", help=argparse.SUPPRESS)
    p.add_argument("--ort-bundle", help=argparse.SUPPRESS)
    p.add_argument("--bundle-c2", help=argparse.SUPPRESS)
    p.add_argument("--ct2-fp32", help=argparse.SUPPRESS)
    p.add_argument("--ct2-int8", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    manifest = bundle_defaults(args) if args.bundle else None
    if manifest is None and (args.checkpoint is None or args.tokenizer is None):
        raise SystemExit("give --bundle, or --checkpoint and --tokenizer")
    args.config = args.config or "training/configs/multi30k-de-en.toml"
    args.engines = engine_names(args.engines or (["served", "ct2"] if args.bundle else ENGINES[1:]))
    if "served" in args.engines and not args.bundle:
        raise SystemExit("engine `served` needs --bundle")

    from training.config import load_config
    from training.evaluate import translation_metrics
    from training.tasks import TranslationTask

    cfg = load_config(args.config)
    task = TranslationTask(cfg, tokenizer=None)  # type: ignore[arg-type]
    args.split = args.split or default_split(cfg)
    rows = task.raw(args.split)
    target = cfg.data.target_lang
    if cfg.data.directions:  # sources carry the target tag; every engine decodes them alike
        if not args.direction:
            raise SystemExit(f"a multilingual config needs --direction (one of {list(cfg.data.directions)})")
        rows = [r for r, d in zip(rows, task.row_directions[args.split]) if d == args.direction]
        target = args.direction.split("-")[1]
    rows = rows[: args.limit] if args.limit else rows
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    # One frozen copy of the weights for every engine (a training run may rewrite the original).
    shutil.copyfile(args.checkpoint, work / "model.pt")
    args.checkpoint = work / "model.pt"
    (work / "sources.json").write_text(json.dumps([r[0] for r in rows]))
    extra = [
        "--sources",
        str(work / "sources.json"),
        "--checkpoint",
        str(args.checkpoint),
        "--tokenizer",
        str(args.tokenizer),
    ]
    if args.bundle:
        extra += ["--bundle", str(Path(args.bundle).resolve())]
    if any(e.startswith("ort") for e in args.engines):
        from training.checkpoint import model_from_checkpoint
        from training.export import export_bundle
        from training.release import calibration_texts

        model = model_from_checkpoint(args.checkpoint)
        texts = [r[0] for r in rows[:20]]
        export_bundle(model, cfg, args.tokenizer, work / "bundle", texts, calibration_texts=calibration_texts(cfg))
        if cfg.task == "translation":  # as the release does: each target language's vocabulary
            from training.vocab import add_target_vocab

            add_target_vocab(work / "bundle", cfg, args.tokenizer)
        extra += ["--ort-bundle", str(work / "bundle")]
        if any(e.startswith("ort-c2-") for e in args.engines):
            export_bundle(
                model,
                cfg,
                args.tokenizer,
                work / "bundle-c2",
                texts,
                calibration_texts=calibration_texts(cfg),
                static_cache=False,
            )
            extra += ["--bundle-c2", str(work / "bundle-c2")]
    if any(e.startswith("ct2") for e in args.engines):
        from benchmarks.ct2_convert import convert

        convert(args.checkpoint, args.tokenizer, work / "ct2-fp32")
        convert(args.checkpoint, args.tokenizer, work / "ct2-int8", quantization="int8")
        extra += ["--ct2-fp32", str(work / "ct2-fp32"), "--ct2-int8", str(work / "ct2-int8")]

    if manifest:  # the model's sizes, for the products' count (matmul_macs)
        mc = manifest["model"]
    else:
        from training.checkpoint import load_checkpoint

        mc = load_checkpoint(args.checkpoint)["model_config"]
    dims = (mc["d_model"], mc["d_ff"], mc["n_encoder_layers"], mc["n_decoder_layers"])

    results, signature = [], ""
    runs = [
        (engine, t, w)
        for engine in args.engines
        for t in (
            (args.ct2_threads or [args.threads])
            if engine.startswith("ct2")
            else (args.ort_threads or [args.threads])
            if engine.startswith("ort") or engine == "served"
            else [args.threads]
        )
        for w in (args.workers if not engine.startswith("torch") else [1])
    ]

    def measure(engine: str, threads: int, workers: int, beam: int, batch: int, repeats: int) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            engine,
            "--batch",
            str(batch),
            "--threads",
            str(threads),
            "--parts",
            str(workers),
            "--repeats",
            str(repeats),
            "--thread-pool",
            args.thread_pool,
            "--beam",
            str(beam),
            "--retain-freed-mb",
            str(args.retain_freed_mb),
            *extra,
        ]
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    for beam in args.beam:
        beam_runs = [r for r in runs if beam == 1 or not r[0].startswith("torch")]  # torch: greedy only
        for batch in args.batch:
            # Rounds: every engine once per round, in turn, so that a slow minute of this shared
            # machine falls on all of them (one engine's passes in a row can be far apart from
            # the same engine's later in the run); a discarded first pass warms it up.
            if args.rounds > 1:
                measure(*beam_runs[0], beam, batch, 1)
            measured: dict[tuple[str, int, int], dict] = {}
            for _ in range(args.rounds):
                for run in beam_runs:
                    r = measure(*run, beam, batch, args.repeats)
                    if run in measured:
                        measured[run]["seconds"] += r["seconds"]
                        measured[run]["peak_rss_mb"] = max(measured[run]["peak_rss_mb"], r["peak_rss_mb"])
                    else:
                        measured[run] = r
            for engine, threads, workers in beam_runs:
                name = engine if threads == args.threads else f"{engine}@{threads}t"
                name += f"x{workers}w" if workers > 1 else ""
                r = measured[engine, threads, workers]
                r.update(engine=name, threads=threads, workers=workers)
                median = statistics.median(r["seconds"])
                m = translation_metrics(r["hypotheses"], [x[1] for x in rows], target)
                signature = m["bleu_signature"]
                r.update(
                    median_s=median,
                    sentences_per_s=len(rows) / median,
                    tokens_per_s=r["tokens"] / median,
                    bleu=m["bleu"],
                    bleu_lc_tok=m.get("bleu_lc_tok"),
                )
                if beam == 1:  # greedy: the rows of each step are known from the outputs (beam: not recorded)
                    macs = matmul_macs(r["workload"], *dims, r["logits"])
                    total = macs["encoder"] + macs["decoder"]
                    r.update(
                        matmul_macs_per_token=total / r["tokens"],
                        encoder_share_of_macs=macs["encoder"] / total,
                        achieved_gmac_per_s=total / median / 1e9,
                    )
                results.append(r)
                print(
                    f"{name:18s} beam {beam} batch {batch:3d}: {r['sentences_per_s']:8.1f} sent/s "
                    f"{r['tokens_per_s']:9.1f} tok/s rss {r['peak_rss_mb']:6.0f} MB  BLEU {m['bleu']:.2f} "
                    f"(lc-tok {m['bleu_lc_tok']:.2f})",
                    flush=True,
                )

    for beam in args.beam:
        for batch in args.batch:
            group = [r for r in results if r["batch"] == batch and r["beam"] == beam]
            # the fp32 reference: ort-fp32 as asked (--threads, one worker), else its first run
            fp32 = [r for r in group if r["engine"].split("@")[0].split("x")[0] == "ort-fp32"]
            ref = next((r for r in fp32 if r["engine"] == "ort-fp32"), fp32[0] if fp32 else None)
            ct2 = [r for r in group if r["engine"].startswith("ct2")]
            best_ct2 = max(ct2, key=lambda r: r["tokens_per_s"]) if ct2 else None
            nocache = next((r for r in group if r["engine"] == "torch-nocache"), None)
            for r in group:
                if ref:
                    same = sum(a == b for a, b in zip(r["hypotheses"], ref["hypotheses"]))
                    r["identical_to_ort_fp32"] = same / len(rows)
                    r["bleu_minus_ort_fp32"] = r["bleu"] - ref["bleu"]
                if best_ct2:
                    r["ratio_to_best_ct2"] = r["tokens_per_s"] / best_ct2["tokens_per_s"]
                    r["best_ct2"] = best_ct2["engine"]
                if nocache:
                    r["ratio_to_torch_nocache"] = r["tokens_per_s"] / nocache["tokens_per_s"]
    print(
        "\n| engine | beam | batch | sentences/s | tokens/s | peak RSS MB | BLEU | BLEU lc-tok | identical to ort-fp32 "
        "| x best CT2 | x torch no-cache |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} | {r['beam']} | {r['batch']} | {r['sentences_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['bleu']:.2f} | {r['bleu_lc_tok']:.2f} | "
            f"{100 * r.get('identical_to_ort_fp32', float('nan')):.1f}% | "
            f"{r.get('ratio_to_best_ct2', float('nan')):.2f} | "
            f"{r.get('ratio_to_torch_nocache', float('nan')):.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = describe()  # the CPU model and flags decide the kernels (MLAS, oneDNN): with every row
    common = {
        "command": " ".join(sys.argv),
        "bundle": args.bundle,
        "split": args.split,
        "direction": args.direction,
        "sentences": len(rows),
        "thread_pool": args.thread_pool,
        "bleu_signature": signature,
        "machine": machine,
    }
    for r in results:
        r.pop("hypotheses")
        r.update(common)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def result_rows(data) -> list[dict]:
    """An engines.py result file's rows: a list (older files: a dict with `results`)."""
    return data if isinstance(data, list) else data["results"]


if __name__ == "__main__":
    main()
