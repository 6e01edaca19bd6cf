"""Lexical shortlists (service/runtime/shortlist.py, training/shortlist.py) on the tiny multilingual
bundle: the builder's tables from tiny parallel text, the projection-less decoder and the
per-batch projection (the full graph's logits on the columns, bit for bit, whatever the rows and
columns), a sentence decoding as the full graph with every piece outside its list masked, and
greedy, beam and the running batch giving a sentence the same tokens and scores alone or beside
any batch-mates; the off switches; a bundle without a shortlist decoding as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from service.runtime.bundle import BundleError, load_manifest, parse_manifest
from service.runtime.continuous import DecodeBatch
from service.runtime.engine import TranslateOptions
from service.runtime.sessions import resolve_providers
from service.runtime.shortlist import PROJECTION
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES

# writing a shortlist edits graphs (the onnx package, training extras); the service-only install
# of CI skips this module, the full one runs it
onnx = pytest.importorskip("onnx", reason="writing a shortlist needs the onnx package (training extras)")

from training.shortlist import (  # noqa: E402 - after the skip
    FILE,
    build_projection_int8,
    build_tables,
    graph_file,
    table,
    write_shortlist,
)

TEXTS = ["der hund spielt mit der katze", "ein mann", "die frau läuft im park und das kind", "katze", "hund"]
TARGETS = ("en", "de", "en", "en", "de")
K, FREQUENT = 3, 4


def pairs(sp, n=60, seed=0):
    """Tiny parallel text: random piece strings, each target a noisy function of its source."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        src = rng.integers(4, 80, rng.integers(2, 8)).tolist()
        tgt = [(p * 7) % 76 + 4 for p in src] + rng.integers(4, 80, 1).tolist()
        rows.append((sp.decode(src), sp.decode(tgt)))
    return rows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("shortlist") / "multi"
    shutil.copytree(TINY_BUNDLES / "multilingual" / "multi", out)
    manifest = load_manifest(out)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / manifest.tokenizer))
    rows = [(s, t, lang) for lang, seed in (("en", 0), ("de", 1)) for s, t in pairs(sp, seed=seed)]
    tables = build_tables(rows, sp.encode, sp.encode, manifest.vocab_size, k=K, frequent=FREQUENT, exclude=[0, 2])
    write_shortlist(out, tables, {"k": K, "frequent": FREQUENT})
    return out


def engines(bundle, variant="int8-static", **options):
    manifest, cpu = load_manifest(bundle), resolve_providers("cpu")
    return Translator(bundle, manifest, cpu, threads=1, variant=variant, **options)


def sources(engine, targets=TARGETS):
    return engine.encode([engine.manifest.model_input(t, lang) for t, lang in zip(TEXTS, targets)])


def test_the_table_ranks_a_sources_translation_first_and_keeps_the_frequent_pieces():
    rows = [([10, 11], [20, 5]), ([10, 12], [20, 5]), ([11], [21, 5]), ([12, 13], [22, 5]), ([10], [20, 21])]
    t = table(rows, 30, k=2, frequent=2, min_count=1)
    assert t["targets"][t["offsets"][10] : t["offsets"][11]].tolist()[0] == 20  # with 10 in all three
    assert t["frequent"].tolist() == [5, 20]  # by tokens: 5 four times, 20 three
    assert t["seen"].tolist() == [5, 20, 21, 22]
    assert np.diff(t["offsets"]).max() <= 2
    kept = table(rows, 30, k=2, frequent=2, min_count=2)  # pairs seen once are left out
    assert kept["targets"][kept["offsets"][13] : kept["offsets"][14]].tolist() == []


def test_the_bundle_gets_the_file_and_a_projection_less_decoder_per_int8_variant(bundle):
    manifest = load_manifest(bundle)  # every new file's checksum is in the manifest and verified
    spec = manifest.shortlist
    assert spec["file"] == FILE and spec["languages"] == ["de", "en"] and spec["k"] == K
    assert "int8-static" in spec["graphs"] and "fp32" not in spec["graphs"]  # fp32: no int8 projection
    for variant, file in spec["graphs"].items():
        assert file == graph_file(variant) and file in manifest.files
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["files"].pop(FILE)
    with pytest.raises(BundleError, match="shortlist file"):
        parse_manifest(raw)


def test_the_shipped_projection_graph_is_what_the_builder_makes():
    assert onnx.load(str(PROJECTION)).graph == build_projection_int8().graph


