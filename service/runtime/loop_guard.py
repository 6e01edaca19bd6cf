"""The loop guard: no output ends with `piece_copies` (4) copies in a row of one piece ("Akkkk",
"the the the the") or `copies` (3) copies in a row of one sequence of 2 to `max_ngram` (8)
pieces ("of the form of the form of the form"), unless its source has that repeat too.

Small models loop on text unlike their training data: they repeat a piece or a few words until
the output-length limit. At each step the guard bans, per unit length n, the one token that would
complete the forbidden copy of the n-gram the row's output ends with; the row takes its best
other token and goes on (it often leaves the loop and finishes the sentence). A repeat that the
row's source has (the same pieces as many times in a row: "0x00000000", "10.0.0.0") is not
banned; an output without such a repeat is never touched. The rule depends only on the row's own
tokens and source: batch-invariant, and the same in every decoding path (greedy on the host, beam
search, the running batch, the PyTorch reference `Seq2SeqTransformer.greedy_decode`). A banned
token only loses its turn: the scores stay the model's log-probabilities (not renormalised).

Chosen by measurement (model/multi, greedy; benchmarks/results/loop_guard.json): on held-out
text where this model loops (l10n valid, newstest2014) outputs with a repeat (the benchmark's
criterion) 1,812 -> 422 of 11,000, every set's BLEU within 0.08; Tatoeba valid BLEU de-en
39.56 -> 39.57, en-de 28.66 -> 28.71 (4 and 13 of 2,000 outputs changed, every one a loop: "a red
red red red.", "zu Bett zu Bett zu Bett."). The other rules, on 5,500 held-out sentences (868
with a repeat): stopping a row at its first repeat and cutting it leaves 250 (this rule 207) and
drops the rest of the sentence (BLEU down on 7 of 11 sets, by up to 0.42); banning only the 4th
copy of 1-4 pieces leaves 495; banning the 3rd copy of one piece too leaves 54 but bans real
text ("..." is three "." pieces, "VIII": 60 of 20,000 Europarl sentences; this rule 1, "line 04
03 03 03", allowed where the source has it). CTranslate2's `no_repeat_ngram_size` 4 (measured
apart on l10n and newstest2014 de-en) changed 2-3 times as many outputs and left more repeats.

State per row (`Repeats`): its last `max_ngram` tokens and, per n, how many tokens in a row
equal the token n before them (O(max_ngram) a step, vectorised over rows), and the repeats its
source has (usually none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LOOP_NGRAM = 8  # the longest repeated unit looked at, in pieces
LOOP_COPIES = 3  # copies in a row of a unit of 2+ pieces that no output may end with (unless its source has them)
LOOP_PIECE_COPIES = 4  # the same for one piece

Units = frozenset[tuple[int, ...]]


@dataclass(frozen=True)
class LoopGuard:
    max_ngram: int = LOOP_NGRAM
    copies: int = LOOP_COPIES
    piece_copies: int = LOOP_PIECE_COPIES

    def __post_init__(self) -> None:
        if self.max_ngram < 1 or min(self.copies, self.piece_copies) < 2:
            raise ValueError(f"loop guard needs max_ngram >= 1 and copies >= 2, got {self}")

    def copies_of(self, n: int) -> int:
        """The copies in a row of a unit of `n` pieces that no output may end with."""
        return self.piece_copies if n == 1 else self.copies

    def state(self, sources: Sequence[Sequence[int]] | np.ndarray, pad: int | None = None) -> Repeats:
        """The state of one row per source (id lists; a padded array with its `pad` id)."""
        return Repeats(self, self.source_units(sources, pad))

    def source_units(self, sources: Sequence[Sequence[int]] | np.ndarray, pad: int | None = None) -> list[Units]:
        """Per source (id lists; a padded array with its `pad` id), the n-grams it has as many
        times in a row as the guard bans (its output may repeat those)."""
        if not isinstance(sources, np.ndarray):  # id lists: padded here with -1 (no id)
            pad, rows = -1, sources
            sources = np.full((len(rows), max((len(r) for r in rows), default=0)), -1, dtype=np.int64)
            for r, ids in enumerate(rows):
                sources[r, : len(ids)] = ids
        units: list[set[tuple[int, ...]]] = [set() for _ in range(len(sources))]
        for n in range(1, self.max_ngram + 1):
            need = (self.copies_of(n) - 1) * n  # tokens in a row equal to the one n before
            if sources.shape[1] < need + n:
                continue
            same = sources[:, n:] == sources[:, :-n]
            if pad is not None:
                same &= sources[:, n:] != pad  # padding is not the source (pads come last)
            run = np.concatenate([np.zeros((len(sources), 1), dtype=np.int64), np.cumsum(same, axis=1)], axis=1)
            for r, i in zip(*np.nonzero(run[:, need:] - run[:, :-need] == need)):  # i + need - 1: the last equal
                units[r].add(tuple(sources[r, i + need : i + need + n].tolist()))
        return [frozenset(u) for u in units]


DEFAULT = LoopGuard()


class SharedGuard:
    """A translator's `loop_guard` attribute (None: off), one value for the translator and its
    target-language views (shallow copies of it, runtime/translator.Translator.view): set on
    either, after the views were made too, every one decodes with it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = f"_{name}_cell"

    def __get__(self, obj: object, owner: type | None = None) -> LoopGuard | None:
        return DEFAULT if obj is None else obj.__dict__[self.key][0]

    def __set__(self, obj: object, value: LoopGuard | None) -> None:
        cell = obj.__dict__.get(self.key)  # a view's cell is its translator's (copied by reference)
        if cell is None:
            obj.__dict__[self.key] = [value]
        else:
            cell[0] = value


