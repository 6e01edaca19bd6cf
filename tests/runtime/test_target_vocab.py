"""Target vocabularies (service/runtime/vocab.py, training/vocab.py) on the tiny multilingual
bundle: a language's decoder view computes exactly the full graph's logits on its columns, a
sentence decodes as the full graph would with every other piece masked out, and neither greedy,
beam nor the running batch lets a sentence's output depend on the languages of its batch-mates."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.runtime.bundle import BundleError, load_manifest, parse_manifest
from service.runtime.continuous import DecodeBatch
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from service.scheduling import ContinuousScheduler
from tests.conftest import TINY_BUNDLES

# writing a bundle's vocabularies edits its graphs (the onnx package, training extras); the
# service-only install of CI skips this module, the full one runs it
onnx = pytest.importorskip("onnx", reason="writing target vocabularies needs the onnx package (training extras)")

from training.vocab import (  # noqa: E402 - after the skip
    FILE,
    projection_initializers,
    symbolic_vocab,
    target_pieces,
    write_target_vocab,
)

# pieces of the tiny tokenizer (80): English and German overlap, neither has them all
VOCAB = {"en": set(range(4, 52)), "de": set(range(28, 80))}
TEXTS = ["der hund spielt mit der katze", "ein mann", "die frau läuft im park und das kind", "katze"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "multi"
    shutil.copytree(TINY_BUNDLES / "multilingual" / "multi", out)
    write_target_vocab(out, VOCAB)
    return out


def engines(bundle, variant="int8-static"):
    manifest, cpu = load_manifest(bundle), resolve_providers("cpu")
    full = Translator(bundle, manifest, cpu, threads=1, variant=variant, target_vocab=False)
    return full, Translator(bundle, manifest, cpu, threads=1, variant=variant)


def sources(engine, targets=("en", "de", "en", "de")):
    return engine.encode([engine.manifest.model_input(t, lang) for t, lang in zip(TEXTS, targets)])


def masked_greedy(full, source, allowed):
    """The full graph's greedy decoding of one sentence, every piece but `allowed` masked out."""
    src, limits = full.padded([source])
    state = full.start(src, width=int(limits[0]))
    tokens, out = np.full((1, 1), full.bos, dtype=np.int64), []
    mask = np.full(full.manifest.vocab_size, -np.inf, dtype=np.float32)
    mask[sorted(allowed)] = 0
    for _ in range(int(limits[0])):
        best = int((full.step(state, tokens)[0] + mask).argmax())
        if best == full.eos:
            break
        out.append(best)
        tokens = np.array([[best]], dtype=np.int64)
    return out


def test_the_bundle_gets_every_variant_whose_projection_can_be_cut(bundle):
    manifest = load_manifest(bundle)  # the npz's checksum is in the manifest and verified
    spec = manifest.target_vocab
    assert spec["file"] == FILE and spec["languages"] == ["de", "en"]
    assert {"fp32", "int8-static"} <= set(spec["projection"])
    assert len(spec["projection"]["int8-static"]) == 3  # the int8 weight, its scales and zero points
    with np.load(bundle / FILE) as data:  # </s> and <unk> are always in
        assert set(data["ids/en"]) == VOCAB["en"] | {manifest.special_ids["eos"], manifest.special_ids["unk"]}
    # the decoder's logits are of any width now, and a second run changes nothing
    proto = onnx.load(str(bundle / manifest.graph("int8-static", "decoder").file))
    assert not symbolic_vocab(proto)
    assert set(projection_initializers(proto, manifest.vocab_size)) == set(spec["projection"]["int8-static"])


@pytest.mark.parametrize("variant", ["fp32", "int8-static"])
def test_a_view_computes_the_full_logits_of_its_columns(bundle, variant):
    full, tv = engines(bundle, variant)
    view = tv.view("en")
    assert view is tv.view("en") and view.n_logits == len(view.logit_ids) < full.manifest.vocab_size
    src, _ = full.padded(sources(full)[:1])
    a, b = full.start(src, width=8), view.start(src, width=8)
    tokens = np.full((1, 1), full.bos, dtype=np.int64)
    want, got = full.step(a, tokens), view.step(b, tokens)
    np.testing.assert_allclose(got, want[:, view.logit_ids], rtol=0, atol=1e-5)


