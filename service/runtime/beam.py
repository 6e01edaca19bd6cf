"""Batched beam search over the KV-cache decoder step, in numpy.

Every sentence keeps `k` live hypotheses; the decoder runs once per step on all live rows of all
sentences (rows = sentences x beams). Each step:

1. each row's 2k best tokens by log-probability (`topk`: onnxruntime's LogSoftmax and TopK in a
   small generic graph, graphs/beam_topk.onnx, or the same in numpy), added to the row's score
   (the sum of its tokens' log-probs): a sentence's 2k best extensions are among its k rows' 2k
   best each, so only k x 2k candidates are ranked, not k x V;
2. per sentence, the best 2k of those; the ones ending in </s> within the first k become
   finished hypotheses, the best k others stay live;
3. the caches are reordered to the surviving beams' rows (a gather along the batch axis; on the
   CPU, steps.BoundStep does it in place, only for the rows whose beam changed).

The selection is vectorised over sentences (Python touches only the hypotheses that finish). A
sentence that stops keeps its rows in the batch, idle (its outputs ignored, its caches left as
they are), until a quarter of the blocks have stopped; then they all leave at once: dropping
rows costs a gather of every state entry (and, bound, a new binding), as in the greedy loop.

A sentence stops when it has k finished hypotheses and its best live one, ranked as finished
ones are (score / length ** length_penalty, length counting </s>), is below the worst of its k
best finished ones (Hugging Face's `BeamHypotheses.is_done`, onnxruntime's BeamSearch op), or at
the same output-length limit as greedy decoding; live hypotheses still running at the limit are
finished there. The stop is a heuristic (a live hypothesis's ranking score can still rise when
a likely token follows). Stopping earlier (once one hypothesis is finished and no live one
beats it) is faster but ends sentences too soon and costs BLEU; with this rule the n-best match
onnxruntime's BeamSearch op on the same graphs (figures in BENCHMARKS.md).
With k = 1 this is greedy decoding, plus the scores.

Rows are independent (the graphs are padding- and batch-invariant), so a sentence's n-best and
scores do not depend on its batch-mates. The loop guard (runtime/loop_guard.py) takes each row's
banned tokens out of its candidates (topk asks for `max_ngram` more, so 2k remain): no hypothesis
repeats one n-gram too often in a row, as in greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from service.runtime import loop_guard
from service.runtime.loop_guard import LoopGuard

if TYPE_CHECKING:
    from service.runtime.shortlist import Columns


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without <s> and </s>
    score: float  # sum of the log-probabilities of the tokens and </s>
    length: int  # tokens + </s> (the final token when cut at the limit)


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, stably (in the input's precision, float64 result)."""
    top = logits.max(axis=-1)
    shifted = logits - top[..., None]
    np.exp(shifted, out=shifted)
    return top.astype(np.float64) + np.log(shifted.sum(axis=-1, dtype=np.float64))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - logsumexp(logits)[..., None]


