"""The loop guard (runtime/loop_guard.py): on models that loop (a mocked step runner cycling a
2-gram, the tiny test bundle that repeats one piece, a PyTorch model biased to one token) every
decoding path stops the repeat by the same rule, identically alone and batched; its incremental
state agrees with the rule written plainly; text without such a repeat decodes as without it."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from service.runtime.beam import beam_steps, drain, topk_numpy
from service.runtime.bundle import load_manifest
from service.runtime.continuous import DecodeBatch
from service.runtime.engine import TranslateOptions
from service.runtime.loop_guard import DEFAULT, LoopGuard, filter_topk, pick, row_bans
from service.runtime.search import greedy_hypotheses
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator
from tests.conftest import TINY_BUNDLES

PAD, BOS, EOS, V = 0, 1, 2, 12


def ends_in_loop(tokens: list[int], guard: LoopGuard = DEFAULT) -> bool:
    """Whether some prefix of `tokens` ends with `copies` copies in a row of one n-gram."""
    return any(tokens[t] in row_bans(tokens[:t], guard) for t in range(len(tokens)))


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "guard",
    [
        LoopGuard(1, 2, 2),
        LoopGuard(2, 3, 3),
        LoopGuard(4, 4, 4),
        LoopGuard(3, 2, 2),
        LoopGuard(4, 3, 4),
        LoopGuard(3, 2, 3),
    ],
)
def test_the_incremental_state_bans_what_the_rule_says(guard):
    rng = np.random.default_rng(guard.max_ngram * 10 + guard.copies)
    rows = [list(rng.integers(3, 3 + alphabet, size=40)) for alphabet in (1, 2, 2, 3, 3, 4) for _ in range(5)]
    # sources: none, random ones over few ids (with repeats of their own), padded to one array
    sources = [
        [] if r % 3 == 0 else list(rng.integers(3, 3 + r % 4 + 1, size=int(rng.integers(1, 20)))) for r in range(30)
    ]
    padded = np.full((30, 20), PAD)
    for r, src in enumerate(sources):
        padded[r, : len(src)] = src
    assert sum(map(bool, guard.source_units(sources))) >= 5  # some sources repeat something
    repeats = guard.state(padded, PAD)
    for t in range(40):
        banned = repeats.banned()
        for r, row in enumerate(rows):
            want = sorted(set(row_bans(row[:t], guard, sources[r])))
            assert sorted(set(banned[r][banned[r] >= 0].tolist())) == want, (r, t)
        repeats.push(np.array([row[t] for row in rows]))
        # not armed: no row can be banned anything (pick and filter_topk return at once)
        assert repeats.armed or (repeats.banned() == -1).all(), t
    # a sub-batch (rows leave, beams reordered) keeps each row's own state
    keep = np.array([5, 0, 5, 17])
    sub = repeats.take(keep)
    np.testing.assert_array_equal(sub.banned(), repeats.banned()[keep])


def test_the_rule():
    g = LoopGuard(4, 4)
    assert row_bans([7, 7, 7], g) == [7]  # a fourth 7 would make 4 copies of "7"
    assert row_bans([7, 7], g) == []
    assert row_bans([5, 6, 5, 6, 5, 6, 5], g) == [6]  # "5 6" x 4
    assert row_bans([5, 6, 5, 6, 5, 6], g) == []  # three copies and a half is allowed: no 4th yet
    assert row_bans([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2], g) == [3]
    assert row_bans([9, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4], g) == []  # units of 5: not looked at
    # a repeat its source has is not banned (the same pieces, `copies` times in a row)
    assert row_bans([7, 7, 7], g, source=[9, 7, 7, 7, 7, 3]) == []
    assert row_bans([7, 7, 7], g, source=[9, 7, 7, 7, 3]) == [7]
    assert row_bans([5, 6, 5, 6, 5, 6, 5], g, source=[5, 6] * 4) == []
    assert g.source_units([[1, 5, 6, 5, 6, 5, 6, 5, 6, 2]]) == [{(5, 6)}]  # (6, 5) only 3 times and a half
    assert g.source_units(np.array([[1, 0, 0, 0, 0]]), pad=0) == [frozenset()]  # padding is not the source
    with pytest.raises(ValueError):
        LoopGuard(0, 4)


def test_pick_takes_the_best_unbanned_column_and_filter_keeps_the_order():
    g = LoopGuard(2, 2, 2)
    repeats = g.state([[], []])
    repeats.push(np.array([4, 5]))  # row 0 may not take 4 next, row 1 not 5
    logits = np.array([[0, 0, 0, 0, 9, 8, 8, 0], [0, 0, 0, 0, 1, 9, 1, 0]], dtype=np.float32)
    best = logits.argmax(-1)
    cols, ids = pick(logits, best, best, repeats, lambda c: c)
    assert cols.tolist() == [5, 4] and ids.tolist() == [5, 4]  # ties: the lowest column, as argmax
    assert logits[0, 4] == 9  # the logits are not changed
    values, ids = topk_numpy(logits, 4)
    v, i = filter_topk(values, ids, repeats, 3)
    assert i.tolist() == [[5, 6, 0], [4, 6, 0]] and np.isfinite(v).all()
    assert pick(logits, best, best, None, lambda c: c)[1] is best


# -- a mocked model that cycles a 2-gram --------------------------------------------------------


def cycling_logits(first: np.ndarray, last: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Each row cycles "a b a b ..." (a = its source's first id, b = a + 1) until position 30,
    then ends; its second best is always a + 2, third best a + 3 (a small vocabulary)."""
    logits = np.zeros((len(first), V), dtype=np.float32)
    for r, (a, t, p) in enumerate(zip(first, last, position)):
        if p >= 30:
            logits[r, EOS] = 10
            continue
        logits[r, a + 1 if t == a else a] = 10
        logits[r, a + 2] = 5
        logits[r, a + 3] = 4
    return logits


