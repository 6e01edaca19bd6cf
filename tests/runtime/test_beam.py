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

SENTENCES = ["hallo welt", "der hund spielt mit der katze", "ein mann", "die frau läuft rot blau", "das kind"]


@pytest.fixture(scope="module")
def engine(model_dir):
    bundle = model_dir / "de-en"
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
