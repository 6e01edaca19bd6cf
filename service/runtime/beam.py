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
   CPU, Translator does it in place, only for the rows whose beam changed).

The selection is vectorised over sentences (Python touches only the hypotheses that finish). A
sentence that stops keeps its rows in the batch, idle (its outputs ignored, its caches left as
they are), until a quarter of the blocks have stopped; then they all leave at once: dropping
rows costs a gather of every state entry (and, bound, a new binding), as in the greedy loop.

A sentence stops when it has k finished hypotheses and its best live one, ranked as finished
ones are (score / length ** length_penalty, length counting </s>), is below the worst of its k
best finished ones (Hugging Face's `BeamHypotheses.is_done`, onnxruntime's BeamSearch op), or at
the same output-length limit as greedy decoding; live hypotheses still running at the limit are
finished there. The stop is a heuristic (a live hypothesis's ranking score can still rise when
a likely token follows). Stopping earlier ended sentences too soon, on the 300 first Tatoeba
de-en valid sentences (int8-static, session 9): once one hypothesis was finished and no live
one beat it, 37.56 BLEU (17% faster); once none beat it in log-probability alone (the first
rule), 0.9 BLEU below that (BENCHMARKS.md). With this rule, 38.51: onnxruntime's BeamSearch op
on the same graphs gives 38.50.
With k = 1 this is greedy decoding, plus the scores.

Rows are independent (the graphs are padding- and batch-invariant), so a sentence's n-best and
scores do not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without <s> and </s>
    score: float  # sum of the log-probabilities of the tokens and </s>
    length: int  # tokens + </s> (the final token when cut at the limit)

    @property
    def mean_logprob(self) -> float:
        return self.score / max(self.length, 1)


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
    """`value`'s rows, in the order of `rows` (beam_search's gather on the CPU)."""
    return value[rows]


Steps = Generator[None, None, Any]  # yields after each decoder step; returns its result


def drain(steps: Steps) -> Any:
    """Run a stepped computation (`beam_steps`, Translator.translate_nbest_steps) to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def beam_search(*args: Any, **kwargs: Any) -> list[list[Hypothesis]]:
    """`beam_steps` run to its end."""
    return drain(beam_steps(*args, **kwargs))


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
) -> Generator[None, None, list[list[Hypothesis]]]:
    """The `n_best` best hypotheses of each source row of `src`, best first; a generator that
    yields after each decoder step (so that a scheduler can run other work between two steps:
    service/scheduler.py) and returns them.

    `start(src)` gives the decoder state for the sources (batch-first arrays); `step(state,
    tokens)` runs one decoder step on `tokens` (R, 1) and returns the logits (R, V), updating the
    caches in `state`. `limits` bounds each sentence's tokens. `per_beam` names the state
    entries that differ between a sentence's beams (the self-attention caches): they follow the
    surviving beams every step; the others (encoder keys/values, masks) only when sentences
    leave. `topk(logits, n)`: each row's n best log-probabilities and token ids (topk_numpy).
    `gather(value, rows)`: a state entry's rows, in that order (numpy indexing; on a device, a
    gather there, with the logits and caches device tensors: `vocab` then gives V).
    `gather_cache(name, value, rows)`: the same for the `per_beam` entries, where that can be
    cheaper (fixed-width caches: only the slots written so far; on the CPU in place, only the rows
    that change). Both may return a prefix of the same array when rows leave."""
    take_cache = gather_cache or (lambda _name, value, rows: gather(value, rows))
    k, n_best = beam, min(n_best, beam)
    b = src.shape[0]
    state = {name: gather(value, np.repeat(np.arange(b), k)) for name, value in start(src).items()}
    scores = np.full((b, k), -np.inf, dtype=np.float64)
    scores[:, 0] = 0.0  # one live beam to begin with: the others are copies of it
    history = np.zeros((b, k, 0), dtype=np.int64)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    ranks: list[list[float]] = [[] for _ in range(b)]  # rank() of each finished hypothesis
    kth = np.full(b, -np.inf)  # each sentence's k-th best finished rank (-inf: fewer than k)
    active = np.arange(b)  # original sentence of each block of k rows
    running = np.ones(b, dtype=bool)  # per block: still searching (else its rows idle until dropped)
    tokens = np.full((b * k, 1), bos, dtype=np.int64)
    steps = int(limits.max())
    identity = np.arange(k)

    def rank(h: Hypothesis) -> float:
        return h.score / max(h.length, 1) ** length_penalty

    def finish(s: Any, h: Hypothesis) -> None:
        i = active[s]
        finished[i].append(h)
        ranks[i].append(rank(h))
        if len(ranks[i]) >= k:
            kth[i] = sorted(ranks[i])[-k]

    for t in range(steps):
        if t:
            yield  # between two steps (nothing of this search is held in a shared buffer here)
        logits = step(state, tokens)  # (a * k, V) float32
        a, vocab = len(active), vocab or logits.shape[-1]
        w = min(2 * k, vocab)  # candidates per row
        width = min(2 * k, k * vocab)  # per sentence
        logprobs, ids = topk(logits, w)  # (a * k, w), each row best first
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
        n_live = live_pick.sum(axis=1)
        at = np.argsort(~live_pick, axis=1, kind="stable")[:, :k]  # the picked positions, in order
        picked = live_pick[by_row, at]
        new_scores = np.where(picked, top_scores[by_row, at], -np.inf)
        new_beam = np.where(picked, src_beam[by_row, at], identity)
        new_token = np.where(picked, token[by_row, at], eos)
        for s, r in zip(*np.nonzero(finite[:, :k] & ends[:, :k])):
            finish(s, Hypothesis(history[s, src_beam[s, r]].tolist(), float(top_scores[s, r]), t + 1))
        at_limit = running & (t + 1 >= limits[active])
        for s in np.nonzero(at_limit)[0]:  # cut here: the live ones end with their last token
            for j in range(n_live[s]):
                tokens_j = history[s, new_beam[s, j]].tolist() + [int(new_token[s, j])]
                finish(s, Hypothesis(tokens_j, float(new_scores[s, j]), t + 1))
        best_live = new_scores[:, 0] / (t + 1) ** length_penalty  # -inf where none is live
        stop = at_limit | (running & (kth[active] > -np.inf) & ((n_live == 0) | (best_live < kth[active])))
        running &= ~stop
        if not running.any():
            break
        # A stopped sentence's rows stay in the batch (their outputs ignored, their caches left as
        # they are) until a quarter of the blocks have stopped: dropping rows costs a gather of
        # every state entry, as the greedy loop finds (Translator._decode).
        new_scores[~running], new_beam[~running], new_token[~running] = -np.inf, identity, eos
        rows = by_row * k + new_beam  # each row's source row (a, k)
        history = np.concatenate([history[by_row, new_beam], new_token[:, :, None]], axis=2)
        scores = new_scores
        if 4 * int((~running).sum()) < a:
            flat = rows.reshape(-1)
            state.update({name: take_cache(name, state[name], flat) for name in per_beam})
        else:
            keep = running
            same = np.repeat(np.nonzero(keep)[0] * k, k)  # any row of a kept sentence
            flat = rows[keep].reshape(-1)
            state = {
                name: take_cache(name, value, flat) if name in per_beam else gather(value, same)
                for name, value in state.items()
            }
            history, scores, active, running = history[keep], scores[keep], active[keep], running[keep]
            new_token = new_token[keep]
        tokens = new_token.reshape(-1, 1)
    out = []
    for hyps in finished:
        ranked = sorted(hyps, key=lambda h: -rank(h))
        out.append(ranked[:n_best])
    return out
