"""A running greedy decode batch that sentences join and leave between decoder steps.

Iteration-level ("continuous") batching, as GPU LLM servers do it, for an encoder-decoder: the
batch is a set of rows, each a sentence at its own position. Between two steps:

* **join**: new sentences are encoded (one encoder call for all of them) and appended as rows.
  Their cross-attention keys and values are padded to the batch's longest source (`src_mask`
  hides the padding); their self-attention caches are padded on the left to the batch's cache
  width with slots that `self_mask` hides; their `position` starts at 0.
* **leave**: a row that produced </s> or reached its output-length limit leaves at once (its
  slices are dropped), as does a row whose request was abandoned (`drop`).
* **compact**: cache slots no remaining row owns (on the left) and source columns past the
  longest remaining source are cut off, so the batch's width follows the sentences in it.

Each row sees only its own source and its own cache slots, at its own positions, so its output
is the same as when it is decoded alone (the graphs are padding-invariant; tests check it on the
served variant). Needs a decoder with the per-row inputs (graph contract 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.runtime import graph_io
from service.runtime.beam import logsumexp


@dataclass
class Row:
    """One sentence in the running batch."""

    tag: Any  # the caller's handle (which request, which of its sentences)
    limit: int  # the most tokens it may produce
    src_len: int
    tokens: list[int] = field(default_factory=list)  # produced so far, </s> not included
    score: float = 0.0  # sum of the log-probabilities of its tokens (and </s>)
    ended: bool = False  # produced </s> (else it was cut at its limit)
    scored: bool = False  # its caller wants the log-probabilities

    @property
    def length(self) -> int:
        """Tokens scored: the tokens, and </s> where it ended with one."""
        return len(self.tokens) + self.ended


class DecodeBatch:
    """The running batch of one translator (`engine`: runtime/translator.Translator)."""

    def __init__(self, engine: Any) -> None:
        if not engine.per_row:
            raise ValueError(f"{engine.manifest.name}: its decoder has no per-row inputs (graph contract 1)")
        self.engine = engine
        self.rows: list[Row] = []
        self.state: dict[str, np.ndarray] = {}  # cross keys/values, src_mask, caches
        self.valid = np.zeros((0, 0), dtype=bool)  # (B, P): the cache slots each row owns
        self.position = np.zeros(0, dtype=np.int64)
        self.next_ids = np.zeros((0, 1), dtype=np.int64)  # each row's next input token
        self.steps = 0  # decoder calls so far

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        """Cache slots per row (the same for every row; the ones a row does not own are masked)."""
        return self.valid.shape[1]

    @property
    def tokens(self) -> int:
        """What the batch holds now, in tokens: padded sources + cache slots, over all rows."""
        if not self.rows:
            return 0
        return len(self.rows) * (self.state[graph_io.SRC_MASK].shape[1] + self.width)

    def bound(self, more: Sequence[tuple[int, int]] = ()) -> int:
        """The most tokens the batch can come to hold, with rows (source length, output limit)
        `more` added: rows x (longest source + largest limit), since no row's cache grows past
        its limit and the batch is cut back to the rows it holds. Admission keeps this within
        the budget, so the budget holds at every later step too."""
        srcs = [r.src_len for r in self.rows] + [s for s, _ in more]
        limits = [r.limit for r in self.rows] + [n for _, n in more]
        return len(srcs) * (max(srcs) + max(limits)) if srcs else 0

    def add(self, sources: Sequence[Sequence[int]], tags: Sequence[Any], scored: bool = False) -> None:
        """New rows for `sources` (id lists ending in </s>), to decode from the next step on."""
        if not sources:
            return
        e = self.engine
        src, limits = e.padded(sources)
        cross = e.encoder.run(e.encoder_outputs, {graph_io.SRC_IDS: src})
        new = dict(zip(e.encoder_outputs, cross))
        new[graph_io.SRC_MASK] = src != e.pad
        b = len(sources)
        new.update(dict.fromkeys(e.cache_names, np.zeros((b, e.n_heads, self.width, e.d_head), dtype=np.float32)))
        if self.rows:
            have, got = self.state[graph_io.SRC_MASK].shape[1], src.shape[1]
            width = max(have, got)
            for name in (*e.encoder_outputs, graph_io.SRC_MASK):
                self.state[name] = _pad_axis(self.state[name], 2 if name != graph_io.SRC_MASK else 1, width)
                new[name] = _pad_axis(new[name], 2 if name != graph_io.SRC_MASK else 1, width)
            self.state = {name: np.concatenate([self.state[name], new[name]]) for name in self.state}
        else:
            self.state = new
        self.valid = np.concatenate([self.valid, np.zeros((b, self.width), dtype=bool)])
        self.position = np.concatenate([self.position, np.zeros(b, dtype=np.int64)])
        self.next_ids = np.concatenate([self.next_ids, np.full((b, 1), e.bos, dtype=np.int64)])
        self.rows += [Row(t, int(n), len(s), scored=scored) for t, n, s in zip(tags, limits, sources)]

    def step(self) -> list[Row]:
        """One decoder call for every row; returns the rows that finished (and left)."""
        if not self.rows:
            return []
        e = self.engine
        b = len(self.rows)
        self.valid = np.concatenate([self.valid, np.ones((b, 1), dtype=bool)], axis=1)  # the slot this step appends
        feeds = {
            graph_io.INPUT_IDS: self.next_ids,
            graph_io.POSITION: self.position,
            graph_io.SELF_MASK: self.valid,
            **self.state,
        }
        logits = e.run_step(self.state, feeds)
        self.steps += 1
        next_ids = logits.argmax(-1)
        scored = any(row.scored for row in self.rows)  # the softmax only where someone reads it
        if scored:
            chosen = logits[np.arange(b), next_ids].astype(np.float64)
            logprobs = chosen - logsumexp(logits.astype(np.float64))
        keep = np.ones(b, dtype=bool)
        done = []
        for r, row in enumerate(self.rows):
            if scored:
                row.score += float(logprobs[r])
            token = int(next_ids[r])
            if token == e.eos:
                row.ended = True
            else:
                row.tokens.append(token)
            if row.ended or len(row.tokens) >= row.limit:
                keep[r] = False
                done.append(row)
        self.position += 1
        self.next_ids = next_ids[:, None]
        if done:
            self._keep(keep)
        return done

    def drop(self, abandoned: Callable[[Any], bool]) -> list[Row]:
        """Remove the rows whose tag `abandoned` says so; returns them."""
        keep = np.array([not abandoned(row.tag) for row in self.rows], dtype=bool)
        gone = [row for row, k in zip(self.rows, keep) if not k]
        if gone:
            self._keep(keep)
        return gone

    def _keep(self, keep: np.ndarray) -> None:
        self.rows = [row for row, k in zip(self.rows, keep) if k]
        if not self.rows:
            self.state, self.valid = {}, np.zeros((0, 0), dtype=bool)
            self.position = np.zeros(0, dtype=np.int64)
            self.next_ids = np.zeros((0, 1), dtype=np.int64)
            return
        self.state = {name: value[keep] for name, value in self.state.items()}
        self.valid, self.position, self.next_ids = self.valid[keep], self.position[keep], self.next_ids[keep]
        # Cut the cache slots that no row owns any more (they are on the left: rows own their
        # last `position` slots) and the source columns past the longest source left.
        first = self.width - int(self.position.max())
        src_len = max(row.src_len for row in self.rows)
        e = self.engine
        if first > 0:
            self.valid = self.valid[:, first:]
            for name in e.cache_names:
                self.state[name] = self.state[name][:, :, first:]
        if src_len < self.state[graph_io.SRC_MASK].shape[1]:
            self.state[graph_io.SRC_MASK] = self.state[graph_io.SRC_MASK][:, :src_len]
            for name in e.encoder_outputs:
                self.state[name] = self.state[name][:, :, :src_len]


def _pad_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """`a` padded with zeros (False) at the end of `axis` up to `size`."""
    if a.shape[axis] >= size:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, size - a.shape[axis])
    return np.pad(a, pad)