def test_the_projection_gives_the_full_graphs_logits_whatever_the_rows_and_columns(bundle):
    full = engines(bundle, target_vocab=False, shortlist=False)
    view = engines(bundle).view(None)
    assert view.shortlist is not None
    src, _ = full.padded(sources(full))
    tokens = np.array([[full.bos]] * len(src), dtype=np.int64)
    want = full.step(full.start(src, width=4), tokens)
    hidden = view.step(view.start(src, width=4), tokens)
    rng = np.random.default_rng(0)
    projection = view.shortlist.projection
    for n in (80, 33, 7, 1):
        ids = np.sort(rng.choice(80, n, replace=False))
        feeds = projection.columns(ids)
        for rows in (slice(None), slice(0, 1), slice(1, 4)):
            assert np.array_equal(projection.logits(hidden[rows], feeds), want[rows][:, ids])


def masked_greedy(full, source, allowed):
    """The full graph's greedy decoding of one sentence, with its log-probabilities over
    `allowed`, every other piece masked out."""
    src, limits = full.padded([source])
    state = full.start(src, width=int(limits[0]))
    tokens, out, score = np.full((1, 1), full.bos, dtype=np.int64), [], 0.0
    for _ in range(int(limits[0])):
        logits = full.step(state, tokens)[0][allowed]
        best = int(logits.argmax())
        score += float(logits[best]) - float(
            np.log(np.exp(logits.astype(np.float64) - logits.max()).sum()) + logits.max()
        )
        if allowed[best] == full.eos:
            break
        out.append(int(allowed[best]))
        tokens = np.array([[allowed[best]]], dtype=np.int64)
    return out, score


def test_a_sentence_decodes_as_the_full_graph_restricted_to_its_list(bundle):
    full = engines(bundle, target_vocab=False, shortlist=False)
    full.loop_guard = None
    t = engines(bundle)
    t.loop_guard = None
    srcs = sources(t)
    lists = [t.view(None).shortlist.pieces(s) for s in srcs]
    assert all(len(x) < 80 for x in lists)  # the lists do cut
    got = t.generate_nbest(srcs, beam_size=1)
    for s, allowed, hyps in zip(srcs, lists, got):
        tokens, score = masked_greedy(full, s, allowed)
        assert hyps[0].tokens == tokens
        assert hyps[0].score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 3])
def test_a_sentence_gets_the_same_tokens_and_scores_alone_or_with_any_batch_mates(bundle, beam):
    t = engines(bundle)
    srcs = sources(t)
    options = TranslateOptions(beam_size=beam, n_best=min(beam, 2), return_scores=True)
    texts = [t.manifest.model_input(x, lang) for x, lang in zip(TEXTS, TARGETS)]
    alone = [t.translate_batch([x], options)[0] for x in texts]
    assert t.translate_batch(texts, options) == alone
    assert t.translate_batch(texts[::-1], options) == alone[::-1]
    assert t.translate_batch(texts[1:4] + texts[1:2], options) == alone[1:4] + alone[1:2]
    assert len({len(t.view(None).shortlist.pieces(s)) for s in srcs}) > 1  # the rows' lists differ


def test_a_running_batch_with_the_shortlist_decodes_each_row_as_alone(bundle):
    t = engines(bundle)
    srcs = sources(t)
    batch = DecodeBatch(t)
    assert batch.shortlist is not None
    alone = {i: t.generate_nbest([s], beam_size=1)[0][0] for i, s in enumerate(srcs)}
    done = {}
    batch.add(srcs[:2], [0, 1], scored=True)
    for step in range(60):
        if step == 1:
            batch.add(srcs[2:4], [2, 3], scored=True)  # joins a running batch
        if step == 3:
            batch.add(srcs[4:], [4], scored=True)
        for row in batch.step():
            done[row.tag] = row
        if len(done) == len(srcs):
            break
    for i, h in alone.items():
        assert done[i].tokens == h.tokens
        assert done[i].score == h.score


def test_the_off_switches_decode_every_piece_of_the_language(bundle):
    on, off = engines(bundle), engines(bundle, shortlist=False)
    texts = [on.manifest.model_input(x, lang) for x, lang in zip(TEXTS, TARGETS)]
    options = TranslateOptions(beam_size=2, return_scores=True)
    plain = off.translate_batch(texts, options)
    assert off.translate_batch(texts, TranslateOptions(beam_size=2, return_scores=True, shortlist=True)) == plain
    assert not off.has_shortlist and off.view(None) is off
    assert on.translate_batch(texts, TranslateOptions(beam_size=2, return_scores=True, shortlist=False)) == plain
    assert on.translate_batch(texts, options) != plain  # the scores are normalised over the lists