class Repeats:
    """The guard's state of some rows: `last[:, j]` each row's token j + 1 steps back (-1: none
    yet), `run[:, n - 1]` how many of its last tokens in a row equal the token n before each,
    `units[r]` the repeats row r's source has. `armed`: False only when no row's next token can
    be banned (no run has reached its unit's `need`): then `banned` is all -1, and `pick` and
    `filter_topk` return at once (a decoder step usually has no row near a repeat)."""

    def __init__(self, guard: LoopGuard, units: list[Units]) -> None:
        rows = len(units)
        self.guard, self.units = guard, units
        self.has_units = np.array([bool(u) for u in units], dtype=bool)
        self.last = np.full((rows, guard.max_ngram), -1, dtype=np.int64)
        self.run = np.zeros((rows, guard.max_ngram), dtype=np.int64)
        n = range(1, guard.max_ngram + 1)
        self.need = np.array([(guard.copies_of(k) - 1) * k - 1 for k in n])  # then the next copy is the last
        self._arm()

    def _arm(self) -> None:
        self.armed = bool((self.run >= self.need).any())

    def push(self, tokens: np.ndarray) -> None:
        """Each row's next token (R,)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        same = self.last == tokens[:, None]
        self.run += 1
        self.run *= same
        self.last[:, 1:] = self.last[:, :-1]  # numpy copies overlapping slices as if through a buffer
        self.last[:, 0] = tokens
        self._arm()

    def banned(self) -> np.ndarray:
        """(R, N) the token each row may not take next, per unit length n (-1: none)."""
        banned = np.where(self.run >= self.need, self.last, -1)
        for r in np.nonzero(self.has_units & (banned.max(axis=1) >= 0))[0]:  # rare: a repeat in the source too
            for k in np.nonzero(banned[r] >= 0)[0]:  # unit length k + 1: the copy it would complete
                unit = (*self.last[r, k - 1 :: -1].tolist(), int(banned[r, k])) if k else (int(banned[r, 0]),)
                if unit in self.units[r]:
                    banned[r, k] = -1
        return banned

    def take(self, rows: np.ndarray) -> Repeats:
        """The state of rows `rows` (indices or a mask), in that order."""
        out = Repeats.__new__(Repeats)
        out.guard, out.need, out.last, out.run = self.guard, self.need, self.last[rows], self.run[rows]
        out.units = [self.units[i] for i in np.arange(len(self.units))[rows]]
        out.has_units = self.has_units[rows]
        out._arm()
        return out

    def reset(self, rows: Sequence[int] | np.ndarray, units: Sequence[Units]) -> None:
        """Rows `rows` start new outputs, of sources with `units` (LoopGuard.source_units)."""
        self.last[rows], self.run[rows] = -1, 0
        for r, u in zip(rows, units):
            self.units[r] = u
            self.has_units[r] = bool(u)
        self._arm()

    def grow(self, rows: int) -> None:
        """`rows` more rows (their outputs empty; `reset` them before use)."""
        self.last = np.concatenate([self.last, np.full((rows, self.last.shape[1]), -1, dtype=np.int64)])
        self.run = np.concatenate([self.run, np.zeros((rows, self.run.shape[1]), dtype=np.int64)])
        self.units += [frozenset()] * rows
        self.has_units = np.concatenate([self.has_units, np.zeros(rows, dtype=bool)])
        self._arm()


def pick(
    logits: np.ndarray,
    best: np.ndarray,
    ids: np.ndarray,
    repeats: Repeats | None,
    tokens_of: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy choice under the guard: `best` (R,) each row's argmax column of `logits` (R, V) and
    `ids` its piece; a row whose piece is banned takes its best column whose piece is not (ties:
    the lowest column, as argmax). Only the rows `rows` (a mask; None: all) are guarded. Returns
    the columns and the pieces (new arrays only where something changed; `logits` unchanged)."""
    if repeats is None or not repeats.armed:
        return best, ids
    banned = repeats.banned()
    hit = (banned == ids[:, None]).any(axis=1)
    if rows is not None:
        hit &= rows
    if not hit.any():
        return best, ids
    best, ids = best.copy(), ids.copy()
    at = np.nonzero(hit)[0]
    sub, banned = logits[at].astype(np.float32, copy=True), banned[at]
    col, piece = best[at], ids[at]
    todo = np.ones(len(at), dtype=bool)
    for _ in range(repeats.guard.max_ngram):  # each round rules out one more column of a row
        r = np.nonzero(todo)[0]
        if not len(r):
            break
        sub[r, col[r]] = -np.inf
        col[r] = sub[r].argmax(-1)
        piece[r] = tokens_of(col[r])
        todo[r] = (banned[r] == piece[r][:, None]).any(axis=1)
    best[at], ids[at] = col, piece
    return best, ids