class CyclingRunner:
    """A step runner (runtime/steps.py's interface) of `cycling_logits`."""

    drops_rows = True

    def __init__(self) -> None:
        self.graph = SimpleNamespace(pad=PAD, bos=BOS, eos=EOS, tokens_of=lambda c: c, cache_names=[], n_logits=V)

    def start(self, src: np.ndarray, width: int | None = None) -> dict:
        return {"first": src[:, 0].copy(), "position": np.zeros(len(src), dtype=np.int64)}

    def step(self, state: dict, tokens: np.ndarray) -> np.ndarray:
        logits = cycling_logits(state["first"], tokens[:, 0], state["position"])
        state["position"] = state["position"] + 1
        return logits

    def stepper(self, state: dict):
        return lambda tokens: self.step(state, tokens)

    def keep_row(self, name, value, keep, filled):
        return value[keep]


def expected_cycle(a: int, guard: LoopGuard | None, limit: int = 40) -> list[int]:
    """The mocked model's greedy output for first id `a`, by the plain rule."""
    out: list[int] = []
    last = BOS
    for p in range(limit):
        order = np.argsort(-cycling_logits(np.array([a]), np.array([last]), np.array([p]))[0], kind="stable")
        banned = row_bans(out, guard) if guard else []
        token = int(next(t for t in order if t not in banned))
        if token == EOS:
            break
        out.append(token)
        last = token
    return out


SOURCES = np.array([[3, 9, EOS], [5, EOS, PAD], [6, 4, EOS]])
LIMITS = np.array([40, 40, 40])


def test_greedy_on_a_looping_runner_stops_each_rows_loop_alone_and_batched():
    runner = CyclingRunner()
    plain = greedy_hypotheses(runner, SOURCES, LIMITS, scored=True, guard=None)
    assert [h[0].tokens for h in plain] == [expected_cycle(a, None) for a in (3, 5, 6)]
    assert all(ends_in_loop(h[0].tokens) for h in plain)  # the model loops
    guarded = greedy_hypotheses(runner, SOURCES, LIMITS, scored=True)
    for a, h in zip((3, 5, 6), guarded):
        assert h[0].tokens == expected_cycle(a, DEFAULT)
        assert not ends_in_loop(h[0].tokens)
        c = DEFAULT.copies  # "a b" c - 1 times and "a", then the c-th "b" is banned: its second best
        assert h[0].tokens[: 2 * c] == [a, a + 1] * (c - 1) + [a, a + 2]
    alone = [greedy_hypotheses(runner, SOURCES[i : i + 1], LIMITS[i : i + 1], scored=True)[0] for i in range(3)]
    assert alone == guarded  # tokens and scores


def test_beam_search_on_a_looping_runner_stops_the_loop_alone_and_batched():
    runner = CyclingRunner()

    def run(src, beam, guard=DEFAULT):
        return drain(beam_steps(runner.start, runner.step, src, LIMITS[: len(src)], beam, beam, BOS, EOS, guard=guard))

    for beam in (2, 3):
        plain = run(SOURCES, beam, guard=None)
        assert ends_in_loop(plain[0][0].tokens)
        batched = run(SOURCES, beam)
        for hyps in batched:
            assert hyps and not any(ends_in_loop(h.tokens) for h in hyps)
        assert [run(SOURCES[i : i + 1], beam)[0] for i in range(3)] == batched


# -- the tiny test bundle, which repeats one piece -------------------------------------------------

TEXTS = ["hallo welt", "der hund spielt mit der katze im park und die frau läuft", "ein mann", "das kind", "katze"]


@pytest.fixture(scope="module", params=[("models", "int8-static"), ("contract2", "int8-static"), ("models", "fp32")])
def engine(request):
    folder, variant = request.param
    bundle = TINY_BUNDLES / folder / "de-en"
    return Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant=variant)


