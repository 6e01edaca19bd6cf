"""The running decode batch: a sentence's tokens and score are the same alone, in a batch, and
joining a batch that is already decoding (at any step); finished rows leave; the cache and the
source columns shrink back when the rows that needed them are gone; abandoned rows are dropped."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.runtime import graph_io
from service.runtime.bundle import BundleError, load_manifest
from service.runtime.continuous import DecodeBatch
from service.runtime.search import greedy_hypotheses
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES

SENTENCES = [
    "hallo welt",
    "der hund spielt mit der katze im park und die frau läuft",
    "ein mann",
    "die frau läuft rot blau",
    "das kind",
    "katze",
]


@pytest.fixture(
    scope="module",
    params=[("models", "fp32"), ("models", "int8-static"), ("contract2", "int8-static")],
    ids=["static-cache-fp32", "static-cache-int8-static", "contract2-int8-static"],
)
def engine(request):
    # graph contract 3 (caches written in place) and the same weights with contract 2
    folder, variant = request.param
    bundle = TINY_BUNDLES / folder / "de-en"
    return Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant=variant)


def _alone(engine, sources):
    return [greedy_hypotheses(engine.steps, *engine.padded([s]), scored=True)[0][0] for s in sources]


def _run(batch: DecodeBatch, joins: dict[int, list[tuple[int, list[int]]]]) -> dict[int, tuple]:
    """Step the batch; at step t, the sentences joins[t] join. Returns tag -> (tokens, score, length)."""
    done: dict[int, tuple] = {}
    t = 0
    while batch or any(k >= t for k in joins):
        if t in joins:
            tags, sources = zip(*joins[t])
            batch.add(list(sources), list(tags), scored=True)
        for row in batch.step():
            done[row.tag] = (row.tokens, row.score, row.length)
        t += 1
    return done


def test_joining_mid_way_gives_the_same_tokens_and_scores_as_alone(engine):
    sources = engine.encode(SENTENCES)
    alone = _alone(engine, sources)
    assert len({len(h.tokens) for h in alone}) > 1  # sentences of different lengths: rows leave at different steps
    # two start together, the others join at steps 1, 2 and 5 (into a batch of other widths)
    joins = {0: [(0, sources[0]), (1, sources[1])], 1: [(2, sources[2])], 2: [(3, sources[3]), (4, sources[4])]}
    joins[5] = [(5, sources[5])]
    done = _run(DecodeBatch(engine), joins)
    for k, h in enumerate(alone):
        tokens, score, length = done[k]
        assert tokens == h.tokens, k
        assert length == h.length
        assert score == pytest.approx(h.score, abs=1e-3)
    # and the same as a batch that started together (the plain greedy loop)
    assert [d[0] for d in (done[k] for k in range(len(sources)))] == engine.generate(sources)


def test_rows_leave_and_the_batch_narrows(engine):
    sources = engine.encode(SENTENCES)
    batch = DecodeBatch(engine)
    batch.add([sources[1]], ["long"])  # the longest source
    batch.step()
    batch.step()
    batch.add([sources[5]], ["short"])
    assert batch.state["src_mask"].shape[1] == len(sources[1])
    assert batch.valid[1].sum() == 0 and batch.width == 2  # the newcomer owns none of the slots yet
    gone = batch.drop(lambda tag: tag == "long")
    assert [r.tag for r in gone] == ["long"] and len(batch) == 1
    # the cache slots only the long row owned, and its longer source, are cut off
    assert batch.width == 0 and batch.state["src_mask"].shape[1] == len(sources[5])
    while batch:
        batch.step()
    assert batch.tokens == 0


def test_the_token_bound_covers_every_later_step(engine):
    sources = engine.encode(SENTENCES)
    batch = DecodeBatch(engine)
    assert batch.bound([(7, 20)]) == 27
    batch.add(sources[:3], [0, 1, 2])
    bound = batch.bound()
    limits = [engine.output_limit(len(s)) for s in sources[:3]]
    assert bound == 3 * (max(len(s) for s in sources[:3]) + max(limits))
    assert batch.bound([(1, 1)]) == 4 * (max(len(s) for s in sources[:3]) + max(limits))
    while batch:
        assert batch.tokens <= bound  # what it holds never outgrows what admission reserved
        batch.step()


def test_a_contract_one_decoder_is_refused_at_load_saying_how_to_bring_it_up_to_date():
    # no position and no self mask: a decoder that cannot run rows at their own positions
    bundle = TINY_BUNDLES / "models" / "de-en"
    manifest = load_manifest(bundle)
    dec = manifest.graph("fp32", "decoder")
    old_in = [t for t in dec.inputs if t.name not in (graph_io.POSITION, graph_io.SELF_MASK)]
    old = replace(manifest, variants={"fp32": {**manifest.variants["fp32"], "decoder": replace(dec, inputs=old_in)}})
    with pytest.raises(BundleError, match=r"graph contract 1.*python -m training export"):
        Translator(bundle, old, resolve_providers("cpu"), threads=1, variant="fp32")


def test_plain_rows_skip_the_softmax(engine):
    sources = engine.encode(SENTENCES[:2])
    batch = DecodeBatch(engine)
    batch.add(sources, [0, 1])
    rows = []
    while batch:
        rows += batch.step()
    assert all(r.score == 0.0 for r in rows)
    assert np.all([r.length >= 1 for r in rows])
