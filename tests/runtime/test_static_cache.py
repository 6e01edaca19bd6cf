"""Graph contract 3: the decoder writes fixed-width caches in place (GroupQueryAttention, past
and present bound to one buffer). The same weights exported with contract 2 (caches grown by one
slot a step) decode the same tokens and scores; a step writes its own slot and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime import graph_io
from service.runtime.bundle import load_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES

SENTENCES = ["hallo welt", "der hund spielt mit der katze im park", "ein mann", "die frau läuft rot blau", "das"]


def _engine(folder: str, variant: str) -> Translator:
    bundle = TINY_BUNDLES / folder / "de-en"
    return Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant=variant)


@pytest.mark.parametrize("variant", ["fp32", "int8-static"])
def test_contract_three_decodes_as_contract_two_does(variant):
    static, grown = _engine("models", variant), _engine("contract2", variant)
    assert static.static and not grown.static and grown.per_row
    sources = static.encode(SENTENCES)
    assert sources == grown.encode(SENTENCES)
    assert static.generate(sources) == grown.generate(sources)
    a, b = static.generate_nbest(sources, 4, 3), grown.generate_nbest(sources, 4, 3)
    assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]
    np.testing.assert_allclose([h.score for hs in a for h in hs], [h.score for hs in b for h in hs], atol=1e-4)


def test_a_step_writes_its_own_slot_in_place_and_nothing_else():
    t = _engine("models", "fp32")
    src, _ = t.padded(t.encode(SENTENCES[:2]))
    state = t.start(src, width=6)
    buffers = [state[name] for name in t.cache_names]
    assert all(b.shape[2] == 6 for b in buffers)
    tokens = np.full((2, 1), t.bos, dtype=np.int64)
    for step in range(3):
        before = [b.copy() for b in buffers]
        logits = t.step(state, tokens)
        tokens = logits.argmax(-1)[:, None]
        for name, old, new in zip(t.cache_names, before, buffers):
            assert state[name] is new  # the same memory: written in place, not replaced
            assert np.array_equal(np.delete(old, step, axis=2), np.delete(new, step, axis=2))  # other slots kept
            assert np.abs(new[:, :, step]).sum() > 0  # its own slot written
    assert state[graph_io.POSITION].tolist() == [3, 3]


def test_unbound_runs_give_the_same_as_bound_ones():
    # what the int8-static calibration records (session.run, present caches returned as copies)
    bound, plain = _engine("models", "fp32"), _engine("models", "fp32")
    plain.bind_static = False
    sources = bound.encode(SENTENCES)
    assert bound.generate(sources) == plain.generate(sources)


def test_run_step_binds_each_running_batchs_arrays_once(monkeypatch):
    # two running batches (length lanes) stepped in turn: each one's arrays are bound once, and
    # every step gives what a step bound afresh gives (a second engine, its bindings forgotten)
    t, ref = _engine("models", "int8-static"), _engine("models", "int8-static")
    built = []
    real = t.steps.bind
    monkeypatch.setattr(t.steps, "bind", lambda arrays, advance=True: built.append(1) or real(arrays, advance))

    def lanes(e):
        out = []
        for texts in (SENTENCES[:2], SENTENCES[2:]):
            src, _ = e.padded(e.encode(texts))
            state = e.start(src, width=8)
            out.append((state, np.full((src.shape[0], 1), e.bos, dtype=np.int64)))
        return out

    kept, fresh = lanes(t), lanes(ref)
    for _ in range(4):
        for (state, ids), (state2, ids2) in zip(kept, fresh):
            got = t.run_step(state, {graph_io.INPUT_IDS: ids, **state}).copy()
            want = ref.run_step(state2, {graph_io.INPUT_IDS: ids2, **state2}).copy()
            ref.steps.bindings.clear()  # bound anew at every step
            np.testing.assert_array_equal(got, want)
            for s in (state, state2):  # the positions advance in place, as runtime/continuous.py does
                s[graph_io.POSITION] += 1
            ids[:] = got.argmax(-1)[:, None]
            ids2[:] = want.argmax(-1)[:, None]
    for (state, _), (state2, _) in zip(kept, fresh):
        for name in t.cache_names:
            np.testing.assert_array_equal(state[name], state2[name])
    assert len(built) == 2  # one binding per lane, reused at its 3 later steps
    # a lane whose arrays changed (rows left: new arrays) is bound again
    state, ids = kept[0]
    smaller = {k: v[:1].copy() for k, v in state.items()}
    t.run_step(smaller, {graph_io.INPUT_IDS: ids[:1].copy(), **smaller})
    assert len(built) == 3


def test_moved_rows_reorders_in_place_as_a_gather_does():
    from service.runtime.steps import moved_rows

    rng = np.random.default_rng(0)
    value = rng.standard_normal((6, 2, 5, 3)).astype(np.float32)
    for rows in ([1, 1, 0, 5, 4, 4], [2, 0, 1], [0, 1, 2, 3, 4, 5], [5, 3]):
        rows = np.array(rows)
        moved = np.nonzero(rows != np.arange(len(rows)))[0]
        v = value.copy()
        out = moved_rows(v, rows, 3, moved)
        assert out.base is v or out is v  # the same memory: a prefix of the array
        np.testing.assert_array_equal(out[:, :, :3], value[rows, :, :3])  # the slots written so far
        np.testing.assert_array_equal(out[:, :, 3:], value[: len(rows), :, 3:])  # the others untouched


def test_beam_search_in_place_gives_what_the_two_buffer_loop_gives(monkeypatch):
    # the CPU loop (caches reordered in place, stopped sentences' rows kept until a quarter of the
    # blocks stop, one binding until rows leave) against the loop that copies every cache into a
    # second buffer each step and runs each step unbound; sentences of very different lengths, so
    # that some stop while others go on, and rows leave
    fast, plain = _engine("models", "int8-static"), _engine("models", "int8-static")
    plain.bind_static = False
    built = []
    steps = fast.view(fast.target_of(fast.encode(SENTENCES)[0])).steps  # the runner that decodes them
    real = steps.bind
    monkeypatch.setattr(steps, "bind", lambda state, advance=True: built.append(1) or real(state, advance))
    sources = fast.encode(SENTENCES * 3)
    for beam in (2, 4):
        a, b = fast.generate_nbest(sources, beam, beam), plain.generate_nbest(sources, beam, beam)
        assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]
        np.testing.assert_allclose([h.score for hs in a for h in hs], [h.score for hs in b for h in hs], atol=1e-5)
    steps = max(h.length for hs in a for h in hs)
    assert 2 <= len(built) < steps // 2  # bound again only when rows left, not at every step


def test_a_running_batch_keeps_one_binding_when_its_arrays_change():
    # a batch that grows or compacts gets new arrays: its old binding (which holds the old
    # arrays, caches included) is replaced, not kept beside the new one
    t = _engine("models", "int8-static")
    src, _ = t.padded(t.encode(SENTENCES[:2]))
    state = t.start(src, width=6)
    tokens = np.full((2, 1), t.bos, dtype=np.int64)
    t.step(state, tokens)
    for width in (8, 10):  # the same batch (the same state dict), wider buffers
        state.update(t.start(src, width=width))
        t.step(state, tokens)
    other = t.start(src, width=6)  # a second running batch has its own
    t.step(other, tokens)
    assert len(t.steps.bindings) == 2