def test_a_bundle_without_a_shortlist_decodes_as_before(bundle):
    plain_dir = TINY_BUNDLES / "multilingual" / "multi"
    manifest, cpu = load_manifest(plain_dir), resolve_providers("cpu")
    before = Translator(plain_dir, manifest, cpu, threads=1, variant="int8-static")
    assert not before.has_shortlist and before.view(None) is before and DecodeBatch(before).shortlist is None
    off = engines(bundle, shortlist=False)
    texts = [manifest.model_input(x, lang) for x, lang in zip(TEXTS, TARGETS)]
    for options in (TranslateOptions(), TranslateOptions(return_scores=True), TranslateOptions(beam_size=3, n_best=2)):
        assert before.translate_batch(texts, options) == off.translate_batch(texts, options)


def test_alignment_reads_the_projection_less_decoder_with_the_same_weights(bundle):
    t, off = engines(bundle), engines(bundle, shortlist=False)  # off: forced decoding through the full decoder
    assert t._forced() is not t and off._forced() is off
    srcs = sources(t)
    targets = [[5, 9, 12], [7], [30, 31, 32, 33]]
    assert np.array_equal(t.attention(srcs[:3], targets), off.attention(srcs[:3], targets))


def test_variants_without_a_projection_less_decoder_serve_without_the_shortlist(bundle):
    t = engines(bundle, variant="fp32")
    assert not t.has_shortlist and t.view(None) is t


@pytest.mark.parametrize("on", [True, False])
def test_the_setting_loads_it_or_not(bundle, monkeypatch, on):
    from service.registry import _engine
    from service.settings import Settings

    monkeypatch.setenv("TRANSERVE_SHORTLIST", str(on).lower())
    engine = _engine(bundle, load_manifest(bundle), resolve_providers("cpu"), Settings(variant="int8-static"))
    assert engine.has_shortlist is on


def test_a_request_turns_it_off_through_the_service(bundle, tmp_path):
    from tests.service.conftest import make_client, wait_ready

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(bundle, models / "multi")
    on = engines(bundle)
    off = engines(bundle, shortlist=False)
    text = TEXTS[0]
    want = {flag: t.translate([t.manifest.model_input(text, "en")])[0] for flag, t in ((True, on), (False, off))}
    assert want[True] != want[False]  # the tiny bundle's lists change this sentence
    with make_client(models, variant="int8-static", cache_mb=0) as client:
        wait_ready(client)
        for flag in (True, False):
            for beam in (1, 2):
                body = {"q": text, "source": "de", "target": "en", "shortlist": flag, "beam_size": beam}
                r = client.post("/translate", json=body)
                assert r.status_code == 200, r.text
                if beam == 1:
                    assert r.json()["translatedText"] == want[flag].strip()


def test_the_command_line_builds_it_from_parallel_files(tmp_path, capsys):
    import sentencepiece as spm

    from training.__main__ import main

    out = tmp_path / "multi"
    shutil.copytree(TINY_BUNDLES / "multilingual" / "multi", out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    rows = pairs(sp, n=40)
    (tmp_path / "src.txt").write_text("\n".join(s for s, _ in rows) + "\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("\n".join(t for _, t in rows) + "\n", encoding="utf-8")
    argv = ["shortlist", "--bundle", str(out), "--source", str(tmp_path / "src.txt"), "--target"]
    assert main([*argv, str(tmp_path / "tgt.txt"), "--target-lang", "en", "--k", "4", "--frequent", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["languages"] == ["en"] and printed["pairs"] == 40 and printed["k"] == 4
    manifest = load_manifest(out)  # checksums verified
    t = Translator(out, manifest, resolve_providers("cpu"), threads=1, variant="int8-static")
    assert t.has_shortlist
    de = t.encode([manifest.model_input(TEXTS[0], "de")])[0]  # a language without a table: every piece
    assert len(t.view(None).shortlist.pieces(de)) == manifest.vocab_size
    with pytest.raises(SystemExit):  # neither a config nor files
        main(["shortlist", "--bundle", str(out)])


def test_the_selection_is_beam_searchs_with_ties_to_the_lowest_piece():
    from service.runtime.beam import topk_numpy
    from service.runtime.shortlist import Columns

    rng = np.random.default_rng(0)
    columns = object.__new__(Columns)
    columns.ids = np.arange(40) * 2  # columns in ascending piece order
    for _ in range(100):
        logits = rng.integers(-4, 4, (6, 40)).astype(np.float32)  # many ties, as quantized logits have
        logits[rng.random((6, 40)) < 0.3] = -np.inf  # other rows' columns
        values, ids = columns.topk(logits, 7)
        want_values, want_columns = topk_numpy(logits, 7)
        assert np.array_equal(ids, columns.ids[want_columns])
        assert np.allclose(values, want_values)
