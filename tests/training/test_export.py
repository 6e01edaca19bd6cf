"""ONNX export: bundle layout, manifest, parity with PyTorch, int8 variant, overwrite refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from service.runtime.bundle import BundleError, load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import translation_config
from training.checkpoint import model_config
from training.export import export_bundle
from training.tasks import make_task, prepare_tokenizer
from training.transformer import build_model


@pytest.fixture(scope="module")
def exported(parallel_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = translation_config(parallel_dir)
    tok = prepare_tokenizer(cfg, run)
    torch.manual_seed(0)
    model = build_model(model_config(cfg, tok)).eval()
    texts = [r[0] for r in make_task(cfg, tok).raw("val")[:8]]
    out = tmp_path_factory.mktemp("bundles") / "de-en"
    manifest, parity = export_bundle(model, cfg, run / "spm.model", out, texts)
    return model, cfg, run, out, manifest, parity, texts


def test_bundle_has_graphs_tokenizer_and_checksummed_manifest(exported):
    _, _, _, out, manifest, _, _ = exported
    names = {p.name for p in out.iterdir()}
    assert {
        "encoder.onnx",
        "decoder.onnx",
        "encoder.int8.onnx",
        "decoder.int8.onnx",
        "encoder.int8-blockwise.onnx",
        "decoder.int8-blockwise.onnx",
        "encoder.int8-static.onnx",
        "decoder.int8-static.onnx",
        "spm.model",
        "manifest.json",
    } <= names
    loaded = load_manifest(out)
    assert loaded.source_lang == "de" and loaded.target_lang == "en"
    assert loaded.special_ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert set(loaded.variants) == {"fp32", "int8", "int8-blockwise", "int8-static"}
    dec = loaded.graph("fp32", "decoder")
    layers = range(manifest.model["n_decoder_layers"])
    past = [f"past_{t}.{i}" for i in layers for t in "kv"]
    cross = [f"cross_{t}.{i}" for i in layers for t in "kv"]
    # graph contract 3: per-row positions, fixed-width caches written in place (no self mask)
    assert [t.name for t in dec.inputs] == ["input_ids", "position", "src_mask", *past, *cross]
    assert dec.inputs[3].shape[2] == "cache_len" and dec.outputs[1].shape[2] == "cache_len"
    # last, the query of the alignment layer's cross-attention (the penultimate layer)
    align = f"align_query.{max(len(layers) - 2, 0)}"
    assert [t.name for t in dec.outputs] == ["logits", *[p.replace("past", "present") for p in past], align]
    assert [t.name for t in loaded.graph("fp32", "encoder").outputs] == cross
    # both graphs use onnxruntime's fused attention, one node per attention: the decoder's
    # self-attention GroupQueryAttention (in place), its cross-attention MultiHeadAttention
    import onnx

    ops = [node.op_type for node in onnx.load(str(out / dec.file)).graph.node]
    assert ops.count("MultiHeadAttention") == len(layers) and ops.count("GroupQueryAttention") == len(layers)
    enc_ops = [node.op_type for node in onnx.load(str(out / "encoder.onnx")).graph.node]
    assert enc_ops.count("MultiHeadAttention") == manifest.model["n_encoder_layers"]
    # int8-static: every product straight to float (with its bias), none requantized to uint8
    static = [node.op_type for node in onnx.load(str(out / "decoder.int8-static.onnx")).graph.node]
    assert static.count("MatMulIntegerToFloat") == ops.count("MatMul") and "QLinearMatMul" not in static
    assert static.count("Add") < ops.count("Add")  # the biases went into the products
    graph = onnx.load(str(out / "decoder.int8-static.onnx")).graph
    read = {name for node in graph.node for name in node.input}
    assert [i.name for i in graph.initializer if i.name not in read] == []  # no scale left behind (ORT warns)
    # the encoder's padding: a sentence's keys/values do not depend on its batch-mates' lengths
    fp32 = Translator(out, manifest, resolve_providers("cpu"), variant="fp32")
    short, long_ = [5, 6, 7, 3], [9, 14, 21, 30, 11, 8, 17, 25, 40, 12, 13, 3]
    alone = fp32.encoder.run(None, {"src_ids": np.array([short], np.int64)})
    padded = fp32.encoder.run(None, {"src_ids": np.array([short + [0] * 8, long_], np.int64)})
    for a, p in zip(alone, padded):
        np.testing.assert_allclose(a[0], p[0, :, :4], atol=1e-5)
    assert set(loaded.files) == names - {"manifest.json"}


def test_export_parity_with_pytorch(exported):
    _, _, _, _, _, parity, _ = exported
    assert parity["max_abs_logit_diff"] <= 1e-3
    assert parity["identical_greedy"] == 1.0


def test_post_norm_model_exports_with_parity(parallel_dir, tmp_path):
    # The graphs are written node by node, so each LayerNorm order needs its own check.
    cfg = translation_config(parallel_dir)
    cfg.model["pre_norm"] = False
    tok = prepare_tokenizer(cfg, tmp_path / "run")
    torch.manual_seed(1)
    model = build_model(model_config(cfg, tok)).eval()
    assert not model.cfg.pre_norm
    texts = [r[0] for r in make_task(cfg, tok).raw("val")[:8]]
    _, parity = export_bundle(model, cfg, tmp_path / "run" / "spm.model", tmp_path / "de-en", texts)
    assert parity["max_abs_logit_diff"] <= 1e-3 and parity["identical_greedy"] == 1.0


def test_onnx_engine_batched_output_equals_pytorch_greedy(exported):
    model, _, run, out, manifest, _, texts = exported
    from training.evaluate import encode_source
    from training.tokenizer import Tokenizer

    tok = Tokenizer(run / "spm.model")
    engine = Translator(out, manifest, resolve_providers("cpu"), variant="fp32")
    sources = [encode_source(tok, t, 64) for t in texts]
    from training.evaluate import pad_batch

    expected = model.greedy_decode(pad_batch(sources, 0))
    assert engine.generate(sources) == expected  # batched, with rows finishing at different steps


@pytest.mark.parametrize("variant", ["int8", "int8-blockwise", "int8-static"])
def test_int8_variants_run_and_are_close(exported, variant):
    _, _, _, out, manifest, _, _ = exported
    fp32 = Translator(out, manifest, resolve_providers("cpu"), variant="fp32")
    int8 = Translator(out, manifest, resolve_providers("cpu"), variant=variant)
    src = np.array([[5, 6, 7, 3]], dtype=np.int64)
    k32 = fp32.encoder.run(None, {"src_ids": src})[0]  # cross_k.0
    k8 = int8.encoder.run(None, {"src_ids": src})[0]
    assert k8.shape == k32.shape
    assert np.abs(k8 - k32).max() < 0.25 * np.abs(k32).max()
    assert (out / f"decoder.{variant}.onnx").stat().st_size < (out / "decoder.onnx").stat().st_size


@pytest.mark.parametrize("variant", ["int8", "int8-static"])
def test_int8_product_weights_are_7_bit_so_avx2_cannot_saturate(exported, variant):
    # onnxruntime's uint8 x int8 kernel on x86 without VNNI adds product pairs in saturating
    # int16: 255 x 127 x 2 overflows, 255 x 64 x 2 does not. Every product's int8 weights: |w| <= 64.
    import onnx
    from onnx import numpy_helper

    _, _, _, out, _, _, _ = exported
    for graph in ("encoder", "decoder"):
        proto = onnx.load(str(out / f"{graph}.{variant}.onnx"))
        inits = {t.name: t for t in proto.graph.initializer}
        b_input = {"MatMulInteger": 1, "MatMulIntegerToFloat": 1, "QLinearMatMul": 3}
        names = [n.input[b_input[n.op_type]] for n in proto.graph.node if n.op_type in b_input]
        weights = [numpy_helper.to_array(inits[name]) for name in names if name in inits]
        assert weights, f"{graph}.{variant}: no quantized products"
        for w in weights:
            assert w.dtype == np.int8 and np.abs(w.astype(np.int32)).max() <= 64, (graph, w.min(), w.max())


def test_onnxruntime_int8_products_saturate_exactly_where_the_goldens_expect_it():
    # The kernel itself: uint8 255 x int8 w summed over 256, exact in int32 unless pairs saturate in int16.
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tests.release.test_shipped_bundles import int8_saturates

    def product(w: int) -> int:
        b = helper.make_tensor("b", TensorProto.INT8, [256, 8], np.full((256, 8), w, np.int8).tobytes(), raw=True)
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, 256])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 8])],
            initializer=[b],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return int(session.run(None, {"a": np.full((4, 256), 255, np.uint8)})[0][0, 0])

    assert product(64) == 255 * 64 * 256  # 7-bit weights: exact on every CPU
    assert (product(127) != 255 * 127 * 256) == int8_saturates()  # 8-bit: saturates on AVX2 without VNNI


def test_only_dynamic_int8_depends_on_the_batch(exported):
    # A row's encoder output alone vs beside a row of much larger activations (a long, different
    # sentence): per-tensor dynamic int8 shares one activation scale across the batch, blockwise
    # int8 quantizes each row on its own, static int8 uses fixed calibrated scales, fp32 does
    # not quantize.
    _, _, _, out, manifest, _, _ = exported
    row = [5, 6, 7, 3, 0, 0, 0, 0, 0, 0, 0, 0]
    other = [9, 14, 21, 30, 11, 8, 17, 25, 40, 12, 13, 3]
    diffs = {}
    for variant in ("fp32", "int8", "int8-blockwise", "int8-static"):
        engine = Translator(out, manifest, resolve_providers("cpu"), variant=variant)
        alone = engine.encoder.run(None, {"src_ids": np.array([row[:4]], dtype=np.int64)})[0]
        both = engine.encoder.run(None, {"src_ids": np.array([row, other], dtype=np.int64)})[0]
        diffs[variant] = float(np.abs(alone[0] - both[0, :, :4]).max())
    assert diffs["fp32"] < 1e-5 and diffs["int8-blockwise"] < 1e-5 and diffs["int8-static"] < 1e-5, diffs
    assert diffs["int8"] > 1e-3, diffs


def test_export_refuses_to_overwrite_without_force(exported):
    model, cfg, run, out, _, _, texts = exported
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(model, cfg, run / "spm.model", out, texts)
    export_bundle(model, cfg, run / "spm.model", out, texts, force=True, int8=False)
    assert set(load_manifest(out).variants) == {"fp32"}


def test_corrupt_file_fails_checksum(exported, tmp_path):
    import shutil

    _, _, _, out, _, _, _ = exported
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    with (copy / "spm.model").open("ab") as f:
        f.write(b"x")
    with pytest.raises(BundleError, match="spm.model sha256"):
        load_manifest(copy)
    raw = json.loads((copy / "manifest.json").read_text())
    del raw["special_ids"]
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="missing keys"):
        load_manifest(copy)


def test_cli_help_lists_every_step():
    out = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, check=True)
    for step in ("download", "tokenizer", "train", "evaluate", "export", "release"):
        assert step in out.stdout


def test_io_binding_loop_equals_plain_loop(exported):
    # The device-resident loop used on CUDA, run here on the CPU provider.
    _, _, _, out, manifest, _, texts = exported
    plain = Translator(out, manifest, resolve_providers("cpu"), variant="fp32")
    bound = Translator(out, manifest, resolve_providers("cpu"), variant="fp32", io_binding=True)
    assert not plain.io_binding and bound.io_binding
    sources = plain.encode(texts)
    assert bound.generate(sources) == plain.generate(sources)


def test_variant_choice_requires_batch_invariance():
    from training.release import choose_variant

    valid = {
        "fp32": {"bleu": 40.0, "sentences_per_s": 100, "batch_invariant": 1.0},
        "int8": {"bleu": 40.1, "sentences_per_s": 150, "batch_invariant": 0.95},
        "int8-blockwise": {"bleu": 39.6, "sentences_per_s": 120, "batch_invariant": 1.0},
    }
    assert choose_variant(valid, "bleu") == "int8-blockwise"
    valid["int8-blockwise"]["bleu"] = 39.4  # more than 0.5 below fp32
    assert choose_variant(valid, "bleu") == "fp32"


def test_release_pipeline_writes_a_served_bundle_with_metrics_and_card(parallel_dir, tmp_path):
    from training.release import release

    cfg = translation_config(parallel_dir, epochs=2, average_last=2)
    report = release(cfg, tmp_path / "run", tmp_path / "bundle")
    manifest = load_manifest(tmp_path / "bundle")  # checksums of everything, card included
    assert set(manifest.variants) == {report["served_variant"]} == {manifest.default_variant}
    valid = {r["variant"]: r for r in report["results"] if r["split"] == "val"}
    assert set(valid) == {"fp32", "int8", "int8-blockwise", "int8-static"}
    assert valid[report["served_variant"]].get("batch_invariant", 1.0) == 1.0  # never a batch-dependent one
    assert manifest.training["batch_invariant"].keys() == valid.keys()
    splits = {(m["split"], m["name"]) for m in manifest.metrics}
    assert {("val", "bleu"), ("test", "bleu"), ("test", "chrf"), ("test", "bleu_lc_tok")} <= splits
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "## Metrics" in card and "![training curves](curves.png)" in card
    assert (tmp_path / "bundle" / "curves.png").exists()
    with pytest.raises(FileExistsError):
        release(cfg, tmp_path / "run", tmp_path / "bundle")


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_classifier_export_parity_dynamic_shapes_and_manifest(tsv_dir, tmp_path, pooling):
    # Random weights, so the probabilities are far from 0/1 and a parity slip would show.
    from service.runtime.classifier import Classifier
    from tests.conftest import classification_config
    from training.evaluate import encode_classifier_input, pad_batch

    cfg = classification_config(tsv_dir)
    cfg.model["pooling"] = pooling
    tok = prepare_tokenizer(cfg, tmp_path / "run")
    torch.manual_seed(5)
    model = build_model(model_config(cfg, tok)).eval()
    assert model.cfg.pooling == pooling
    texts = [r[0] for r in make_task(cfg, tok).raw("valid")[:12]]
    manifest, parity = export_bundle(model, cfg, tmp_path / "run" / "spm.model", tmp_path / "sentiment", texts)
    assert manifest.task == "classification" and manifest.labels == ["negative", "positive"]
    assert parity["max_abs_prob_diff"] <= 1e-3 and parity["same_argmax"] == 1.0
    engine = Classifier(tmp_path / "sentiment", manifest, resolve_providers("cpu"), variant="fp32")
    # Dynamic batch and length: one text alone, then all 12 of different lengths padded together.
    encoded = [encode_classifier_input(tok, t, model.cfg.max_len) for t in texts]
    assert len({len(e) for e in encoded}) > 1
    with torch.no_grad():
        ref = torch.softmax(model(pad_batch(encoded, model.cfg.pad_id)), -1).numpy()
    batched = engine.predict(texts)
    alone = np.concatenate([engine.predict([t]) for t in texts])
    assert batched.shape == (12, 2)
    np.testing.assert_allclose(batched, ref, atol=1e-4)
    np.testing.assert_allclose(alone, batched, atol=1e-5)
    assert (batched.argmax(1) == ref.argmax(1)).all()
    assert {"int8", "int8-static"} <= set(manifest.variants)
    for variant in sorted(set(manifest.variants) - {"fp32"}):
        probs = Classifier(tmp_path / "sentiment", manifest, resolve_providers("cpu"), variant=variant).predict(texts)
        assert np.abs(probs - ref).max() < 0.1, variant


def test_the_shipped_generic_graphs_are_what_the_builders_make():
    import onnx

    from service.runtime.translator import BEAM_TOPK, ROWS_GATHER
    from training.onnx_graphs import build_beam_topk, build_rows_gather

    # rebuild: python -c "from training.onnx_graphs import *; open(path, 'wb').write(build_...().SerializeToString())"
    assert onnx.load(str(BEAM_TOPK)).graph == build_beam_topk().graph
    assert onnx.load(str(ROWS_GATHER)).graph == build_rows_gather().graph


def test_the_alignment_output_is_its_layers_cross_attention_averaged_over_heads(exported):
    # Forced decoding through the exported decoder gives, at each step, the weights that PyTorch's
    # cross-attention of that layer computes for the same target prefix (teacher forcing).
    import math

    from training.evaluate import pad_batch
    from training.onnx_graphs import align_layer

    model, _, _, out, manifest, _, texts = exported
    engine = Translator(out, manifest, resolve_providers("cpu"), variant="fp32")
    assert engine.aligns
    sources = engine.encode(texts[:4])
    targets = [ids[:-1] for ids in engine.encode(texts[4:8])]  # any id sequences will do
    got = engine.attention(sources, targets)  # (B, T, S)

    layer = model.decoder.layers[align_layer(model.cfg.n_decoder_layers)].cross_attn
    seen = {}
    hook = layer.register_forward_hook(lambda module, args, output: seen.update(args=args))
    try:
        with torch.no_grad():
            model(pad_batch(sources, 0), pad_batch([[2, *t[:-1]] for t in targets], 0))
            query, (keys, _), mask = seen["args"]
            q = layer.split_heads(layer.q_proj(query))
            scores = (q @ keys.transpose(-2, -1)) / math.sqrt(layer.d_head)
            want = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).mean(1).numpy()
    finally:
        hook.remove()
    for i, t in enumerate(targets):
        np.testing.assert_allclose(got[i, : len(t), : want.shape[2]], want[i, : len(t)], atol=1e-5)
        assert np.allclose(got[i, : len(t)].sum(-1), 1.0, atol=1e-5)
        assert not got[i, :, len(sources[i]) :].any()  # nothing on another row's padding
