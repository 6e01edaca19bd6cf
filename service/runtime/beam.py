"""Batched beam search over the KV-cache decoder step, in numpy.

Every sentence keeps `k` live hypotheses; the decoder runs once per step on all live rows of all
sentences (rows = sentences x beams). Each step:

1. log-softmax of the logits, added to each row's score (the sum of its tokens' log-probs);
2. per sentence, the best 2k of the k x V extensions; those ending in </s> within the first k
   become finished hypotheses, the best k others stay live;
3. the caches are reordered to the surviving beams' rows (a gather along the batch axis).

A sentence stops when it has `n_best` finished hypotheses and no live one scores above the best
finished one (scores only fall as tokens are added, so none could overtake it), or at the same
output-length limit as greedy decoding; live hypotheses still running at the limit are finished
there. Finished hypotheses are ranked by score / length ** length_penalty (length counting
</s>). With k = 1 this is greedy decoding, plus the scores.

Rows are independent (the graphs are padding- and batch-invariant), so a sentence's n-best and
scores do not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def beam_search(
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
) -> list[list[Hypothesis]]:
    """The `n_best` best hypotheses of each source row of `src`, best first.

    `start(src)` gives the decoder state for the sources (batch-first arrays); `step(state,
    tokens)` runs one decoder step on `tokens` (R, 1) and returns the logits (R, V), updating the
    caches in `state`. `limits` bounds each sentence's tokens. `per_beam` names the state
    entries that differ between a sentence's beams (the self-attention caches): they follow the
    surviving beams every step; the others (encoder keys/values, masks) only when sentences
    leave."""
    k, n_best = beam, min(n_best, beam)
    b = src.shape[0]
    state = {name: np.repeat(value, k, axis=0) for name, value in start(src).items()}
    scores = np.full((b, k), -np.inf, dtype=np.float64)
    scores[:, 0] = 0.0  # one live beam to begin with: the others are copies of it
    history = np.zeros((b, k, 0), dtype=np.int64)
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    active = np.arange(b)  # original sentence of each live block of k rows
    tokens = np.full((b * k, 1), bos, dtype=np.int64)
    steps = int(limits.max())
    for t in range(steps):
        logits = step(state, tokens)  # (a * k, V) float32
        a, vocab = len(active), logits.shape[-1]
        # score + log_softmax(logits) in one pass over V, in float32 (the ranking needs no more)
        offset = (scores.reshape(-1) - logsumexp(logits)).astype(np.float32)
        cand = (logits + offset[:, None]).reshape(a, k * vocab)
        width = min(2 * k, k * vocab)
        top = np.sort(np.argpartition(-cand, width - 1, axis=1)[:, :width], axis=1)
        # Ties (quantized logits have many) go to the lowest beam, then the lowest token id, as
        # argmax does: beam 1 is then exactly greedy decoding.
        order = np.argsort(-np.take_along_axis(cand, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(cand, top, axis=1)
        src_beam, token = top // vocab, top % vocab
        new_scores = np.full((a, k), -np.inf)
        new_beam = np.zeros((a, k), dtype=np.int64)
        new_token = np.full((a, k), eos, dtype=np.int64)
        at_limit = t + 1 >= limits[active]
        keep = np.ones(a, dtype=bool)
        for s in range(a):
            done = finished[active[s]]
            live = 0
            for r in range(width):
                sc = top_scores[s, r]
                if not np.isfinite(sc):
                    break
                if token[s, r] == eos:
                    if r < k:
                        done.append(Hypothesis(history[s, src_beam[s, r]].tolist(), float(sc), t + 1))
                    continue
                if live < k:
                    new_scores[s, live], new_beam[s, live], new_token[s, live] = sc, src_beam[s, r], token[s, r]
                    live += 1
            if at_limit[s]:  # cut here: the live ones end with their last token
                for j in range(live):
                    tokens_j = history[s, new_beam[s, j]].tolist() + [int(new_token[s, j])]
                    done.append(Hypothesis(tokens_j, float(new_scores[s, j]), t + 1))
                keep[s] = False
            elif len(done) >= n_best and (live == 0 or new_scores[s, 0] < max(h.score for h in done)):
                keep[s] = False
        if not keep.any():
            break
        rows = (np.arange(a)[:, None] * k + new_beam)[keep].reshape(-1)  # surviving beams' rows
        history = np.concatenate([history[np.arange(a)[:, None], new_beam], new_token[:, :, None]], axis=2)[keep]
        scores, active = new_scores[keep], active[keep]
        if keep.all():
            state.update({name: state[name][rows] for name in per_beam})
        else:
            same = np.repeat(np.nonzero(keep)[0] * k, k)  # any row of a surviving sentence
            state = {name: value[rows] if name in per_beam else value[same] for name, value in state.items()}
        tokens = new_token[keep].reshape(-1, 1)
    out = []
    for hyps in finished:
        ranked = sorted(hyps, key=lambda h: -h.score / max(h.length, 1) ** length_penalty)
        out.append(ranked[:n_best])
    return out
