"""The graph I/O contract: one definition, checked against every session at load."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.runtime import graph_io
from service.runtime.bundle import BundleError, load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES


def test_contract_matches_what_export_declares(model_dir):
    manifest = load_manifest(model_dir / "de-en")
    layer = graph_io.alignment_layer(manifest.graph("fp32", "decoder"))
    assert layer == max(manifest.model["n_decoder_layers"] - 2, 0)  # training.onnx_graphs.align_layer
    for role in ("encoder", "decoder"):
        spec = manifest.graph("fp32", role)
        assert (spec.inputs, spec.outputs) == graph_io.expected(role, manifest.model, static=True, align_layer=layer)
    assert graph_io.static_cache(manifest.graph("fp32", "decoder"))
    assert manifest.graph("fp32", "decoder").outputs[-1].name == f"align_query.{layer}"
    # exported with static_cache=False and the alignment weights computed in the graph (the older alignment form)
    old = load_manifest(TINY_BUNDLES / "contract2" / "de-en")
    spec = old.graph("fp32", "decoder")
    assert (spec.inputs, spec.outputs) == graph_io.expected("decoder", old.model)
    assert graph_io.per_row(spec) and not graph_io.static_cache(spec)
    assert graph_io.has_alignment(spec) and graph_io.alignment_layer(spec) is None
    assert spec.outputs[-1].name == "alignment"


def test_an_alignment_query_of_a_layer_the_model_lacks_is_refused(model_dir):
    manifest = load_manifest(model_dir / "de-en")
    dec = manifest.graph("fp32", "decoder")
    n = manifest.model["n_decoder_layers"]
    outputs = [*dec.outputs[:-1], replace(dec.outputs[-1], name=f"align_query.{n}")]
    bad = replace(manifest, variants={"fp32": {**manifest.variants["fp32"], "decoder": replace(dec, outputs=outputs)}})
    with pytest.raises(BundleError, match=f"align_query.{n}: the model has {n} decoder layers"):
        Translator(model_dir / "de-en", bad, resolve_providers("cpu"), threads=1, variant="fp32")


def test_a_graph_whose_output_was_renamed_is_refused_naming_the_tensor():
    # The decoder's `logits` renamed `scores` in the graph, checksums right: only the contract catches it.
    bundle = TINY_BUNDLES / "broken" / "renamed-output"
    manifest = load_manifest(bundle)
    with pytest.raises(BundleError, match="decoder graph output 0 is 'scores', the manifest declares 'logits'"):
        Translator(bundle, manifest, resolve_providers("cpu"), threads=1)


def test_a_manifest_that_reorders_outputs_is_refused(model_dir):
    manifest = load_manifest(model_dir / "de-en")
    dec = manifest.graph("fp32", "decoder")
    swapped = replace(dec, outputs=[dec.outputs[1], dec.outputs[0], *dec.outputs[2:]])
    bad = replace(manifest, variants={"fp32": {**manifest.variants["fp32"], "decoder": swapped}})
    with pytest.raises(BundleError, match="manifest output 0 of decoder is 'present_k.0', the contract says 'logits'"):
        Translator(model_dir / "de-en", bad, resolve_providers("cpu"), threads=1, variant="fp32")


def test_contract_one_decoders_are_told_apart_and_still_checked():
    from service.runtime.bundle import GraphSpec

    model = {"n_decoder_layers": 2}
    new_in, _ = graph_io.expected("decoder", model)
    old_in, old_out = graph_io.expected("decoder", model, rows=False)
    assert [t.name for t in new_in][:4] == ["input_ids", "position", "src_mask", "self_mask"]
    assert [t.name for t in old_in][:2] == ["input_ids", "src_mask"] and len(old_in) == len(new_in) - 2
    assert graph_io.per_row(GraphSpec("d.onnx", new_in, old_out))
    assert not graph_io.per_row(GraphSpec("d.onnx", old_in, old_out))