def test_the_tiny_bundle_loops_and_every_path_stops_it_identically_alone_and_batched(engine):
    sources = engine.encode(TEXTS)
    unguarded = [h[0].tokens for h in drain(engine._search(sources, TranslateOptions(loop_guard=False)))]
    assert all(ends_in_loop(t) for t in unguarded)  # the model loops: one piece, over and over
    engine.loop_guard = None  # the engine's guard off: the same
    try:
        assert engine.generate(sources) == unguarded
    finally:
        engine.loop_guard = DEFAULT
    # greedy: no loop, batched == alone, and beam 1 (scored) the same tokens
    greedy = engine.generate(sources)
    assert not any(ends_in_loop(t) for t in greedy)
    assert greedy == [engine.generate([s])[0] for s in sources]
    assert [h[0].tokens for h in engine.generate_nbest(sources, beam_size=1)] == greedy
    # beam search: no hypothesis loops; a sentence's n-best alone == batched
    nbest = engine.generate_nbest(sources, beam_size=3, n_best=3)
    assert all(not ends_in_loop(h.tokens) for hyps in nbest for h in hyps)
    for s, hyps in zip(sources, nbest):
        alone = engine.generate_nbest([s], beam_size=3, n_best=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        assert [h.score for h in alone] == pytest.approx([h.score for h in hyps], abs=1e-4)
    # the running batch: sentences joining mid-way, one of them without the guard
    batch = DecodeBatch(engine)
    done: dict[int, list[int]] = {}
    joins = {0: [0, 1], 2: [2], 3: [3, 4]}
    t = 0
    while batch or t <= max(joins):
        for k in joins.get(t, []):
            batch.add([sources[k]], [k], scored=True, guard=k != 4)
        done.update({row.tag: row.tokens for row in batch.step()})
        t += 1
    assert [done[k] for k in range(4)] == greedy[:4]
    assert done[4] == unguarded[4]


def test_the_guard_is_per_row_in_a_running_batch(engine):
    sources = engine.encode(TEXTS)
    engine.loop_guard = None
    try:
        batch = DecodeBatch(engine)
        assert batch.repeats is None
        batch.add(sources, list(range(len(sources))))
        done = {}
        while batch:
            done.update({row.tag: row.tokens for row in batch.step()})
        assert [done[k] for k in range(len(sources))] == engine.generate(sources)
    finally:
        engine.loop_guard = DEFAULT


def test_target_language_views_share_the_translators_guard(tmp_path):
    """A view is made at a language's first sentence; the guard set on the translator later (a
    setting, a benchmark switching it) is the view's too, and the running batches' of the view."""
    import shutil

    pytest.importorskip("onnx", reason="writing target vocabularies needs the onnx package (training extras)")
    from training.vocab import write_target_vocab

    bundle = tmp_path / "multi"
    shutil.copytree(TINY_BUNDLES / "multilingual" / "multi", bundle)
    write_target_vocab(bundle, {"en": set(range(4, 52)), "de": set(range(28, 80))})
    tv = Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1, variant="int8-static")
    sources = tv.encode([tv.manifest.model_input(t, "en") for t in TEXTS])
    view = tv.view("en")
    guarded = tv.generate(sources)
    tv.loop_guard = None
    try:
        assert view.loop_guard is None and DecodeBatch(view).repeats is None
        plain = tv.generate(sources)
        assert plain == [h[0].tokens for h in drain(tv._search(sources, TranslateOptions(loop_guard=False)))]
    finally:
        tv.loop_guard = DEFAULT
    assert view.loop_guard is DEFAULT and tv.generate(sources) == guarded
    assert plain != guarded and any(ends_in_loop(t) for t in plain) and not any(ends_in_loop(t) for t in guarded)


# -- the PyTorch reference ----------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch (the training job)")
def test_the_pytorch_reference_applies_the_same_rule():
    import torch

    from training.transformer import Seq2SeqTransformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, dropout=0.0,
        attention_dropout=0.0, max_len=40, output_bias=True,
    )  # fmt: skip
    model = Seq2SeqTransformer(cfg).eval()
    bias = model.output_bias  # tied output with a bias
    with torch.no_grad():  # token 7 first, then 8, 9, ... and </s> last: the model repeats 7
        bias.copy_(torch.tensor([-100.0] * cfg.vocab_size))
        for rank, token in enumerate([7, 8, 9, 10, 11, 12]):
            bias[token] = 100.0 - 10 * rank
    src = torch.tensor([[5, 6, 4, cfg.eos_id], [9, cfg.eos_id, cfg.pad_id, cfg.pad_id]])
    with torch.no_grad():
        plain = model.greedy_decode(src, loop_guard=None)
        guarded = model.greedy_decode(src)
        uncached = model.greedy_decode(src, use_cache=False)
        alone = [model.greedy_decode(src[i : i + 1, : int((src[i] != cfg.pad_id).sum())])[0] for i in range(2)]
    assert all(set(p) == {7} for p in plain)  # the model loops on one token
    assert guarded == uncached == alone
    for out in guarded:
        assert not ends_in_loop(out)
        assert out[:4] == [7, 7, 7, 8]  # the 4th 7 banned: the best other token
        # each token is the best (by the bias) that the plain rule does not ban
        assert all(
            out[t] == next(x for x in (7, 8, 9, 10, 11, 12) if x not in row_bans(out[:t], DEFAULT))
            for t in range(len(out))
        )
