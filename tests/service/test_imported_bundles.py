"""Imported bundles served side by side (issue 35): a LibreTranslate packages folder of three
one-pair Argos packages imported in one command, served with a bound on loaded models: a pivot
across two imported bundles, eviction and reload to the same outputs, every pair listed; and a
Marian (OPUS-MT) import served through the API with its own codec (two SentencePiece models, a
vocabulary whose ids are not SentencePiece's, decoding from <pad>)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.service.conftest import make_client, wait_ready

pytest.importorskip("ctranslate2", reason="needs ctranslate2 (pip install -e '.[dev]')")
pytest.importorskip("transformers", reason="needs transformers (pip install -e '.[dev]')")

from tests.training.test_import import _argos_zip, marian_dir, ours_ckpt  # noqa: F401  (fixtures)

PAIRS = [("de", "en"), ("en", "fr"), ("en", "de")]
TEXTS = ["the small house", "a big tree near the river"]


@pytest.fixture(scope="module")
def imported_dir(ours_ckpt, tmp_path_factory) -> Path:  # noqa: F811
    """Three Argos packages (the same tiny OpenNMT-layout weights, three language pairs) in a
    packages folder, imported with one command into a model folder."""
    from benchmarks.ct2_convert import convert
    from training.importers import run_import

    ckpt, spm_path, _ = ours_ckpt
    tmp = tmp_path_factory.mktemp("imported")
    ct2_dir = convert(ckpt, spm_path, tmp / "ct2", "int8")
    packages = tmp / "packages"
    packages.mkdir()
    for src, tgt in PAIRS:
        meta = {"from_code": src, "to_code": tgt, "package_version": "1.0", "name": f"{src} to {tgt}"}
        with zipfile.ZipFile(_argos_zip(tmp / f"translate-{src}_{tgt}-1_0.argosmodel", ct2_dir, spm_path, meta)) as zf:
            zf.extractall(packages)
    out = tmp / "model"
    results = run_import("argos", packages, out, int8=False, max_len=64)
    assert not [r for r in results if "refused" in r], results
    return out


def _translate(client, source: str, target: str, alternatives: int = 0) -> dict:
    body = {"q": TEXTS, "source": source, "target": target, "alternatives": alternatives}
    r = client.post("/translate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_packages_folder_served_with_a_bound_pivot_and_reload(imported_dir: Path) -> None:
    names = sorted(p.name for p in imported_dir.iterdir())
    assert names == ["translate-de_en-1_0", "translate-en_de-1_0", "translate-en_fr-1_0"]
    with make_client(imported_dir) as free:
        wait_ready(free)
        expected = {(s, t): _translate(free, s, t) for s, t in [("de", "en"), ("en", "fr"), ("de", "fr")]}
        languages = free.get("/languages").json()
    with make_client(imported_dir, max_loaded_models=1) as bound:
        wait_ready(bound)
        assert bound.get("/languages").json() == languages
        codes = {lang["code"]: set(lang["targets"]) for lang in languages}
        assert {"en", "fr"} <= codes["de"] and {"de", "fr"} <= codes["en"]
        # de -> fr is two imported bundles through English, with room for one at a time
        assert _translate(bound, "de", "fr") == expected[("de", "fr")]
        for pair in [("en", "fr"), ("de", "en"), ("de", "fr")]:  # each one evicts the other
            assert _translate(bound, *pair) == expected[pair]
        models = {m["name"]: m for m in bound.get("/models").json()}
        assert sum(1 for n in names if models[n]["loaded"]) == 1
        metrics = bound.get("/metrics").text
        assert "transerve_model_evictions_total" in metrics


def test_marian_import_served_through_the_api(marian_dir, tmp_path: Path) -> None:  # noqa: F811
    """An OPUS-MT folder imported and served: the API's translation is the text of the tokens
    transformers' generate gives (greedy), through the bundle's codec."""
    import torch
    from transformers import MarianMTModel

    from training.importers import run_import

    out = tmp_path / "model"
    [result] = run_import("marian", marian_dir, out / "opus-mt-xx-en", int8=False, max_len=64)
    assert "refused" not in result, result
    manifest = json.loads((out / "opus-mt-xx-en" / "manifest.json").read_text())
    assert manifest["codec"]["target_spm"] != manifest["codec"]["source_spm"]
    hf = MarianMTModel.from_pretrained(marian_dir).eval()
    vocab = json.loads((marian_dir / "vocab.json").read_text())
    pieces = {i: p for p, i in vocab.items()}
    import sentencepiece as spm

    ssp = spm.SentencePieceProcessor(model_file=str(marian_dir / "source.spm"))
    tsp = spm.SentencePieceProcessor(model_file=str(marian_dir / "target.spm"))
    texts = ["the small house", "a tree"]
    expected = []
    for text in texts:
        ids = [vocab.get(p, 1) for p in ssp.encode(text, out_type=str)] + [0]
        with torch.no_grad():
            gen = hf.generate(torch.tensor([ids]), num_beams=1, do_sample=False, max_new_tokens=40)[0].tolist()
        special = {0, hf.config.pad_token_id}
        expected.append(tsp.decode_pieces([pieces[i] for i in gen if i not in special]))
    with make_client(out, loop_guard=False) as client:  # transformers has no loop guard
        wait_ready(client)
        r = client.post("/translate", json={"q": texts, "source": "xx", "target": "en"})
        assert r.status_code == 200, r.text
        assert r.json()["translatedText"] == expected
