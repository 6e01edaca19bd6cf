"""ONNX export: graphs, onnx.checker, PyTorch parity, int8 quantization, bundle writing.

The bundle is written through ``service.runtime.bundle`` (the one module that knows the format) and
checked with the service's own engines, so what is verified here is exactly what is served.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    matmul_nbits_quantizer,
    quant_utils,
    quantize_dynamic,
    quantize_static,
)
from torch import Tensor, nn

from service.runtime import graph_io
from service.runtime.bundle import GraphSpec, Manifest, TensorSpec, sha256_file, write_manifest
from service.runtime.classifier import Classifier
from service.runtime.codec import CodecSpec
from service.runtime.preprocess import DECODING
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from training.config import RunConfig
from training.data import CORPORA
from training.evaluate import encode_classifier_input, pad_batch
from training.onnx_graphs import align_layer, build_decoder_step, build_encoder
from training.tokenizer import SPECIAL_IDS, Tokenizer
from training.transformer import Seq2SeqTransformer, TransformerClassifier, count_parameters

log = logging.getLogger(__name__)

OPSET = 17
PARITY_ATOL = 1e-3  # max |logit difference| between PyTorch and onnxruntime fp32


class ClassifierGraph(nn.Module):
    """ids (B, T) -> label probabilities (B, n_labels)."""

    def __init__(self, model: TransformerClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return torch.softmax(self.model(ids), dim=-1)


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> GraphSpec:
    dynamic = {
        t.name: {
            i: d
            for i, d in enumerate(t.shape)
            if isinstance(d, str) and d not in ("heads", "head_dim", "vocab", "labels")
        }
        for t in inputs + outputs
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[t.name for t in inputs],
            output_names=[t.name for t in outputs],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return GraphSpec(file=path.name, inputs=inputs, outputs=outputs)


def export_translation_graphs(
    model: Seq2SeqTransformer, out: Path, static_cache: bool = True, alignment_in_graph: bool = False
) -> dict[str, GraphSpec]:
    """The encoder and the decoder step, both built node by node with onnxruntime's fused
    attention (training.onnx_graphs), faster than what ``torch.onnx.export`` traces (BENCHMARKS.md).
    Every layer's keys and values are separate inputs and outputs. `static_cache`: the decoder
    of graph contract 3 (fixed-width caches written in place), else contract 2.
    `alignment_in_graph`: the decoder computes the `alignment` weights at every step, as older
    bundles do (for tests that such bundles are still served), instead of
    outputting the query the engine computes them from when asked."""
    model.eval()
    enc_path = out / "encoder.onnx"
    onnx.save(build_encoder(model), str(enc_path))
    enc = graph_io.graph_spec("encoder", model.cfg.to_dict(), enc_path.name)
    dec_path = out / "decoder.onnx"
    onnx.save(
        build_decoder_step(model, static_cache=static_cache, alignment_in_graph=alignment_in_graph), str(dec_path)
    )
    layer = None if alignment_in_graph else align_layer(model.cfg.n_decoder_layers)
    dec = graph_io.graph_spec("decoder", model.cfg.to_dict(), dec_path.name, static=static_cache, align_layer=layer)
    return {"encoder": enc, "decoder": dec}


def export_classifier_graph(model: TransformerClassifier, out: Path) -> dict[str, GraphSpec]:
    model.eval()
    ids = torch.randint(4, model.cfg.vocab_size, (2, 9))
    graph = _export(
        ClassifierGraph(model),
        (ids,),
        out / "classifier.onnx",
        *graph_io.classifier_io(),
    )
    return {"classifier": graph}


QUANTIZED_VARIANTS = ("int8", "int8-blockwise", "int8-static")
CALIBRATION_BATCH = 32
CALIBRATION_STEP_EVERY = 2  # record every 2nd decoder step's inputs


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_feeds(bundle_dir: Path, manifest: Manifest, texts: Sequence[str]) -> dict[str, list[dict]]:
    """Each graph's inputs, recorded while the fp32 engine runs `texts` (batches of 32), for
    static quantization: what a real batch feeds the encoder and the decoder steps."""
    providers = resolve_providers("cpu")
    recorded: dict[str, list[dict]] = {}

    def record(role: str, session: Any, every: int = 1) -> None:
        run, calls = session.run, [0]

        def wrapped(outputs, feeds, *args):
            calls[0] += 1
            if calls[0] % every == 0:
                recorded.setdefault(role, []).append({k: np.array(v) for k, v in feeds.items()})
            return run(outputs, feeds, *args)

        session.run = wrapped

    engine: Translator | Classifier
    if manifest.task == "translation":
        engine = Translator(bundle_dir, manifest, providers, variant="fp32")
        engine.bind_static = False  # every decoder step through `run`, where it is recorded
        record("encoder", engine.encoder)
        record("decoder", engine.decoder, CALIBRATION_STEP_EVERY)
        for start in range(0, len(texts), CALIBRATION_BATCH):
            engine.translate(texts[start : start + CALIBRATION_BATCH])
    else:
        engine = Classifier(bundle_dir, manifest, providers, variant="fp32")
        record("classifier", engine.graph)
        for start in range(0, len(texts), CALIBRATION_BATCH):
            engine.predict(texts[start : start + CALIBRATION_BATCH])
    return recorded


def quantize_graphs(
    graphs: dict[str, GraphSpec], out: Path, variant: str = "int8", calibration: dict[str, list[dict]] | None = None
) -> dict[str, GraphSpec]:
    """int8 variants of the fp32 graphs, all made by onnxruntime's own quantizers:

    * ``int8``: dynamic quantization (MatMulInteger). int8 weights; activations quantized at
      run time with ONE scale per tensor, i.e. per whole batch: a sentence's result depends on
      the other sentences in its batch.
    * ``int8-blockwise``: MatMulNBits, 8-bit weights in blocks of 32 along K with their own
      scales, activations quantized per row and block (accuracy_level 4): each sentence's
      result is the same whatever its batch-mates, and closer to fp32. Embedding tables are
      int8 with a fixed scale (weight-only), so the graphs are as small as ``int8``'s.
    * ``int8-static``: static quantization (QLinearMatMul): int8 weights per output channel,
      activations uint8 with FIXED scales calibrated (MinMax) on `calibration`, the inputs
      the graphs saw while translating training sentences. No scale depends on the batch, so
      it is batch-invariant, and it runs the fast integer kernels of ``int8``. Values beyond the
      calibrated range saturate. Each matrix multiply whose result goes on in float (all of
      them here: a bias, a residual, a LayerNorm or the logits follow) then becomes one
      ``MatMulIntegerToFloat`` with its bias (`_integer_to_float`): no requantization of its
      output to uint8 and back, and logits in float rather than 256 levels.
    """
    if variant not in QUANTIZED_VARIANTS:
        raise ValueError(f"variant {variant!r} must be one of {QUANTIZED_VARIANTS}")
    result = {}
    for role, g in graphs.items():
        target = out / g.file.replace(".onnx", f".{variant}.onnx")
        if variant == "int8":
            _dynamic_int8(out / g.file, target)
        elif variant == "int8-static":
            if not calibration or not calibration.get(role):
                raise ValueError("int8-static needs calibration inputs for every graph")
            with _quiet():
                quantize_static(
                    str(out / g.file),
                    str(target),
                    _Feeds(calibration[role]),
                    quant_format=QuantFormat.QOperator,
                    op_types_to_quantize=["MatMul"],
                    per_channel=True,
                    reduce_range=True,  # 7-bit weights: see _dynamic_int8
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
            _dynamic_int8(target, target, op_types=["Gather"], reduce_range=False)  # the embedding, weight-only
            _integer_to_float(target)
        else:
            config = matmul_nbits_quantizer.DefaultWeightOnlyQuantConfig(
                block_size=32,
                is_symmetric=True,
                accuracy_level=4,  # int8 compute: activations quantized per row and block
                bits=8,
                quant_format=quant_utils.QuantFormat.QOperator,
            )
            quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(onnx.load(str(out / g.file)), algo_config=config)
            with _quiet(matmul_nbits_quantizer.__name__):  # a line per node it leaves alone
                quantizer.process()
            quantizer.model.save_model_to_file(str(target), False)
            # The embedding table (Gather) as int8 too, weight-only (one fixed scale, then
            # DequantizeLinear on the gathered rows): 4x smaller, still batch-invariant.
            _dynamic_int8(target, target, op_types=["Gather"], reduce_range=False)
        result[role] = GraphSpec(file=target.name, inputs=g.inputs, outputs=g.outputs)
    return result


def _integer_to_float(path: Path) -> int:
    """Rewrite `path` in place: each ``QLinearMatMul`` whose only consumer is a
    ``DequantizeLinear`` becomes onnxruntime's ``MatMulIntegerToFloat`` (the same uint8 x int8
    product with the same fixed scales and zero points, its output scaled straight to float),
    and a following ``Add`` of a 1-D constant (the bias) goes into it. Static scales stay
    static: still batch-invariant. It skips `QLinearMatMul`'s requantization of every product
    (the speed-up is in BENCHMARKS.md). Returns how many products it rewrote."""
    model = onnx.load(str(path))
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    replace_by: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "QLinearMatMul" or node.output[0] in outputs:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "DequantizeLinear":
            continue
        dq = users[0]
        a, a_scale, a_zero, b, b_scale, b_zero = node.input[:6]
        inputs, out = [a, b, a_scale, b_scale, a_zero, b_zero], dq.output[0]
        after = consumers.get(out, [])
        if out not in outputs and len(after) == 1 and after[0].op_type == "Add":
            other = [x for x in after[0].input if x != out]
            if len(other) == 1 and other[0] in constants and len(constants[other[0]].dims) == 1:
                inputs.append(other[0])  # the bias
                dropped.add(id(after[0]))
                out = after[0].output[0]
        dropped.add(id(dq))
        replace_by[id(node)] = onnx.helper.make_node(
            "MatMulIntegerToFloat", inputs, [out], name=f"{node.name}_to_float", domain="com.microsoft"
        )
    kept = [replace_by.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    # the dropped requantizations' scales and zero points are read by nothing now: onnxruntime
    # would warn about each one whenever it loads the graph
    used = {name for n in graph.node for name in n.input} | outputs
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    return len(replace_by)


def _dynamic_int8(source: Path, target: Path, op_types: list[str] | None = None, reduce_range: bool = True) -> None:
    """onnxruntime's dynamic quantization, int8 weights per tensor; `op_types` limits it.

    Weights are quantized to 7 bits (`reduce_range`, |w| <= 64): on x86 CPUs without VNNI (AVX2
    only, e.g. AMD Zen 1-3), onnxruntime's uint8 x int8 kernel adds pairs of products in int16
    with saturation (VPMADDUBSW): 255 x 127 x 2 does not fit, 255 x 64 x 2 does; a product of such weights came
    out half its value there (BENCHMARKS.md section 13). With 7-bit weights no pair can saturate, so the
    int8 graphs compute the same on every x86 CPU. A table read by Gather (no product) keeps 8."""
    with _quiet():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types,
            per_channel=False,
            reduce_range=reduce_range,
            # shape inference cannot see through the contrib attention op: every tensor is float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


@contextmanager
def _quiet(logger_name: str | None = None):
    """onnxruntime's quantizers log a line per tensor or node (on the root logger, or their
    module's) and warn to pre-process, which we need not: errors only, while they run."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------- parity