def filter_topk(
    values: np.ndarray, ids: np.ndarray, repeats: Repeats | None, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Beam search's candidates (R, width + max_ngram), best first, without each row's banned
    tokens, cut to `width`: a banned candidate goes to the end (-inf), the others keep their
    order (ties included)."""
    if repeats is None or not repeats.armed:
        return values[:, :width], ids[:, :width]
    hit = (repeats.banned()[:, :, None] == ids[:, None, :]).any(axis=1)  # (R, W)
    if not hit.any():
        return values[:, :width], ids[:, :width]
    values = np.where(hit, -np.inf, values).astype(values.dtype)
    order = np.argsort(hit, axis=1, kind="stable")[:, :width]  # the unbanned first, in their order
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)


def extra_width(repeats: Repeats | None) -> int:
    """Candidates beam search asks for beyond its width, so that `width` remain after the bans."""
    return 0 if repeats is None else repeats.guard.max_ngram


def row_bans(tokens: Sequence[int], guard: LoopGuard, source: Sequence[int] = ()) -> list[int]:
    """The tokens that `tokens` (one output so far, of `source`) may not be followed by: the rule
    in plain Python (Repeats is its incremental form; the tests compare them)."""
    tokens, source, out = list(tokens), list(source), []
    for n in range(1, guard.max_ngram + 1):
        m = guard.copies_of(n) * n - 1  # the tokens before the next one that the last copy needs
        if len(tokens) >= m and tokens[len(tokens) - m + n :] == tokens[len(tokens) - m : len(tokens) - n]:
            repeat = (tokens[len(tokens) - n + 1 :] + [tokens[-n]]) * guard.copies_of(n)
            if not any(source[i : i + len(repeat)] == repeat for i in range(len(source))):
                out.append(tokens[-n])
    return out