def test_a_sentence_decodes_as_the_full_graph_restricted_to_its_language(bundle):
    full, tv = engines(bundle)
    full.loop_guard = tv.loop_guard = None  # compared with a plain greedy loop over the full graph
    srcs = sources(tv)
    with np.load(bundle / FILE) as data:
        allowed = {lang: set(data[f"ids/{lang}"].tolist()) for lang in ("en", "de")}
    got = tv.generate(srcs)
    for source, lang, out in zip(srcs, ("en", "de", "en", "de"), got):
        assert tv.target_of(source) == lang
        assert set(out) <= allowed[lang]
        assert out == masked_greedy(full, source, allowed[lang])
    assert any(got[i] != full.generate([srcs[i]])[0] for i in range(len(srcs)))  # the restriction bites


def test_mixed_targets_in_a_batch_change_nobody_greedy_or_beam(bundle):
    _, tv = engines(bundle)
    srcs = sources(tv)
    assert tv.generate(srcs) == [tv.generate([s])[0] for s in srcs]
    mixed = tv.generate_nbest(srcs, beam_size=3, n_best=2)
    for s, hyps in zip(srcs, mixed):
        alone = tv.generate_nbest([s], beam_size=3, n_best=2)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-4)


def test_a_running_batch_of_a_view_joins_as_alone(bundle):
    _, tv = engines(bundle)
    view, srcs = tv.view("en"), sources(tv, ("en",) * 4)
    batch = DecodeBatch(view)
    batch.add(srcs[:2], [0, 1], scored=True)
    done = {row.tag: row.tokens for row in batch.step()}
    batch.add(srcs[2:], [2, 3], scored=True)  # join mid-way
    while batch:
        done.update({row.tag: row.tokens for row in batch.step()})
    assert [done[k] for k in range(4)] == tv.generate(srcs)


def test_the_scheduler_gives_each_target_language_its_lanes(bundle):
    _, tv = engines(bundle)
    texts = [tv.manifest.model_input(t, lang) for t, lang in zip(TEXTS, ("en", "de", "en", "de"))]
    b = ContinuousScheduler({"m": lambda texts, **o: tv.translate(texts)}, {"m": tv}, cost=lambda m, t: tv.n_tokens(t))

    async def main():
        return await asyncio.gather(b.submit("m", texts[:2]), b.submit("m", texts[2:]))

    out = asyncio.run(main())
    lanes = [lane for lane in b.workers[0].batches if lane.model == "m"]
    b.stop()
    assert [*out[0], *out[1]] == [tv.translate([t])[0] for t in texts]
    assert {lane.target for lane in lanes} == {"en", "de"}


def test_a_manifest_whose_vocabulary_file_has_no_checksum_is_refused(bundle):
    raw = json.loads((bundle / "manifest.json").read_text())
    del raw["files"][FILE]
    with pytest.raises(BundleError, match="target_vocab file"):
        parse_manifest(raw)


def test_target_pieces_are_gathered_per_language():
    encode = lambda texts: [[len(w) for w in t.split()] for t in texts]  # noqa: E731
    assert target_pieces(encode, [("a bb", "en"), ("ccc", "de"), ("dddd a", "en")]) == {"en": {1, 2, 4}, "de": {3}}


@pytest.mark.parametrize("on", [True, False])
def test_the_setting_turns_them_off_for_the_service(bundle, monkeypatch, on):
    from service.registry import _engine
    from service.settings import Settings

    monkeypatch.setenv("TRANSERVE_TARGET_VOCAB", str(on).lower())
    manifest = load_manifest(bundle)
    engine = _engine(bundle, manifest, resolve_providers("cpu"), Settings(variant="int8-static"))
    assert (engine.target_vocab is not None) is on
    source = sources(engine)[0]
    assert engine.view(engine.target_of(source)).n_logits == (52 - 4 + 2 if on else manifest.vocab_size)


def test_a_language_with_a_multibyte_piece_keeps_every_multibyte_piece():
    import sentencepiece as spm

    from training.vocab import with_continuation_bytes

    sp = spm.SentencePieceProcessor(model_file=str(Path(__file__).resolve().parents[2] / "model/multi/spm.model"))
    byte = {int(sp.id_to_piece(i)[1:-1], 16): i for i in range(sp.get_piece_size()) if sp.is_byte(i)}
    word = sp.piece_to_id("▁the")
    got = with_continuation_bytes({"zh": {word, byte[0xE5], byte[0x80]}, "en": {word, byte[0x3D]}}, sp)
    assert got["en"] == {word, byte[0x3D]}  # no multi-byte UTF-8 byte: nothing to complete
    multibyte = {byte[v] for v in [*range(0x80, 0xC0), *range(0xC2, 0xF5)]}
    assert got["zh"] == {word} | multibyte and len(multibyte) == 115