TopK = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def topk_numpy(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` best log-probabilities (R, k), best first, and their token ids (R, k);
    equal values in ascending id order (as ONNX TopK). The reference for graphs/beam_topk.onnx
    (a full stable sort of every row: exact, not fast)."""
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(logits, ids, axis=1) - logsumexp(logits)[:, None]
    return values.astype(np.float32), ids


def take_rows(value: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`value`'s rows, in the order of `rows` (beam_steps's gather on the CPU)."""
    return value[rows]


Steps = Generator[None, None, Any]  # yields after each decoder step; returns its result


def drain(steps: Steps) -> Any:
    """Run a stepped computation (`beam_steps`, Translator.translate_batch_steps) to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _keep_blocks(
    state: dict[str, Any],
    keep: np.ndarray,
    flat: np.ndarray,
    k: int,
    per_beam: frozenset[str] | set[str],
    take_cache: Callable[[str, Any, np.ndarray], Any],
    gather: Callable[[Any, np.ndarray], Any],
) -> dict[str, Any]:
    """The state of the sentences still searching (`keep`, per block of k rows): the per-beam
    entries follow the surviving beams (`flat`: each new row's source row), the others take any
    row of their sentence."""
    same = np.repeat(np.nonzero(keep)[0] * k, k)
    return {
        name: take_cache(name, value, flat) if name in per_beam else gather(value, same)
        for name, value in state.items()
    }


def beam_steps(
    start: Callable[[np.ndarray], dict[str, np.ndarray]],
    step: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray],
    src: np.ndarray,
    limits: np.ndarray,
    beam: int,
    n_best: int,
    bos: int,
    eos: int,
    length_penalty: float = 1.0,
    per_beam: frozenset[str] | set[str] = frozenset(),
    topk: TopK = topk_numpy,
    gather: Callable[[Any, np.ndarray], Any] = take_rows,
    vocab: int | None = None,
    gather_cache: Callable[[str, Any, np.ndarray], Any] | None = None,
    guard: LoopGuard | None = loop_guard.DEFAULT,
    pad: int | None = None,
    columns: Columns | None = None,
) -> Generator[None, None, list[list[Hypothesis]]]:
    """The `n_best` best hypotheses of each source row of `src`, best first; a generator that
    yields after each decoder step (a scheduler runs other work between two steps) and returns them.

    `start(src)`: the decoder state (batch-first arrays); `step(state, tokens)`: one step on
    `tokens` (R, 1) -> logits (R, V), caches updated in `state`. `limits`: each sentence's tokens.
    `per_beam`: the entries that differ between a sentence's beams (self-attention caches), which
    follow the surviving beams every step; the others only when sentences leave. `topk`: each
    row's n best log-probabilities and ids. `gather(value, rows)` / `gather_cache(name, value,
    rows)`: an entry's rows in that order (on a device, tensors there: `vocab` gives V; the cache
    one may be cheaper, e.g. only the slots written, in place); both may return a prefix of the
    same array. `guard`: the loop guard (None: off), reading the sources without `pad`.
    `columns`: a lexical shortlist's (runtime/shortlist.py), one mask row per source: `step`
    gives the projection's input and the logits are computed on the columns, each row's own
    (its sentence's) only; `topk` must then be `columns.topk`."""
    take_cache = gather_cache or (lambda _name, value, rows: gather(value, rows))
    k, n_best = beam, min(n_best, beam)
    b = src.shape[0]
    state = {name: gather(value, np.repeat(np.arange(b), k)) for name, value in start(src).items()}
    scores = np.where(np.arange(k) == 0, 0.0, -np.inf)[None].repeat(b, 0)  # one live beam; the others copy it
    history = np.zeros((b, k, 0), dtype=np.int64)
    done = _Finished(b, k, length_penalty)
    active = np.arange(b)  # original sentence of each block of k rows
    running = np.ones(b, dtype=bool)  # per block: still searching (else its rows idle until dropped)
    tokens = np.full((b * k, 1), bos, dtype=np.int64)
    identity = np.arange(k)
    repeats = guard.state(np.repeat(src, k, axis=0), pad) if guard is not None else None
    for t in range(int(limits.max())):
        if t:
            yield  # between two steps (nothing of this search is held in a shared buffer here)
        logits = step(state, tokens)  # (a * k, V) float32
        if columns is not None:
            logits = columns.logits(logits, np.repeat(active, k))
        vocab = vocab or logits.shape[-1]
        w = min(2 * k, vocab)  # candidates per row
        logprobs, ids = topk(logits, min(w + loop_guard.extra_width(repeats), vocab))  # each row best first
        logprobs, ids = loop_guard.filter_topk(logprobs, ids, repeats, w)  # (a * k, w) without banned tokens
        sel = _select(scores, logprobs, ids, k, w, min(2 * k, k * vocab), eos)
        at_limit = running & (t + 1 >= limits[active])
        done.collect(t, active, history, sel, at_limit)
        best_live, kth = sel.new_scores[:, 0] / (t + 1) ** length_penalty, done.kth[active]  # -inf: none live
        running &= ~(at_limit | (running & (kth > -np.inf) & ((sel.n_live == 0) | (best_live < kth))))
        if not running.any():
            break
        # Stopped sentences' rows stay (outputs ignored, caches as they are) until a quarter of the
        # blocks stopped: dropping rows costs a gather of every state entry (as in search.greedy).
        sel.new_scores[~running], sel.new_beam[~running], sel.new_token[~running] = -np.inf, identity, eos
        state, history, scores, active, running, flat, new_token = _follow(
            sel, state, history, active, running, k, per_beam, take_cache, gather
        )
        if repeats is not None:
            repeats = repeats.take(flat)
            repeats.push(new_token)
        tokens = new_token.reshape(-1, 1)
    return done.best(n_best)


def _follow(
    sel: _Selection,
    state: dict[str, Any],
    history: np.ndarray,
    active: np.ndarray,
    running: np.ndarray,
    k: int,
    per_beam: frozenset[str] | set[str],
    take_cache: Callable[[str, Any, np.ndarray], Any],
    gather: Callable[[Any, np.ndarray], Any],
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The search after a step's selection: the per-beam state entries and the histories follow
    each row's chosen beam; once a quarter of the blocks stopped, the stopped blocks' rows leave
    (every entry gathered). Returns the state, histories, scores, active and running blocks, the
    source row of each new row and the new tokens (flat)."""
    a = len(active)
    by_row = np.arange(a)[:, None]
    rows = by_row * k + sel.new_beam  # each row's source row (a, k)
    history = np.concatenate([history[by_row, sel.new_beam], sel.new_token[:, :, None]], axis=2)
    scores, new_token = sel.new_scores, sel.new_token
    if 4 * int((~running).sum()) < a:
        flat = rows.reshape(-1)
        state.update({name: take_cache(name, state[name], flat) for name in per_beam})
        return state, history, scores, active, running, flat, new_token.reshape(-1)
    keep = running
    flat = rows[keep].reshape(-1)
    state = _keep_blocks(state, keep, flat, k, per_beam, take_cache, gather)
    return state, history[keep], scores[keep], active[keep], running[keep], flat, new_token[keep].reshape(-1)


class _Selection(NamedTuple):
    """One step's choice, per sentence block (a blocks of k rows)."""

    top_scores: np.ndarray  # (a, width) the best candidates' scores, best first
    src_beam: np.ndarray  # (a, width) the beam each extends
    finishes: np.ndarray  # (a, k) the candidates among the first k that end with </s>
    n_live: np.ndarray  # (a,) live hypotheses picked
    new_scores: np.ndarray  # (a, k) the live ones' scores (-inf: none)
    new_beam: np.ndarray  # (a, k) the beam each live one extends
    new_token: np.ndarray  # (a, k) its token (</s> where none)


def _select(scores: np.ndarray, logprobs: np.ndarray, ids: np.ndarray, k: int, w: int, width: int, eos: int):
    """Each sentence's `width` best extensions of its k rows' `w` best tokens (`logprobs`, `ids`
    (a * k, w)) added to the rows' `scores` (a, k)."""
    a = scores.shape[0]
    cand = (scores.reshape(-1)[:, None] + logprobs).reshape(a, k * w)  # stopped blocks: all -inf
    # Ties (quantized logits have many) go to the lowest beam, then the lowest token id, as
    # argmax does: beam 1 is then exactly greedy decoding. The candidates are beam-major and
    # each beam's in ascending id order among equals, so a stable sort keeps that order.
    order = np.argsort(-cand, axis=1, kind="stable")[:, :width]
    by_row = np.arange(a)[:, None]
    top_scores = cand[by_row, order]
    src_beam, token = order // w, ids.reshape(a, k * w)[by_row, order]
    # Of each sentence's `width` best: an </s> among the first k finishes a hypothesis; the k
    # best others stay live (each row offers one </s> at most, so k others are always there).
    finite, ends = np.isfinite(top_scores), token == eos
    goes_on = finite & ~ends
    live_pick = goes_on & (np.cumsum(goes_on, axis=1) <= k)
    at = np.argsort(~live_pick, axis=1, kind="stable")[:, :k]  # the picked positions, in order
    picked = live_pick[by_row, at]
    return _Selection(
        top_scores,
        src_beam,
        finite[:, :k] & ends[:, :k],
        live_pick.sum(axis=1),
        np.where(picked, top_scores[by_row, at], -np.inf),
        np.where(picked, src_beam[by_row, at], np.arange(k)),
        np.where(picked, token[by_row, at], eos),
    )


class _Finished:
    """Each sentence's finished hypotheses, and the rank of its k-th best (-inf: fewer than k)."""

    def __init__(self, b: int, k: int, length_penalty: float) -> None:
        self.k, self.length_penalty = k, length_penalty
        self.hyps: list[list[Hypothesis]] = [[] for _ in range(b)]
        self.ranks: list[list[float]] = [[] for _ in range(b)]  # rank() of each finished hypothesis
        self.kth = np.full(b, -np.inf)

    def rank(self, h: Hypothesis) -> float:
        return h.score / max(h.length, 1) ** self.length_penalty

    def add(self, i: Any, h: Hypothesis) -> None:
        self.hyps[i].append(h)
        self.ranks[i].append(self.rank(h))
        if len(self.ranks[i]) >= self.k:
            self.kth[i] = sorted(self.ranks[i])[-self.k]

    def collect(self, t: int, active: np.ndarray, history: np.ndarray, sel: _Selection, at_limit: np.ndarray) -> None:
        """Step `t`'s finished hypotheses: those ending with </s>, and the live ones of the
        sentences `at_limit` (cut there: they end with their last token)."""
        for s, r in zip(*np.nonzero(sel.finishes)):
            self.add(active[s], Hypothesis(history[s, sel.src_beam[s, r]].tolist(), float(sel.top_scores[s, r]), t + 1))
        for s in np.nonzero(at_limit)[0]:
            for j in range(sel.n_live[s]):
                tokens_j = history[s, sel.new_beam[s, j]].tolist() + [int(sel.new_token[s, j])]
                self.add(active[s], Hypothesis(tokens_j, float(sel.new_scores[s, j]), t + 1))

    def best(self, n_best: int) -> list[list[Hypothesis]]:
        return [sorted(hyps, key=lambda h: -self.rank(h))[:n_best] for hyps in self.hyps]
