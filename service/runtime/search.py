"""Greedy decoding and beam search as functions of a step runner (runtime/steps.py).

Each row stops at </s> or at its output-length limit (derived from its source length). In the
greedy loop finished rows leave the batch, where the runner can cut rows out of its state, once
they come to a quarter of it: until then they compute (a row costs a few percent of a step)
instead of a copy of the state at every row's end. Rows are independent: what a finished row
decodes changes no other. The loop guard (runtime/loop_guard.py; None: off) bans, per row, a
token that would end its output with one n-gram repeated too often in a row, in both loops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.runtime import loop_guard
from service.runtime.beam import Hypothesis, Steps, TopK, beam_steps, logsumexp
from service.runtime.loop_guard import LoopGuard
from service.runtime.shortlist import Columns


def greedy(
    runner: Any,
    src: np.ndarray,
    limits: np.ndarray,
    scores: np.ndarray | None = None,
    guard: LoopGuard | None = loop_guard.DEFAULT,
    columns: Columns | None = None,
):
    """The greedy loop over the padded sources `src` (B, S): each row's tokens (B, steps) and
    their counts (B,), </s> not included. With `scores` (B,), adds each row's chosen tokens'
    log-probabilities to it (</s> included). With `columns` (a lexical shortlist, one row per
    source: runtime/shortlist.py) the runner's decoder gives the projection's input and the
    logits are computed on the batch's columns, each row's own only."""
    g = runner.graph
    b, steps = src.shape[0], int(limits.max())
    state = runner.start(src, width=steps)
    out = np.full((b, steps), g.pad, dtype=np.int64)
    out_len = np.zeros(b, dtype=np.int64)
    alive = np.arange(b)  # each batch row's original row; -1: finished, still in the batch
    row_limits = limits.copy()
    tokens = np.full((b, 1), g.bos, dtype=np.int64)
    run = runner.stepper(state)
    repeats = guard.state(src, g.pad) if guard is not None else None
    tokens_of, normaliser = (g.tokens_of, logsumexp) if columns is None else (columns.tokens_of, columns.logsumexp)
    for step in range(steps):
        logits = run(tokens) if columns is None else columns.logits(run(tokens))
        best = logits.argmax(-1)
        next_ids = tokens_of(best)
        live = alive >= 0
        best, next_ids = loop_guard.pick(logits, best, next_ids, repeats, tokens_of, live)
        if scores is not None:
            rows = np.nonzero(live)[0]
            chosen = logits[rows, best[rows]].astype(np.float64)
            scores[alive[rows]] += chosen - normaliser(logits[rows].astype(np.float64))
        ended = next_ids == g.eos
        write = live & ~ended
        out[alive[write], step] = next_ids[write]
        out_len[alive[write]] = step + 1
        alive = np.where(live & (ended | (step + 1 >= row_limits)), -1, alive)
        dead = alive < 0
        if dead.all():
            break
        if runner.drops_rows and 4 * int(dead.sum()) >= len(alive):
            keep = ~dead
            alive, next_ids, row_limits = alive[keep], next_ids[keep], row_limits[keep]
            repeats = repeats.take(keep) if repeats is not None else None
            columns = columns.take(keep) if columns is not None else None
            state = {name: runner.keep_row(name, value, keep, step + 1) for name, value in state.items()}
            run = runner.stepper(state)
        if repeats is not None:
            repeats.push(next_ids)
        tokens = next_ids[:, None]
    return out, out_len


def greedy_hypotheses(
    runner: Any,
    src: np.ndarray,
    limits: np.ndarray,
    scored: bool,
    guard: LoopGuard | None = loop_guard.DEFAULT,
    columns: Columns | None = None,
) -> list[list[Hypothesis]]:
    """`greedy` as one hypothesis per row; its score only when `scored` (else 0.0)."""
    b = src.shape[0]
    scores = np.zeros(b, dtype=np.float64)
    out, out_len = greedy(runner, src, limits, scores if scored else None, guard, columns)
    # a row that ended with </s> scored it too; one cut at its limit did not
    n = out_len + (out_len < limits)
    return [[Hypothesis(out[i, : out_len[i]].tolist(), float(scores[i]), int(n[i]))] for i in range(b)]


def search(
    runner: Any,
    src: np.ndarray,
    limits: np.ndarray,
    beam_size: int,
    n_best: int,
    length_penalty: float,
    topk: TopK,
    guard: LoopGuard | None = loop_guard.DEFAULT,
    columns: Columns | None = None,
) -> Steps:
    """The `n_best` best hypotheses of each row of `src` by beam search (runtime/beam.py), a
    generator that yields between two decoder steps; beam 1 is the greedy loop, scored.
    `columns`: a lexical shortlist's (as `greedy`), whose selection replaces `topk`."""
    if beam_size == 1:
        return greedy_hypotheses(runner, src, limits, scored=True, guard=guard, columns=columns)
    g = runner.graph
    parts = runner.beam_parts(columns.topk if columns is not None else topk)
    hyps = yield from beam_steps(
        parts.start,
        parts.step,
        src,
        limits,
        beam_size,
        n_best,
        g.bos,
        g.eos,
        length_penalty,
        per_beam=set(g.cache_names),
        topk=parts.topk,
        gather=parts.gather,
        vocab=g.n_logits if columns is None else columns.width,
        gather_cache=parts.gather_cache,
        guard=guard,
        pad=g.pad,
        columns=columns,
    )
    return hyps