def translation_parity(model: Seq2SeqTransformer, engine: Translator, sentences: Sequence[str]) -> dict[str, Any]:
    """Max |logit| difference over teacher-forced steps, and the share of identical greedy
    outputs, PyTorch vs the onnxruntime engine, on real sentences (encoded by the engine: the
    bundle's own codec, the rule the training data follows for our own models)."""
    model.eval()
    encoded = engine.encode([s for s in sentences if s.strip()])
    max_diff = 0.0
    identical = 0
    with torch.no_grad():
        for ids in encoded:
            src = torch.tensor([ids])
            torch_out = model.greedy_decode(src)[0]
            ort_out = engine.generate([ids])[0]
            identical += torch_out == ort_out
            tgt_in = [model.cfg.bos_id] + torch_out
            ref = model(src, torch.tensor([tgt_in]))[0].numpy()  # (T, V)
            state = engine.start(src.numpy(), width=len(tgt_in))
            for t, tok in enumerate(tgt_in):
                logits = engine.step(state, np.array([[tok]], dtype=np.int64))
                max_diff = max(max_diff, float(np.abs(logits[0] - ref[t]).max()))
    return {
        "max_abs_logit_diff": max_diff,
        "identical_greedy": identical / max(len(encoded), 1),
        "sentences": len(encoded),
        "atol": PARITY_ATOL,
    }


