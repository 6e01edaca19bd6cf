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
    for role in ("encoder", "decoder"):
        spec = manifest.graph("fp32", role)
        assert (spec.inputs, spec.outputs) == graph_io.expected(role, manifest.model)


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
