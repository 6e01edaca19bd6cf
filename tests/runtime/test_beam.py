"""Batched beam search on the KV-cache decoder: beam 1 is greedy, n-best is ordered and
distinct, a sentence's n-best does not depend on its batch-mates, the output-length rule holds."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime.beam import log_softmax, logsumexp
from service.runtime.bundle import load_manifest
from service.runtime.preprocess import output_limits
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES

SENTENCES = ["hallo welt", "der hund spielt mit der katze", "ein mann", "die frau läuft rot blau", "das kind"]


@pytest.fixture(scope="module", params=["models", "contract2"], ids=["static-cache", "contract2"])
def engine(request):
    # graph contract 3 (caches written in place) and the same weights with contract 2
    bundle = TINY_BUNDLES / request.param / "de-en"
    return Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant="int8-static")


def test_log_softmax_is_stable():
    x = np.array([[1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(np.exp(log_softmax(x)).sum(), 1.0)
    np.testing.assert_allclose(logsumexp(x), [1000.0 + np.log(2.0)])


def test_beam_one_is_greedy_with_scores(engine):
    greedy = engine.translate(SENTENCES)
    scored = engine.translate_nbest(SENTENCES, beam_size=1)
    assert [s[0][0] for s in scored] == greedy
    assert all(s[0][1] <= 0 and s[0][2] >= 1 for s in scored)


def test_nbest_is_ranked_distinct_and_batch_invariant(engine):
    batched = engine.translate_nbest(SENTENCES, beam_size=4, n_best=3)
    for hyps in batched:
        assert 1 <= len(hyps) <= 3
        norm = [score / length for _, score, length in hyps]
        assert norm == sorted(norm, reverse=True)
    alone = [engine.translate_nbest([s], beam_size=4, n_best=3)[0] for s in SENTENCES]
    assert alone == batched


def test_beam_respects_the_output_length_limit(engine):
    encoded = engine.encode(SENTENCES)
    limits = output_limits(np.array([len(e) for e in encoded]), engine.max_len, engine.ratio, engine.extra)
    for hyps, limit in zip(engine.generate_nbest(encoded, beam_size=3, n_best=3), limits):
        assert all(len(h.tokens) <= limit and engine.eos not in h.tokens for h in hyps)


def test_empty_text_gives_empty_hypothesis(engine):
    assert engine.translate_nbest(["", "hallo"], beam_size=2)[0] == [("", 0.0, 0)]


def test_the_topk_graph_selects_as_numpy_does_ties_included(engine):
    from service.runtime.beam import topk_numpy

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((12, 300)) * 3).astype(np.float32)
    logits[3, [7, 50, 200]] = 9.0  # equal best values: ascending ids
    logits[5] = 0.0  # a whole row of ties
    for k in (1, 8, 300):
        values, ids = engine.topk(logits, k)
        ref_values, ref_ids = topk_numpy(logits, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(values, ref_values, atol=1e-5)
    assert engine.topk(logits, 3)[1][3].tolist() == [7, 50, 200]
    assert engine.topk(logits, 4)[1][5].tolist() == [0, 1, 2, 3]


def test_beam_search_gives_the_same_nbest_with_either_selection(engine, monkeypatch):
    from service.runtime.beam import topk_numpy

    with_graph = engine.translate_nbest(SENTENCES, beam_size=4, n_best=3)
    monkeypatch.setattr(engine, "topk", topk_numpy)
    with_numpy = engine.translate_nbest(SENTENCES, beam_size=4, n_best=3)
    assert [[t for t, _, _ in h] for h in with_graph] == [[t for t, _, _ in h] for h in with_numpy]
    for a, b in zip(with_graph, with_numpy):
        np.testing.assert_allclose([s for _, s, _ in a], [s for _, s, _ in b], atol=1e-4)


def test_the_device_resident_beam_loop_equals_the_plain_one(model_dir):
    # What runs on CUDA (caches, logits and their reordering kept on the device through IO
    # binding: graphs/beam_topk.onnx and rows_gather.onnx run there), here on the CPU provider.
    bundle = model_dir / "de-en"
    manifest = load_manifest(bundle)
    bound = Translator(bundle, manifest, resolve_providers("cpu"), threads=1, variant="int8-static", io_binding=True)
    plain = Translator(bundle, manifest, resolve_providers("cpu"), threads=1, variant="int8-static")
    assert bound.io_binding and not plain.io_binding
    sources = plain.encode(SENTENCES)
    got, want = bound.generate_nbest(sources, 4, 3), plain.generate_nbest(sources, 4, 3)
    assert [[h.tokens for h in hs] for hs in got] == [[h.tokens for h in hs] for hs in want]
    np.testing.assert_allclose([h.score for hs in got for h in hs], [h.score for hs in want for h in hs], atol=1e-5)


def test_a_sentence_waits_for_k_finished_hypotheses_before_it_stops():
    # Toy model (ids: 2 <s>, 3 </s>, 4 x, 5 y). After <s>: </s> 0.5, x 0.3, y 0.2; after x: </s>
    # 0.99. "" ends first (log 0.5 / 1 = -0.69), but "x </s>" ranks better ((log 0.3 + log 0.99) / 2
    # = -0.61). Stopping once one hypothesis is finished and no live one beats it (an earlier
    # rule) returned ""; the Hugging Face rule waits for k finished ones and compares the best
    # live one with the worst of them.
    from service.runtime.beam import beam_steps, drain

    def probs(last: int) -> np.ndarray:
        p = np.full(6, 1e-9)
        if last == 2:
            p[3], p[4], p[5] = 0.5, 0.3, 0.2
        else:
            p[3], p[4], p[5] = 0.99, 0.005, 0.005
        return np.log(p / p.sum())

    def start(src):
        return {"src": src}

    def step(state, tokens):
        return np.stack([probs(int(t)) for t in tokens[:, 0]]).astype(np.float32)

    (best,) = drain(beam_steps(start, step, np.array([[7, 3]]), np.array([5]), beam=2, n_best=1, bos=2, eos=3))
    assert best[0].tokens == [4] and best[0].length == 2