def classifier_parity(
    model: TransformerClassifier, engine: Classifier, tokenizer: Tokenizer, texts: Sequence[str]
) -> dict[str, Any]:
    model.eval()
    encoded = [encode_classifier_input(tokenizer, t, model.cfg.max_len) for t in texts]
    with torch.no_grad():
        ref = torch.softmax(model(pad_batch(encoded, model.cfg.pad_id)), -1).numpy()
    got = engine.predict(texts)
    return {
        "max_abs_prob_diff": float(np.abs(ref - got).max()),
        "same_argmax": float((ref.argmax(1) == got.argmax(1)).mean()),
        "texts": len(texts),
        "atol": PARITY_ATOL,
    }


# ----------------------------------------------------------------------------- bundle


def export_bundle(
    model: nn.Module,
    cfg: RunConfig,
    tokenizer_path: Path,
    out_dir: Path,
    parity_texts: Sequence[str],
    force: bool = False,
    int8: bool = True,
    version: str = "1.0.0",
    extra_files: Sequence[Path] = (),
    training_info: dict[str, Any] | None = None,
    calibration_texts: Sequence[str] = (),
    static_cache: bool = True,
    alignment_in_graph: bool = False,
    codec: CodecSpec | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """Write a complete, verified bundle to `out_dir`. Returns its manifest and the parity
    report. Refuses to replace an existing bundle unless `force`. `calibration_texts` (default:
    the parity texts) calibrate the int8-static variant: give training text, not the text the
    variants are then judged on. `static_cache=False`: a decoder of graph contract 2 (caches
    grown by one slot a step) instead of 3; `alignment_in_graph`: export_translation_graphs.
    `codec` (imported models): the model's own text conventions (runtime/codec.py); then
    `tokenizer_path` is the source SentencePiece model, written as spm.model, the codec's other
    files come in `extra_files` under their bundle names, and the special ids are the model's."""
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists; pass --force to overwrite it")
    mcfg = model.cfg
    if codec is None:
        tokenizer = Tokenizer(tokenizer_path)  # checks our fixed special ids
        special_ids, vocab_size = dict(SPECIAL_IDS), tokenizer.vocab_size
    else:
        missing = sorted(set(codec.files()) - {"spm.model", *(f.name for f in extra_files)})
        if codec.source_spm != "spm.model" or missing:
            raise ValueError(f"codec: source_spm must be 'spm.model' and every file given ({missing} are not)")
        unk = _vocab_index(extra_files, codec.target_vocabulary, codec.unk_piece)
        special_ids = {"pad": mcfg.pad_id, "unk": unk, "bos": mcfg.bos_id, "eos": mcfg.eos_id}
        vocab_size = mcfg.vocab_size
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        t0 = time.perf_counter()
        if cfg.task == "translation":
            graphs = export_translation_graphs(model, tmp, static_cache, alignment_in_graph)
        else:
            graphs = export_classifier_graph(model, tmp)
        shutil.copyfile(tokenizer_path, tmp / "spm.model")
        for f in extra_files:
            shutil.copyfile(f, tmp / f.name)
        corpus = CORPORA.get(cfg.data.corpus)
        manifest = Manifest(
            name=cfg.name,
            task=cfg.task,
            version=version,
            tokenizer="spm.model",
            special_ids=special_ids,
            vocab_size=vocab_size,
            max_len=mcfg.max_len,
            model={**mcfg.to_dict(), "parameters": count_parameters(model)},
            variants={"fp32": graphs},
            default_variant="fp32",
            files={},
            source_lang=cfg.data.source_lang,
            target_lang=cfg.data.target_lang,
            directions=list(cfg.data.directions),
            target_tags=cfg.data.target_tags,
            decoding=dict(DECODING) if cfg.task == "translation" else {},
            labels=list(cfg.data.labels),
            training={"config": cfg.to_dict(), **(training_info or {})},
            data={
                "corpus": cfg.data.corpus,
                "license": cfg.data.license or (corpus.license if corpus else ""),
                "source": corpus.url if corpus else "",
            },
            codec=codec.to_dict() if codec else {},
        )
        variants = {"fp32": graphs}
        if int8:
            calibration = calibration_feeds(tmp, manifest, list(calibration_texts or parity_texts))
            for variant in QUANTIZED_VARIANTS:
                variants[variant] = quantize_graphs(graphs, tmp, variant, calibration)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = replace(manifest, variants=variants, files=files)
        write_manifest(tmp, manifest)
        parity = check_parity(model, tmp, manifest, parity_texts)
        log.info("exported %s in %.1fs; parity %s", out_dir, time.perf_counter() - t0, parity)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, parity


def _vocab_index(files: Sequence[Path], name: str, piece: str) -> int:
    """The id of `piece` in the vocabulary file `name` among `files` (0 when there is none)."""
    from service.runtime.codec import read_vocabulary

    found = [f for f in files if f.name == name]
    pieces = read_vocabulary(found[0]) if name and found else []
    return pieces.index(piece) if piece in pieces else 0


def check_parity(model: nn.Module, bundle_dir: Path, manifest: Manifest, texts: Sequence[str]) -> dict[str, Any]:
    """Parity of the fp32 graphs with PyTorch; raises if outside tolerance."""
    providers = resolve_providers("cpu")
    if manifest.task == "translation":
        engine = Translator(bundle_dir, manifest, providers, variant="fp32")
        report = translation_parity(model, engine, texts)
        ok = report["max_abs_logit_diff"] <= PARITY_ATOL and report["identical_greedy"] == 1.0
    else:
        engine = Classifier(bundle_dir, manifest, providers, variant="fp32")
        report = classifier_parity(model, engine, Tokenizer(bundle_dir / manifest.tokenizer), texts)
        ok = report["max_abs_prob_diff"] <= PARITY_ATOL and report["same_argmax"] == 1.0
    if not ok:
        raise RuntimeError(f"ONNX export of {manifest.name} fails parity with PyTorch: {report}")
    return report
