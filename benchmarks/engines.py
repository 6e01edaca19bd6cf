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

On a model of a given size instead (`--model-size base`: transformer-base with random weights, its bundle
and CTranslate2 conversions built once and cached by benchmarks/base_model.py; Tatoeba de-en valid sources):

    python -m benchmarks.engines --model-size base --limit 192 --beam 1 --batch 32 \
        --engines ort-int8-static ct2-int8 --threads 1 --ort-threads 1 2 --ct2-threads 1 2 --workers 1 2 \
        --repeats 1 --rounds 3 --out benchmarks/results/engines-base.json

The model never ends a sentence (its logits bias on </s>), so every engine decodes every sentence to
`--output-length` tokens (default: the sources' mean length) and the rows' token counts are equal (checked
and recorded: `tokens_equal_across_engines`); `fp32_agreement` is the greedy agreement of our fp32 graphs
and CTranslate2 float32 on the same weights. There `served` is the export's default variant (fp32: the
release's variant rule is not run on random weights; on every shipped model it picked int8-static).

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

Each engine family is an adapter (`Engine`) with the same methods: `prepare` (in this process:
what its workers need, exported or converted from the checkpoint), the configurations it runs in,
and in a worker: opened on the sources, `translate` (a batch, greedy or beam), `source_tokens`
(its own tokenization, for batching alike and the workload) and `texts` (for BLEU). `main` parses
the arguments, runs every configuration and writes the rows.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import length_batches, open_translator, status_mb, timed
from benchmarks.machine import describe
from service.runtime.allocator import retain_freed_memory

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
DEFAULT_MODEL_SIZE_ENGINES = ["ort-fp32", "ort-int8-static", "ct2"]  # --model-size without --engines

Run = tuple[str, int, int]  # (engine, threads, workers): one configuration, a worker process per batch size


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


# -- the engines: one adapter per family --------------------------------------------------------


class Engine:
    """An engine family under test. In this process: `prepare` makes what its workers need and
    returns their arguments; `threads` and `workers` are the configurations it runs in. In a
    worker process (one per engine, configuration and batch size, so that its peak RSS is its
    own): opened on the split's sources, it translates batches of their indices (the best
    hypothesis's target ids), counts each source's tokens in its own tokenization and turns
    outputs into text. Its imports happen when it is opened: a worker loads one engine's
    libraries only."""

    greedy_only = False  # no beam search: its rows are left out of beam runs
    splits_batches = False  # runs a batch's `--workers` parts in parallel itself
    logits = 0  # the output projection's width: the columns a token's products cover

    def __init__(self, name: str, args: argparse.Namespace, sources: list[str]) -> None:
        self.name = name

    @classmethod
    def prepare(cls, names: list[str], args: argparse.Namespace, cfg: Any, rows: list, work: Path) -> list[str]:
        """Build what the workers of `names` need from the run's checkpoint into `work`; their
        extra arguments."""
        return []

    @classmethod
    def threads(cls, args: argparse.Namespace) -> list[int]:
        """The intra-op thread counts to run it with, each a configuration of its own."""
        return [args.threads]

    @classmethod
    def workers(cls, args: argparse.Namespace) -> list[int]:
        """The numbers of parts a batch is decoded in at once, each a configuration of its own."""
        return args.workers

    def translate(self, batch: list[int], beam: int) -> list[list[int]]:
        """Each source of `batch` (indices) translated, greedy (`beam` 1) or by beam search: the
        best hypothesis's target ids, without </s>."""
        raise NotImplementedError

    def source_tokens(self) -> list[int]:
        """Each source's length in this engine's tokens, </s> included."""
        raise NotImplementedError

    def texts(self, outputs: list[list[int]]) -> list[str]:
        """The text of each output."""
        raise NotImplementedError


class TorchEngine(Engine):
    """PyTorch eager greedy decoding of the checkpoint, without (`torch-nocache`) or with
    (`torch-cache`) the KV cache: the reference the exported engines are measured against."""

    greedy_only = True

    def __init__(self, name: str, args: argparse.Namespace, sources: list[str]) -> None:
        import torch

        from training.checkpoint import model_from_checkpoint
        from training.evaluate import encode_source, pad_batch
        from training.tokenizer import Tokenizer

        super().__init__(name, args, sources)
        torch.set_num_threads(args.threads)
        self.model = model_from_checkpoint(Path(args.checkpoint))
        self.tok = Tokenizer(Path(args.tokenizer))
        self.encoded = [encode_source(self.tok, s, self.model.cfg.max_len) for s in sources]
        self.use_cache, self.pad_batch = name == "torch-cache", pad_batch
        self.logits = self.model.cfg.vocab_size

    @classmethod
    def workers(cls, args: argparse.Namespace) -> list[int]:
        return [1]

    def translate(self, batch: list[int], beam: int) -> list[list[int]]:
        src = self.pad_batch([self.encoded[i] for i in batch], 0)
        return self.model.greedy_decode(src, use_cache=self.use_cache)

    def source_tokens(self) -> list[int]:
        return [len(e) for e in self.encoded]

    def texts(self, outputs: list[list[int]]) -> list[str]:
        return [self.tok.decode(o) for o in outputs]


class OurEngine(Engine):
    """The service's Translator (`benchmarks.common.open_translator`, the run's thread pool):
    `served` on the released bundle as shipped (its default variant, target vocabularies on);
    `ort-<variant>` on a bundle exported from the checkpoint as the release exports it, `ort-fv-`
    without its target vocabularies, `ort-c2-` with the decoder of graph contract 2."""

    def __init__(self, name: str, args: argparse.Namespace, sources: list[str]) -> None:
        super().__init__(name, args, sources)
        contract2, full_vocab = name.startswith("ort-c2-"), name.startswith("ort-fv-")
        if name == "served":  # the released bundle as shipped, its default variant
            bundle, variant = args.bundle, None
        else:
            bundle = args.bundle_c2 if contract2 else args.ort_bundle
            variant = name.removeprefix("ort-").removeprefix("c2-").removeprefix("fv-")
        shared = args.thread_pool == "shared"  # as the service does by default
        fixed = {"max_output_ratio": 0.0, "max_output_extra": args.output_length} if args.output_length else {}
        self.tr = open_translator(
            bundle, args.threads, variant, shared_pool=shared, target_vocab=not full_vocab, **fixed
        )
        self.encoded = self.tr.encode(sources)
        self.logits = self.tr.view(self.tr.target_of(self.encoded[0])).n_logits  # a target vocabulary's width

    @classmethod
    def prepare(cls, names: list[str], args: argparse.Namespace, cfg: Any, rows: list, work: Path) -> list[str]:
        if not any(e.startswith("ort") for e in names):  # `served` runs the released bundle itself
            return []
        if args.model_size:  # the model's own bundle, exported (and cached) with it: benchmarks/base_model.py
            if any(e.startswith(("ort-c2-", "ort-fv-")) for e in names):
                raise SystemExit("--model-size: engines ort-c2-* and ort-fv-* are not built (no second export)")
            return ["--ort-bundle", str(args.bundle)]
        from training.checkpoint import model_from_checkpoint
        from training.export import export_bundle
        from training.release import calibration_texts

        model = model_from_checkpoint(args.checkpoint)
        texts, calibration = [r[0] for r in rows[:20]], calibration_texts(cfg)
        export_bundle(model, cfg, args.tokenizer, work / "bundle", texts, calibration_texts=calibration)
        if cfg.task == "translation":  # as the release does: each target language's vocabulary
            from training.vocab import add_target_vocab

            add_target_vocab(work / "bundle", cfg, args.tokenizer)
        extra = ["--ort-bundle", str(work / "bundle")]
        if any(e.startswith("ort-c2-") for e in names):
            c2 = work / "bundle-c2"
            export_bundle(model, cfg, args.tokenizer, c2, texts, calibration_texts=calibration, static_cache=False)
            extra += ["--bundle-c2", str(c2)]
        return extra

    @classmethod
    def threads(cls, args: argparse.Namespace) -> list[int]:
        return args.ort_threads or [args.threads]

    def translate(self, batch: list[int], beam: int) -> list[list[int]]:
        sources = [self.encoded[i] for i in batch]
        if beam > 1:
            return [h[0].tokens for h in self.tr.generate_nbest(sources, beam)]
        return self.tr.generate(sources)

    def source_tokens(self) -> list[int]:
        return [len(e) for e in self.encoded]

    def texts(self, outputs: list[list[int]]) -> list[str]:
        return self.tr.text.decode(outputs)


class CT2Engine(Engine):
    """CTranslate2 on the checkpoint converted by benchmarks/ct2_convert.py, float32 (`ct2-fp32`)
    or int8 (`ct2-int8`); `--workers` W: its own parallel sub-batches (`inter_threads=W`,
    `max_batch_size` = batch / W). No vocabulary map: every piece's logit, as it runs by default."""

    splits_batches = True

    def __init__(self, name: str, args: argparse.Namespace, sources: list[str]) -> None:
        import ctranslate2
        import sentencepiece as spm

        super().__init__(name, args, sources)
        self.sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
        int8, self.parts = name == "ct2-int8", args.parts
        self.tr = ctranslate2.Translator(
            str(args.ct2_int8 if int8 else args.ct2_fp32),
            device="cpu",
            intra_threads=args.threads,
            inter_threads=self.parts,  # its sub-batches (max_batch_size below) in parallel
            compute_type="int8" if int8 else "float32",
        )
        self.pieces = [self.sp.encode(s, out_type=str) for s in sources]
        self.lengths = [len(p) + 1 for p in self.pieces]  # + </s> (add_source_eos)
        self.output_length = args.output_length
        self.logits = self.sp.get_piece_size()

    @classmethod
    def prepare(cls, names: list[str], args: argparse.Namespace, cfg: Any, rows: list, work: Path) -> list[str]:
        if not names:
            return []
        if args.model_size:  # converted (and cached) with the model: benchmarks/base_model.py
            return ["--ct2-fp32", str(args.built.ct2_fp32), "--ct2-int8", str(args.built.ct2_int8)]
        from benchmarks.ct2_convert import convert

        convert(args.checkpoint, args.tokenizer, work / "ct2-fp32")
        convert(args.checkpoint, args.tokenizer, work / "ct2-int8", quantization="int8")
        return ["--ct2-fp32", str(work / "ct2-fp32"), "--ct2-int8", str(work / "ct2-int8")]

    @classmethod
    def threads(cls, args: argparse.Namespace) -> list[int]:
        return args.ct2_threads or [args.threads]

    def translate(self, batch: list[int], beam: int) -> list[list[int]]:
        # our rule is per row, CTranslate2's one length per call: with --output-length both are that length
        limit = self.output_length or max(int(self.lengths[i] * 1.5) + 10 for i in batch)
        res = self.tr.translate_batch(
            [self.pieces[i] for i in batch],
            beam_size=beam,
            length_penalty=1.0,  # score / length, as ours
            max_decoding_length=limit,
            max_batch_size=math.ceil(len(batch) / self.parts),
        )
        return [[self.sp.piece_to_id(t) for t in r.hypotheses[0]] for r in res]

    def source_tokens(self) -> list[int]:
        return self.lengths

    def texts(self, outputs: list[list[int]]) -> list[str]:
        return [self.sp.decode(o) for o in outputs]


FAMILIES: tuple[type[Engine], ...] = (TorchEngine, OurEngine, CT2Engine)  # prepared in this order


def adapter(engine: str) -> type[Engine]:
    """The family of an engine name."""
    if engine.startswith("torch"):
        return TorchEngine
    return CT2Engine if engine.startswith("ct2") else OurEngine


# -- bookkeeping of a run (pure) ----------------------------------------------------------------


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
    """This process's peak resident set (VmHWM: unlike ru_maxrss it starts afresh at exec, so a
    worker does not inherit the parent's high-water mark)."""
    try:
        return status_mb("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result_rows(data) -> list[dict]:
    """An engines.py result file's rows: a list (older files: a dict with `results`)."""
    return data if isinstance(data, list) else data["results"]


# -- a worker process: one engine, one configuration, one batch size ----------------------------


def worker(args: argparse.Namespace) -> None:
    """Decode the split `repeats` times; print one JSON row (seconds of each pass, tokens,
    hypotheses, workload, peak RSS, logits)."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    retain_freed_memory(args.retain_freed_mb)  # the service's default, for every engine alike
    sources = json.loads(Path(args.sources).read_text())
    beam, size = args.beam[0], args.batch[0]
    engine = adapter(args.worker)(args.worker, args, sources)

    def run(batch: list[int]) -> list[list[int]]:
        return engine.translate(batch, beam)

    if args.parts > 1 and not engine.splits_batches:
        run = in_parallel(run, args.parts)
    lengths = engine.source_tokens()
    batches = length_batches(len(sources), lengths, size)
    cpu: list[float] = []
    times, outputs = timed(run, batches, len(sources), args.repeats, cpu)
    row = {"engine": args.worker, "beam": beam, "batch": size, "seconds": times, "cpu_seconds": cpu}
    row["tokens"] = sum(len(o) + 1 for o in outputs)  # + </s>
    row["hypotheses"] = engine.texts(outputs)
    row["workload"] = workload(batches, lengths, outputs)
    row.update(peak_rss_mb=peak_rss_mb(), logits=engine.logits)
    print(json.dumps(row))


# -- the run ------------------------------------------------------------------------------------


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


def model_size_defaults(args: argparse.Namespace) -> dict:
    """With --model-size: the model of that size (benchmarks/base_model.py, built or taken from
    its cache) is the run's checkpoint, tokenizer and bundle (`served`: its default variant; `ort-*`:
    its variants); CTranslate2 runs its cached conversions. Returns the bundle's manifest."""
    from benchmarks.base_model import RUN_CONFIG, build

    if args.bundle or args.checkpoint or args.tokenizer:
        raise SystemExit("--model-size builds its own model: no --bundle, --checkpoint or --tokenizer")
    int8 = any(e.startswith("ort-int8") for e in engine_names(args.engines or DEFAULT_MODEL_SIZE_ENGINES))
    args.built = build(args.model_size, args.seed, args.cache_dir, int8=int8, log=lambda m: print(m, flush=True))
    args.bundle, args.checkpoint, args.tokenizer = args.built.bundle, args.built.checkpoint, args.built.tokenizer
    if args.target_vocab:  # our engines decode into English's pieces only, as `multi` is served
        from benchmarks.base_model import with_target_vocab

        args.bundle = with_target_vocab(args.built)
    args.config = args.config or str(RUN_CONFIG)
    return json.loads((args.bundle / "manifest.json").read_text())


def checked_args(args: argparse.Namespace) -> dict | None:
    """Defaults filled in from --bundle (or --model-size) and the engines' names expanded; the
    bundle's manifest."""
    if args.model_size:
        manifest = model_size_defaults(args)
        args.engines = engine_names(args.engines or DEFAULT_MODEL_SIZE_ENGINES)
        return manifest
    manifest = bundle_defaults(args) if args.bundle else None
    if manifest is None and (args.checkpoint is None or args.tokenizer is None):
        raise SystemExit("give --bundle, or --checkpoint and --tokenizer")
    args.config = args.config or "training/configs/multi30k-de-en.toml"
    args.engines = engine_names(args.engines or (["served", "ct2"] if args.bundle else ENGINES[1:]))
    if "served" in args.engines and not args.bundle:
        raise SystemExit("engine `served` needs --bundle")
    return manifest


def load_split(args: argparse.Namespace) -> tuple[Any, list[tuple[str, str]], str]:
    """The config, the (source, reference) rows to decode and the target language."""
    from training.config import load_config
    from training.tasks import TranslationTask

    cfg = load_config(args.config)
    if args.model_size:  # Tatoeba de-en (German sources, as the tokenizer was trained on)
        from benchmarks.base_model import read_lines

        args.split = args.split or "valid"
        rows = list(zip(read_lines(args.split, "de"), read_lines(args.split, "en")))
        return cfg, rows[: args.limit] if args.limit else rows, "en"
    task = TranslationTask(cfg, tokenizer=None)  # type: ignore[arg-type]
    args.split = args.split or default_split(cfg)
    rows = task.raw(args.split)
    target = cfg.data.target_lang
    if cfg.data.directions:  # sources carry the target tag; every engine decodes them alike
        if not args.direction:
            raise SystemExit(f"a multilingual config needs --direction (one of {list(cfg.data.directions)})")
        rows = [r for r, d in zip(rows, task.row_directions[args.split]) if d == args.direction]
        target = args.direction.split("-")[1]
    return cfg, rows[: args.limit] if args.limit else rows, target


def prepare(args: argparse.Namespace, cfg: Any, rows: list[tuple[str, str]]) -> list[str]:
    """A work folder with the sources, one frozen copy of the weights for every engine (a training
    run may rewrite the original) and what each family's workers need; the workers' arguments."""
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if not args.model_size:  # its cache is written once, by the build
        shutil.copyfile(args.checkpoint, work / "model.pt")
        args.checkpoint = work / "model.pt"
    (work / "sources.json").write_text(json.dumps([r[0] for r in rows]))
    extra = ["--sources", str(work / "sources.json"), "--checkpoint", str(args.checkpoint)]
    extra += ["--tokenizer", str(args.tokenizer)]
    if args.model_size and not args.output_length:  # as long as the sources, on average (</s> included)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
        lengths = [len(sp.encode(r[0])) + 1 for r in rows]
        args.output_length = math.ceil(sum(lengths) / len(lengths))
    if args.output_length:
        extra += ["--output-length", str(args.output_length)]
    if args.bundle:
        extra += ["--bundle", str(Path(args.bundle).resolve())]
    for family in FAMILIES:
        extra += family.prepare([e for e in args.engines if adapter(e) is family], args, cfg, rows, work)
    return extra


def model_dims(args: argparse.Namespace, manifest: dict | None) -> tuple[int, int, int, int]:
    """The model's sizes, for the products' count (matmul_macs)."""
    if manifest:
        mc = manifest["model"]
    else:
        from training.checkpoint import load_checkpoint

        mc = load_checkpoint(args.checkpoint)["model_config"]
    return mc["d_model"], mc["d_ff"], mc["n_encoder_layers"], mc["n_decoder_layers"]


def configurations(args: argparse.Namespace) -> list[Run]:
    """Every (engine, threads, workers) asked for, in the order they run."""
    return [
        (engine, threads, workers)
        for engine in args.engines
        for threads in adapter(engine).threads(args)
        for workers in adapter(engine).workers(args)
    ]


def measure(args: argparse.Namespace, extra: list[str], run: Run, beam: int, batch: int, repeats: int) -> dict:
    """One worker process: `run` at `beam` and `batch`, `repeats` passes; its JSON row."""
    engine, threads, workers = run
    cmd = [sys.executable, __file__, "--worker", engine, "--batch", str(batch), "--threads", str(threads)]
    cmd += ["--parts", str(workers), "--repeats", str(repeats), "--thread-pool", args.thread_pool]
    cmd += ["--beam", str(beam), "--retain-freed-mb", str(args.retain_freed_mb), *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_rounds(args: argparse.Namespace, extra: list[str], runs: list[Run], beam: int, batch: int) -> dict:
    """Every configuration once per round, in turn, so that a slow minute of this shared machine
    falls on all of them (one engine's passes in a row can be far apart from the same engine's
    later in the run); with rounds, a discarded first pass warms the machine up. The passes of a
    configuration's rounds are pooled (its peak RSS: the highest)."""
    if args.rounds > 1:
        measure(args, extra, runs[0], beam, batch, 1)
    measured: dict[Run, dict] = {}
    for _ in range(args.rounds):
        for run in runs:
            r = measure(args, extra, run, beam, batch, args.repeats)
            if run in measured:
                measured[run]["seconds"] += r["seconds"]
                measured[run]["cpu_seconds"] += r["cpu_seconds"]
                measured[run]["peak_rss_mb"] = max(measured[run]["peak_rss_mb"], r["peak_rss_mb"])
            else:
                measured[run] = r
    return measured


def scored(
    args: argparse.Namespace, r: dict, run: Run, rows: list, target: str, dims: tuple[int, int, int, int]
) -> tuple[dict, str]:
    """A configuration's row named (`engine@Nt` when not at --threads, `xWw` with workers), its
    medians, BLEU and (greedy) products per token; printed; with the BLEU signature."""
    engine, threads, workers = run
    name = engine if threads == args.threads else f"{engine}@{threads}t"
    name += f"x{workers}w" if workers > 1 else ""
    r.update(engine=name, threads=threads, workers=workers)
    from training.evaluate import translation_metrics

    median = statistics.median(r["seconds"])
    m = translation_metrics(r["hypotheses"], [x[1] for x in rows], target)
    r.update(median_s=median, sentences_per_s=len(rows) / median, tokens_per_s=r["tokens"] / median)
    r["tokens_per_cpu_s"] = r["tokens"] / statistics.median(r["cpu_seconds"])  # all its threads' CPU time
    r.update(bleu=m["bleu"], bleu_lc_tok=m.get("bleu_lc_tok"))
    if r["beam"] == 1:  # greedy: the rows of each step are known from the outputs (beam: not recorded)
        macs = matmul_macs(r["workload"], *dims, r["logits"])
        total = macs["encoder"] + macs["decoder"]
        r.update(matmul_macs_per_token=total / r["tokens"], encoder_share_of_macs=macs["encoder"] / total)
        r.update(achieved_gmac_per_s=total / median / 1e9)
    print(
        f"{name:18s} beam {r['beam']} batch {r['batch']:3d}: {r['sentences_per_s']:8.1f} sent/s "
        f"{r['tokens_per_s']:9.1f} tok/s ({r['tokens_per_cpu_s']:.1f} per CPU-s) rss {r['peak_rss_mb']:6.0f} MB "
        f"BLEU {m['bleu']:.2f} "
        f"(lc-tok {m['bleu_lc_tok']:.2f})",
        flush=True,
    )
    return r, m["bleu_signature"]


def compare(results: list[dict], beams: list[int], batches: list[int], n: int) -> None:
    """Each row against the others of its beam and batch: agreement with and BLEU over ort-fp32
    (as asked: at --threads, one worker; else its first run), the ratio to CTranslate2's fastest
    engine and to PyTorch without cache."""
    for beam in beams:
        for batch in batches:
            group = [r for r in results if r["batch"] == batch and r["beam"] == beam]
            fp32 = [r for r in group if r["engine"].split("@")[0].split("x")[0] == "ort-fp32"]
            ref = next((r for r in fp32 if r["engine"] == "ort-fp32"), fp32[0] if fp32 else None)
            ct2 = [r for r in group if r["engine"].startswith("ct2")]
            best_ct2 = max(ct2, key=lambda r: r["tokens_per_s"]) if ct2 else None
            nocache = next((r for r in group if r["engine"] == "torch-nocache"), None)
            for r in group:
                if ref:
                    r["identical_to_ort_fp32"] = sum(a == b for a, b in zip(r["hypotheses"], ref["hypotheses"])) / n
                    r["bleu_minus_ort_fp32"] = r["bleu"] - ref["bleu"]
                if best_ct2:
                    r["ratio_to_best_ct2"] = r["tokens_per_s"] / best_ct2["tokens_per_s"]
                    r["best_ct2"] = best_ct2["engine"]
                if nocache:
                    r["ratio_to_torch_nocache"] = r["tokens_per_s"] / nocache["tokens_per_s"]


def print_table(results: list[dict]) -> None:
    """The rows as a Markdown table (BENCHMARKS.md's)."""
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


def write_results(args: argparse.Namespace, results: list[dict], sentences: int, signature: str) -> None:
    """The rows, without their hypotheses, each with the run's command, split, sentences and
    machine (the CPU model and flags decide the kernels: MLAS, oneDNN), as a JSON list."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    common = {
        "command": " ".join(sys.argv),
        "bundle": str(args.bundle) if args.bundle else None,
        "split": args.split,
        "direction": args.direction,
        "sentences": sentences,
        "thread_pool": args.thread_pool,
        "bleu_signature": signature,
        "machine": describe(),
    }
    for r in results:
        r.pop("hypotheses")
        r.update(common)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


def parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--model-size",
        choices=["base", "tiny"],
        help="no released bundle: a model of this size with random weights (benchmarks/base_model.py: "
        "transformer-base, or tiny for tests), our bundle and CTranslate2 conversions of the same weights, "
        "cached under --cache-dir; sources Tatoeba de-en (--split, default valid); every sentence decoded "
        "to --output-length tokens by every engine",
    )
    p.add_argument("--seed", type=int, default=0, help="--model-size: the weights' seed (part of the cache key)")
    p.add_argument("--cache-dir", type=Path, default=Path("/work/runs/base-bench"), help="--model-size: its cache")
    p.add_argument(
        "--output-length",
        type=int,
        default=0,
        help="decode every sentence to this many tokens (ours: output limit ratio 0, extra N; CTranslate2: "
        "max_decoding_length N), for models that never end a sentence (--model-size: </s> biased away); "
        "0: the usual rule, and with --model-size the sources' mean length",
    )
    p.add_argument(
        "--target-vocab",
        action="store_true",
        help="--model-size: our engines on a copy of the bundle with an English target vocabulary "
        "(the output projection cut to the pieces of the Tatoeba English training text; cached)",
    )
    p.add_argument(
        "--agreement",
        type=int,
        default=64,
        help="--model-size: greedy agreement of our fp32 graphs and CTranslate2 float32 on this many sources, "
        "checked before the timed runs (0: not checked)",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/engines.json"))
    # a worker's own arguments (measure): the engine, its number of parts, the files prepared for it
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    for hidden in ("--sources", "--ort-bundle", "--bundle-c2", "--ct2-fp32", "--ct2-int8"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.worker:
        worker(args)
        return
    manifest = checked_args(args)
    cfg, rows, target = load_split(args)
    extra = prepare(args, cfg, rows)
    agreement = (
        fp32_agreement(args, [r[0] for r in rows], args.agreement) if args.model_size and args.agreement else None
    )
    dims = model_dims(args, manifest)
    results, signature = [], ""
    for beam in args.beam:
        runs = [run for run in configurations(args) if beam == 1 or not adapter(run[0]).greedy_only]
        for batch in args.batch:
            measured = measure_rounds(args, extra, runs, beam, batch)
            for run in runs:
                row, signature = scored(args, measured[run], run, rows, target, dims)
                results.append(row)
    compare(results, args.beam, args.batch, len(rows))
    print_table(results)
    if args.model_size:
        counts = token_counts(results)
        print(f"\ntarget tokens per engine (every sentence {args.output_length} tokens + </s>): {counts}")
        print(f"greedy agreement, our fp32 graphs vs CTranslate2 float32: {agreement}")
        for r in results:
            r.update(model_size=args.model_size, seed=args.seed, output_length=args.output_length)
            r.update(tokens_equal_across_engines=counts[f"beam {r['beam']} batch {r['batch']}"]["equal"])
            r["fp32_agreement"] = agreement
    write_results(args, results, len(rows), signature)


def token_counts(results: list[dict]) -> dict[str, dict]:
    """Each (beam, batch)'s target tokens per engine configuration, and whether they are all equal
    (the speed comparison of a model that never ends a sentence is fair only then)."""
    groups: dict[str, dict] = {}
    for r in results:
        groups.setdefault(f"beam {r['beam']} batch {r['batch']}", {})[r["engine"]] = r["tokens"]
    return {key: {**g, "equal": len(set(g.values())) == 1} for key, g in groups.items()}


def fp32_agreement(args: argparse.Namespace, sources: list[str], n: int = 64, batch: int = 32) -> dict:
    """Greedy tokens of our fp32 graphs and CTranslate2 float32 on the same weights, the first `n`
    sources in batches of `batch` (in this process, 1 thread; our loop guard off: CTranslate2 has
    none): identical sentences, identical tokens position by position, and the mean position of the
    first difference (random weights: near-ties between logits decide, so rounding differences
    between the engines' kernels show as late divergences)."""
    import ctranslate2
    import sentencepiece as spm

    sources = sources[:n]
    limit = args.output_length
    tr = open_translator(args.built.bundle, 1, "fp32", max_output_ratio=0.0, max_output_extra=limit)
    tr.loop_guard = None
    encoded = tr.encode(sources)
    ours = [o for i in range(0, len(encoded), batch) for o in tr.generate(encoded[i : i + batch])]
    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    ct = ctranslate2.Translator(str(args.built.ct2_fp32), device="cpu", intra_threads=1, compute_type="float32")
    res = ct.translate_batch(
        [sp.encode(s, out_type=str) for s in sources], beam_size=1, max_decoding_length=limit, max_batch_size=batch
    )
    theirs = [[sp.piece_to_id(t) for t in r.hypotheses[0]] for r in res]
    same = sum(a == b for o, t in zip(ours, theirs) for a, b in zip(o, t))
    pairs = list(zip(ours, theirs))
    firsts = [next((j for j, (a, b) in enumerate(zip(o, t)) if a != b), min(len(o), len(t))) for o, t in pairs]
    return {
        "sentences": len(sources),
        "identical_sentences": sum(o == t for o, t in zip(ours, theirs)) / len(sources),
        "identical_tokens": same / max(1, sum(max(len(o), len(t)) for o, t in zip(ours, theirs))),
        "mean_first_difference": sum(firsts) / len(firsts),
        "lengths_ours": sorted({len(o) for o in ours}),
        "lengths_ct2": sorted({len(t) for t in theirs}),
    }


if __name__ == "__main__":
    main()
