"""A running greedy decode batch that sentences join and leave between decoder steps.

Iteration-level ("continuous") batching, as GPU LLM servers do it, for an encoder-decoder: the
batch is a set of row slots, each holding a sentence at its own position (or free). Between
two steps:

* **leave**: a row that produced </s> or reached its output-length limit leaves at once, as does
  a row whose request was abandoned (`drop`). Its slot is only marked free: nothing is copied.
* **join**: new sentences are encoded (one encoder call for all of them) and take free slots
  first, written in place; only when none is free does the batch grow. A joining row's
  cross-attention keys and values are padded to the batch's longest source (`src_mask` hides
  the padding); its self-attention cache slots are the batch's existing ones, hidden from it by
  `self_mask`; its `position` starts at 0.
* **compact**: free slots still compute, and cache slots no live row owns (on the left) and
  source columns past the longest live source still cost; when they come to a quarter of the
  batch, one gather cuts them all off.

Copying the whole state on every join and leave (the first version) cost more than the decoder
itself under a realistic load (BENCHMARKS.md, "continuous batching"); slots make both free.
Each row sees only its own source and its own cache slots, at its own positions, so its output
is the same as when it is decoded alone (the graphs are padding-invariant; tests check it on the
served variant). Needs a decoder with the per-row inputs (graph contract 2 or 3: the only ones
the engine loads).

The loop guard (runtime/loop_guard.py) is the engine's (`loop_guard`, None: off; as it is when
the batch starts or empties), per row (a row added with `guard=False` goes without): each slot's
last tokens, repeat counts and its source's own repeats are kept beside its position, reset when
a sentence takes the slot, so a row's bans are those of the row alone.

With a contract-3 decoder (fixed-width caches written in place) a row's cache slots are its own
from slot 0: a newcomer in a free slot starts at position 0 and the old occupant's slots past it
are never read, so there is no self mask and nothing to cut on the left; the attention spans the
live rows' longest position, and the buffers are as wide as the largest output limit admitted.

With a lexical shortlist (the engine's `shortlist`, runtime/shortlist.py) the decoder gives the
output projection's input and the batch computes the logits on the union of its rows' lists,
each row's outside its own list at -inf: the union grows when a row joins with a piece it lacks,
and is cut back to the live rows' at a compaction; a row's logits and choices are those of the
row alone whatever the union (exact integer products, ties to the lowest piece).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.runtime import graph_io, loop_guard
from service.runtime.beam import logsumexp
from service.runtime.engine import StepEngine
from service.runtime.loop_guard import Repeats
from service.runtime.shortlist import Columns


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
    guard: bool = True  # under the engine's loop guard

    @property
    def length(self) -> int:
        """Tokens scored: the tokens, and </s> where it ended with one."""
        return len(self.tokens) + self.ended


class DecodeBatch:
    """The running batch of one translator (a translator's target-language view, where it has
    target vocabularies)."""

    def __init__(self, engine: StepEngine) -> None:
        self.engine = engine = engine.batch_engine()
        self.shortlist = engine.shortlist
        self.static = engine.static  # contract 3: caches written in place
        self.steps = 0  # decoder calls so far
        self.compactions = 0
        self._reset()

    def _reset(self) -> None:
        self.slots: list[Row | None] = []  # one per batch row; None = free
        self.state: dict[str, np.ndarray] = {}  # cross keys/values, src_mask, caches: (slots, ...)
        self.valid = np.zeros((0, 0), dtype=bool)  # (slots, P): the cache slots each row owns
        self.position = np.zeros(0, dtype=np.int64)
        self.next_ids = np.zeros((0, 1), dtype=np.int64)  # each row's next input token
        self.guard = self.engine.loop_guard  # the engine's, as it is when the batch (re)starts
        self.repeats: Repeats | None = self.guard.state([]) if self.guard is not None else None
        self.lists: list[np.ndarray | None] = []  # a shortlist's: each slot's pieces (None: free)
        self.columns: Columns | None = None  # the projection's columns (None: to be made at the next step)

    @property
    def rows(self) -> list[Row]:
        """The live rows."""
        return [row for row in self.slots if row is not None]

    def __len__(self) -> int:
        return sum(row is not None for row in self.slots)

    @property
    def width(self) -> int:
        """Cache slots per row that a step reads (the same for every row; the ones a row does not
        own are masked). Contract 3: the live rows' longest position."""
        if self.static:
            live = [r for r, row in enumerate(self.slots) if row is not None]
            return int(self.position[live].max()) if live else 0
        return self.valid.shape[1]

    @property
    def src_width(self) -> int:
        return self.state[graph_io.SRC_MASK].shape[1] if self.slots else 0

    @property
    def tokens(self) -> int:
        """What the live rows hold now, in tokens: padded sources + cache slots."""
        return len(self) * (self.src_width + self.width)

    def bound(self, more: Sequence[tuple[int, int]] = ()) -> int:
        """The most tokens the live rows can come to hold, with rows (source length, output
        limit) `more` added: rows x (longest source + largest limit), since no row's cache grows
        past its limit and compaction cuts the batch back to its live rows. Admission keeps this
        within the budget."""
        rows = self.rows
        srcs = [r.src_len for r in rows] + [s for s, _ in more]
        limits = [r.limit for r in rows] + [n for _, n in more]
        return len(srcs) * (max(srcs) + max(limits)) if srcs else 0

    def add(
        self, sources: Sequence[Sequence[int]], tags: Sequence[Any], scored: bool = False, guard: bool = True
    ) -> None:
        """New rows for `sources` (id lists ending in </s>), to decode from the next step on;
        `guard`: under the engine's loop guard."""
        if not sources:
            return
        e = self.engine
        src, limits = e.padded(sources)
        # the encoder's keys/values, the source mask, empty caches (contract 3: as wide as the
        # largest limit for a new batch; none for newcomers, who write into the batch's buffers)
        new = e.start(src, width=int(limits.max()) if not self.slots else 0)
        new.pop(graph_io.POSITION, None)  # the batch keeps every row's position itself
        rows = [Row(t, int(n), len(s), scored=scored, guard=guard) for t, n, s in zip(tags, limits, sources)]
        lists = [self.shortlist.pieces(s) for s in sources] if self.shortlist is not None else []
        if not self.slots:
            self.lists, self.columns = list(lists), None
            self.state = new
            self.valid = np.zeros((len(rows), 0), dtype=bool)
            self.position = np.zeros(len(rows), dtype=np.int64)
            self.next_ids = np.full((len(rows), 1), e.bos, dtype=np.int64)
            self.repeats = self.guard.state(sources) if self.guard is not None else None
            self.slots = list(rows)
            return
        if src.shape[1] > self.src_width:  # a longer source than any in the batch: widen (a copy)
            for name in (*e.encoder_outputs, graph_io.SRC_MASK):
                self.state[name] = _pad_axis(self.state[name], 2 if name != graph_io.SRC_MASK else 1, src.shape[1])
        if self.static and int(limits.max()) > self.state[e.cache_names[0]].shape[2]:  # wider buffers (a copy)
            for name in e.cache_names:
                self.state[name] = _pad_axis(self.state[name], 2, int(limits.max()))
        free = [i for i, row in enumerate(self.slots) if row is None][: len(rows)]
        grow = len(rows) - len(free)
        if grow:  # no free slot left for the rest: the batch grows (a copy)
            b = len(self.slots)
            for name, value in self.state.items():
                self.state[name] = np.concatenate([value, np.zeros((grow, *value.shape[1:]), dtype=value.dtype)])
            self.valid = np.concatenate([self.valid, np.zeros((grow, self.valid.shape[1]), dtype=bool)])
            self.position = np.concatenate([self.position, np.zeros(grow, dtype=np.int64)])
            self.next_ids = np.concatenate([self.next_ids, np.zeros((grow, 1), dtype=np.int64)])
            if self.repeats is not None:
                self.repeats.grow(grow)
            self.slots += [None] * grow
            self.lists += [None] * grow
            free += list(range(b, b + grow))
        at = np.array(free)
        w = src.shape[1]  # written in place: the newcomers' columns, then zeros (masked) up to the batch's width
        for name in e.encoder_outputs:
            self.state[name][at, :, :w] = new[name]
            self.state[name][at, :, w:] = 0
        self.state[graph_io.SRC_MASK][at, :w] = new[graph_io.SRC_MASK]
        self.state[graph_io.SRC_MASK][at, w:] = False
        if not self.static:
            self.valid[at] = False  # the old occupant's cache slots are hidden from the newcomer
        self.position[at] = 0
        self.next_ids[at] = e.bos
        if self.repeats is not None:
            self.repeats.reset(at, self.repeats.guard.source_units(sources))
        for i, row in zip(free, rows):
            self.slots[i] = row
        if self.shortlist is not None:
            for i, ids in zip(free, lists):
                self.lists[i] = ids
            self.columns = None

    def step(self) -> list[Row]:
        """One decoder call for every slot; returns the rows that finished (and left)."""
        if not len(self):
            return []
        e = self.engine
        b = len(self.slots)
        if self.static:  # each row writes its slot `position` of the batch's buffers
            feeds = {graph_io.INPUT_IDS: self.next_ids, graph_io.POSITION: self.position, **self.state}
        else:
            self.valid = np.concatenate([self.valid, np.ones((b, 1), dtype=bool)], axis=1)  # the slot this step appends
            feeds = {
                graph_io.INPUT_IDS: self.next_ids,
                graph_io.POSITION: self.position,
                graph_io.SELF_MASK: self.valid,
                **self.state,
            }
        logits = e.run_step(self.state, feeds)
        tokens_of, normaliser = e.tokens_of, logsumexp
        if self.shortlist is not None:
            if self.columns is None or len(self.columns.mask) != b:
                self.columns = (
                    self.columns.with_rows(self.lists)
                    if self.columns is not None
                    else Columns.of(self.shortlist.projection, [x for x in self.lists if x is not None]).with_rows(
                        self.lists
                    )
                )
            logits = self.columns.logits(logits)
            tokens_of, normaliser = self.columns.tokens_of, self.columns.logsumexp
        self.steps += 1
        best = logits.argmax(-1)
        next_ids = tokens_of(best)  # the engine's view of one target vocabulary: its columns' pieces
        live = [(r, row) for r, row in enumerate(self.slots) if row is not None]
        if self.repeats is not None:
            guarded = np.array([row is not None and row.guard for row in self.slots])
            best, next_ids = loop_guard.pick(logits, best, next_ids, self.repeats, tokens_of, guarded)
            self.repeats.push(next_ids)
        scored = any(row.scored for _, row in live)  # the softmax only where someone reads it
        if scored:
            at = np.array([r for r, _ in live])  # free rows' logits are -inf with a shortlist
            logprobs = np.zeros(b, dtype=np.float64)
            chosen = logits[at, best[at]].astype(np.float64)
            logprobs[at] = chosen - normaliser(logits[at].astype(np.float64))
        done = []
        for r, row in live:
            if scored:
                row.score += float(logprobs[r])
            token = int(next_ids[r])
            if token == e.eos:
                row.ended = True
            else:
                row.tokens.append(token)
            if row.ended or len(row.tokens) >= row.limit:
                done.append(row)
                self.slots[r] = None
        self.position += 1
        self.next_ids = next_ids[:, None]
        self._free_dead()
        return done

    def drop(self, abandoned: Callable[[Any], bool]) -> list[Row]:
        """Remove the rows whose tag `abandoned` says so; returns them."""
        gone = []
        for r, row in enumerate(self.slots):
            if row is not None and abandoned(row.tag):
                gone.append(row)
                self.slots[r] = None
        if gone:
            self._free_dead()
        return gone

    def _free_dead(self) -> None:
        """Free slots sit at position 0 (in the positional table whatever they decode) and own
        no cache slot; compact when the waste comes to a quarter of the batch."""
        dead = np.array([row is None for row in self.slots], dtype=bool)
        if not dead.any():
            return
        if dead.all():
            self._reset()
            return
        self.position[dead] = 0
        live = self.rows
        if self.static:  # nothing to cut on the left: every row's slots start at 0
            unowned = 0
        else:
            self.valid[dead] = False
            unowned = self.width - int(self.position.max())
        src_unused = self.src_width - max(row.src_len for row in live)
        if (
            4 * int(dead.sum()) >= len(self.slots)
            or 4 * unowned > max(self.width, 16)
            or 4 * src_unused > max(self.src_width, 16)
        ):
            self._compact(~dead, unowned, self.src_width - src_unused)

    def _compact(self, keep: np.ndarray, first: int, src_len: int) -> None:
        """Keep the live slots only, the cache slots from `first` on and `src_len` source columns."""
        e = self.engine
        self.compactions += 1
        self.slots = [row for row in self.slots if row is not None]
        for name, value in self.state.items():
            if name in e.cache_names:
                self.state[name] = value[keep, :, first:]
            elif name == graph_io.SRC_MASK:
                self.state[name] = value[keep, :src_len]
            else:
                self.state[name] = value[keep, :, :src_len]
        if not self.static:
            self.valid = self.valid[keep, first:]
        self.position, self.next_ids = self.position[keep], self.next_ids[keep]
        if self.repeats is not None:
            self.repeats = self.repeats.take(keep)
        if self.shortlist is not None:  # the union cut back to the live rows' lists
            self.lists = [x for x, k in zip(self.lists, keep) if k]
            self.columns = None


def _pad_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """`a` padded with zeros (False) at the end of `axis` up to `size`."""
    if a.shape[axis] >= size:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, size - a.shape[axis])
    return np.pad(a, pad)
