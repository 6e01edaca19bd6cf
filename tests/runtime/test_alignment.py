"""The decoder's alignment output and forced-decoding word alignment (runtime/translator.align)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from service.runtime import graph_io
from service.runtime.bundle import load_manifest, sha256_file, write_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES


def engine(bundle, variant="int8-static"):
    return Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant=variant)


def test_links_are_pieces_of_both_strings_and_never_the_tag_or_the_end(model_dir):
    t = engine(model_dir / "de-en")
    assert t.aligns
    pairs = [("ein hund läuft", "a dog runs"), ("zwei katzen", "two cats sleep here"), ("x", "")]
    links = t.align(pairs)
    assert len(links) == 3 and links[2] == []
    for (source, translation), found in zip(pairs[:2], links):
        assert [tl[:2] for tl in found] == sorted(tl[:2] for tl in found)  # translation order
        for t0, t1, s0, s1 in found:
            assert 0 <= t0 < t1 <= len(translation) and translation[t0:t1].strip()
            assert 0 <= s0 < s1 <= len(source) and source[s0:s1].strip()


def test_the_weights_are_distributions_over_each_rows_own_source(model_dir):
    t = engine(model_dir / "de-en", "fp32")
    sources = t.encode(["ein hund", "zwei katzen laufen im park schnell"])
    targets = [t.encode(["a dog"])[0][:-1], t.encode(["two cats run in the park fast"])[0][:-1]]
    w = t.attention(sources, targets)
    assert w.shape == (2, max(map(len, targets)), max(map(len, sources)))
    for i in range(2):
        assert np.allclose(w[i, : len(targets[i])].sum(-1), 1.0, atol=1e-5)
        assert not w[i, :, len(sources[i]) :].any() and not w[i, len(targets[i]) :].any()
    # the same row alone: the same weights (padding and batch-mates change nothing)
    alone = t.attention(sources[:1], targets[:1])
    np.testing.assert_allclose(alone[0], w[0, : alone.shape[1], : alone.shape[2]], atol=1e-5)


def test_a_decoder_exported_before_the_alignment_output_is_served_without_it(model_dir, tmp_path):
    onnx = pytest.importorskip("onnx", reason="editing a graph needs the onnx package (training extras)")
    bundle = tmp_path / "de-en"
    shutil.copytree(model_dir / "de-en", bundle)
    manifest = load_manifest(bundle)
    variants = {}
    for name, graphs in manifest.variants.items():
        dec = graphs["decoder"]
        proto = onnx.load(str(bundle / dec.file))
        kept = [o for o in proto.graph.output if not graph_io.is_alignment_output(o.name)]
        del proto.graph.output[:]
        proto.graph.output.extend(kept)
        onnx.save(proto, str(bundle / dec.file))
        outputs = [o for o in dec.outputs if not graph_io.is_alignment_output(o.name)]
        variants[name] = {**graphs, "decoder": replace(dec, outputs=outputs)}
    files = {p.name: sha256_file(p) for p in bundle.iterdir() if p.name != "manifest.json" and p.is_file()}
    write_manifest(bundle, replace(manifest, variants=variants, files=files))
    old, new = engine(bundle), engine(model_dir / "de-en")
    assert not old.aligns and old.align([("ein hund", "a dog")]) == [[]]
    texts = ["ein hund läuft", "zwei katzen"]
    assert old.translate(texts) == new.translate(texts)


def test_weights_from_the_query_equal_the_ones_old_graphs_computed():
    # the same weights exported twice: the decoder computing the weights itself at every step
    # (older bundles; contract 2) and outputting the query the engine computes them from
    new, old = engine(TINY_BUNDLES / "models" / "de-en", "fp32"), engine(TINY_BUNDLES / "contract2" / "de-en", "fp32")
    assert new.align_layer is not None and old.align_layer is None and old.aligns
    sources = new.encode(["ein hund", "zwei katzen laufen im park schnell", "x"])
    targets = [new.encode(["a dog"])[0][:-1], new.encode(["two cats run in the park fast"])[0][:-1], [5]]
    np.testing.assert_allclose(new.attention(sources, targets), old.attention(sources, targets), atol=1e-5)
    pairs = [("ein hund läuft", "a dog runs"), ("zwei katzen", "two cats sleep here")]
    assert new.align(pairs) == old.align(pairs)
