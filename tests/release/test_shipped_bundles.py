"""Every shipped bundle in model/ loads, verifies its checksums and gives its golden output.

Fails if a bundle regresses (a golden output changes) or goes missing (golden.json names it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.machine import describe
from service.runtime.bundle import find_bundles, load_manifest
from service.runtime.classifier import Classifier
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator

MODEL_DIR = Path(__file__).resolve().parents[2] / "model"
GOLDEN = json.loads((Path(__file__).parent / "golden.json").read_text(encoding="utf-8"))

pytestmark = pytest.mark.release


def int8_saturates() -> bool:
    """An x86 CPU without VNNI (AVX2 only): onnxruntime's uint8 x int8 kernel adds pairs of
    products in saturating int16 there, so a bundle whose int8 weights use the full 8 bits (every
    one exported before session 16; the exporter now writes 7-bit weights) computes some products
    differently than on a VNNI CPU. A case's `output_no_vnni` is its output there."""
    flags = set(describe()["flags"])  # the CPU flags every benchmark result records
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni"}


def test_every_expected_bundle_is_shipped_and_every_shipped_bundle_has_goldens():
    shipped = {p.name for p in find_bundles(MODEL_DIR)}
    assert shipped == set(GOLDEN), f"shipped {sorted(shipped)} vs golden.json {sorted(GOLDEN)}"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_bundle_golden_outputs(name):
    bundle = MODEL_DIR / name
    manifest = load_manifest(bundle, verify=True)
    providers = resolve_providers("cpu")
    cases = GOLDEN[name]
    if manifest.task == "translation":
        engine = Translator(bundle, manifest, providers, threads=1)
        key = "output_no_vnni" if int8_saturates() else "output"
        expected = [c.get(key, c["output"]) for c in cases]
        # a multilingual bundle's cases name their target (the source then carries its tag)
        inputs = [manifest.model_input(c["input"], c.get("target", manifest.target_lang)) for c in cases]
        # Alone and batched together: a shipped variant's answer must not depend on batch-mates.
        assert [engine.translate([t])[0] for t in inputs] == expected
        assert engine.translate(inputs) == expected
        # Beam search too: a sentence's n-best and scores do not depend on its batch-mates.
        batched = engine.translate_nbest(inputs, beam_size=4, n_best=3)
        assert [engine.translate_nbest([t], beam_size=4, n_best=3)[0] for t in inputs] == batched
    else:
        engine = Classifier(bundle, manifest, providers, threads=1)
        probs = engine.predict([c["input"] for c in cases])
        assert [manifest.labels[int(p.argmax())] for p in probs] == [c["label"] for c in cases]
        alone = [engine.predict([c["input"]])[0] for c in cases]
        assert max(float(abs(a - p).max()) for a, p in zip(alone, probs)) <= 1e-5


def test_no_bundle_checksums_a_file_the_image_leaves_out():
    # .dockerignore keeps model/*/weights.pt out of the image: a manifest that checksums it makes
    # the container refuse the bundle (it happened once, caught only by the docker smoke test)
    import fnmatch

    root = MODEL_DIR.parent
    patterns = [p.strip() for p in (root / ".dockerignore").read_text().splitlines() if p.strip()]
    for bundle in find_bundles(MODEL_DIR):
        for name in load_manifest(bundle, verify=False).files:
            path = (bundle / name).relative_to(root).as_posix()
            assert not any(fnmatch.fnmatch(path, p) for p in patterns), f"{path} is checksummed but not in the image"
