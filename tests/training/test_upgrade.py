"""`python -m training upgrade`: a bundle exported before session 11 (alignment weights computed
in the graph at every step) rewritten into the query form, translations unchanged."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the upgrade edits graphs (training extras)")

from service.runtime import graph_io
from service.runtime.bundle import load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES
from training.__main__ import main
from training.upgrade import upgrade_bundle


def engine(bundle, variant):
    return Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant=variant)


def test_an_old_decoder_becomes_the_query_form_with_the_same_translations(tmp_path, capsys):
    old = TINY_BUNDLES / "contract2" / "de-en"  # weights computed in the graph, as exported before session 11
    bundle = tmp_path / "de-en"
    shutil.copytree(old, bundle)
    assert main(["upgrade", "--bundle", str(bundle)]) == 0
    variants = load_manifest(old).variants
    assert capsys.readouterr().out.count("align_query.0") == len(variants)
    texts = ["ein hund läuft", "zwei katzen schlafen im park", "x"]
    for variant in variants:
        before, after = engine(old, variant), engine(bundle, variant)  # load_manifest verifies the checksums
        spec = after.manifest.graph(variant, "decoder")
        assert spec.outputs[-1].name == "align_query.0" and graph_io.ALIGNMENT not in [t.name for t in spec.outputs]
        assert after.translate(texts) == before.translate(texts)
        sources = before.encode(texts[:2])
        targets = [before.encode(["a dog runs"])[0][:-1], before.encode(["two cats sleep"])[0][:-1]]
        tol = 1e-5 if variant == "fp32" else 0.05  # int8-static: the old weights came from int8 operands
        np.testing.assert_allclose(after.attention(sources, targets), before.attention(sources, targets), atol=tol)
    # the rewritten graphs lost the branch: fewer nodes, and a second upgrade has nothing to do
    onnx = pytest.importorskip("onnx")
    for graphs in variants.values():
        n_old = len(onnx.load(str(old / graphs["decoder"].file)).graph.node)
        assert len(onnx.load(str(bundle / graphs["decoder"].file)).graph.node) < n_old
    assert upgrade_bundle(bundle) == {}


def test_a_current_bundle_is_left_as_it_is(tmp_path):
    bundle = tmp_path / "de-en"
    shutil.copytree(TINY_BUNDLES / "models" / "de-en", bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    assert upgrade_bundle(bundle) == {}
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
