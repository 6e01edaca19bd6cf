"""The graph I/O contract: one definition, checked against every session at load."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from service.runtime import graph_io
from service.runtime.bundle import BundleError, load_manifest, sha256_file
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator


def _copy(model_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    bundle = tmp_path / "de-en"
    shutil.copytree(model_dir / "de-en", bundle)
    return bundle, json.loads((bundle / "manifest.json").read_text())


def _rewrite_manifest(bundle: Path, raw: dict) -> None:
    raw["files"] = {name: sha256_file(bundle / name) for name in raw["files"]}
    (bundle / "manifest.json").write_text(json.dumps(raw))


def test_contract_matches_what_export_declares(model_dir):
    manifest = load_manifest(model_dir / "de-en")
    for role in ("encoder", "decoder"):
        spec = manifest.graph("fp32", role)
        assert (spec.inputs, spec.outputs) == graph_io.expected(role, manifest.model)


def test_a_graph_whose_output_was_renamed_is_refused_naming_the_tensor(model_dir, tmp_path):
    bundle, raw = _copy(model_dir, tmp_path)
    path = bundle / raw["variants"]["fp32"]["decoder"]["file"]
    graph = onnx.load(str(path))
    old = graph.graph.output[0].name
    assert old == graph_io.LOGITS
    for node in graph.graph.node:
        node.output[:] = ["scores" if o == old else o for o in node.output]
    graph.graph.output[0].name = "scores"
    onnx.save(graph, str(path))
    _rewrite_manifest(bundle, raw)  # checksums right: only the contract can catch it
    manifest = load_manifest(bundle)
    with pytest.raises(BundleError, match="decoder graph output 0 is 'scores', the manifest declares 'logits'"):
        Translator(bundle, manifest, resolve_providers("cpu"), threads=1, variant="fp32")


def test_a_manifest_that_reorders_outputs_is_refused(model_dir, tmp_path):
    bundle, raw = _copy(model_dir, tmp_path)
    manifest = load_manifest(bundle)
    dec = manifest.graph("fp32", "decoder")
    swapped = replace(dec, outputs=[dec.outputs[1], dec.outputs[0], *dec.outputs[2:]])
    bad = replace(manifest, variants={"fp32": {**manifest.variants["fp32"], "decoder": swapped}})
    with pytest.raises(BundleError, match="manifest output 0 of decoder is 'present_k.0', the contract says 'logits'"):
        Translator(bundle, bad, resolve_providers("cpu"), threads=1, variant="fp32")
