"""The continuous scheduler's admission policy, as pure functions of what waits and what runs:
no locks, threads, clocks or engines (the scheduler passes `now` and describes each sentence with
its engine), so that tests drive it directly.

`plan(waiting, running, budget, order, now)` answers which waiting sentences join which running
batch this turn (vLLM's `schedule()` plays this part there):

* **fairness** (`order`): "hybrid" (the default) lets requests of one or two sentences left take
  turns first (a one-sentence request is not queued behind every sentence of the paragraphs that
  came first), then the longer ones in arrival order, each taking every row it can (round robin
  among paragraphs spreads each over many steps beside all the others: BENCHMARKS.md, section 6);
  also plain "round-robin", "fifo" and "shortest-first" (fewest sentences left first; over a
  second waiting: first);
* **length lanes**: a sentence joins the running batch of its model, target language and source
  length (`Lane`), so that short sentences do not decode beside long ones' padding;
* **budgets**: a lane holds at most `Budget.rows` rows, a model's lanes together at most
  `Budget.tokens` tokens (sources + cache slots, `Load.bound`), and a worker admits at most
  `Budget.share` sentences a turn (`share`: its even part of the rows running and waiting);
  a lane that said no is full for the rest of the turn; a sentence that finds its lane empty
  always joins;
* blank sentences are admitted without a row (answered as they are).

`share` and `hold` are the two other decisions of a turn: how many sentences a worker may take,
and whether a model's few newcomers wait one more step to join together; `parts` cuts a beam
request into one part per worker.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

T = TypeVar("T")
Row = tuple[int, int]  # a row's (source tokens, output limit)

ORDERS = ("hybrid", "round-robin", "fifo", "shortest-first")


class Lane(NamedTuple):
    """One running batch of a model: the decoder of one target language (None: the full
    vocabulary) and one source length lane (index into the lanes' bounds: `length_lane`)."""

    model: str
    target: str | None
    length: int


def length_lane(bounds: Sequence[int], src: int) -> int:
    """The length lane of a source of `src` tokens: the first bound (sorted) it does not exceed;
    len(bounds) past the last."""
    return bisect.bisect_left(bounds, src)


@dataclass(frozen=True)
class Sentence:
    """A waiting sentence: its text's index in the request, its lane (None: blank, no decoding)
    and its row (source tokens, output limit)."""

    index: int
    lane: Lane | None = None
    row: Row = (0, 0)


@dataclass
class Waiting(Generic[T]):
    """A request in the queue: `request` (the scheduler's own object, handed back in the plan),
    its sentences not yet admitted, in the order they are to join, and when it arrived."""

    request: T
    left: Sequence[Sentence]
    arrived: float = 0.0


@dataclass(frozen=True)
class Budget:
    rows: int  # rows per lane
    tokens: int  # tokens of a model's lanes together (`Load.bound`)
    share: int = 1 << 30  # sentences this turn (blank ones aside)


class Load(Protocol):
    """A running batch as admission sees it (runtime/continuous.DecodeBatch)."""

    def __len__(self) -> int: ...

    def bound(self, more: Sequence[Row] = ()) -> int: ...


class _Empty:
    """A lane not running yet: `DecodeBatch.bound` of a batch with no rows."""

    def __len__(self) -> int:
        return 0

    def bound(self, more: Sequence[Row] = ()) -> int:
        return len(more) * (max(s for s, _ in more) + max(n for _, n in more)) if more else 0


EMPTY = _Empty()


@dataclass
class Plan(Generic[T]):
    """A turn's admissions: every sentence admitted, in order (blank ones too), and the rows that
    join each lane, as (request, text index)."""

    admitted: list[tuple[T, Sentence]] = field(default_factory=list)
    joins: dict[Lane, list[tuple[T, int]]] = field(default_factory=dict)


def plan(
    waiting: Sequence[Waiting[T]],
    running: Mapping[Lane, Load],
    budget: Budget,
    order: str = "hybrid",
    now: float = 0.0,
) -> Plan[T]:
    """Which of `waiting` (in arrival order) join which of the `running` batches this turn (the
    module docstring); `now`: the clock `Waiting.arrived` is read against (shortest-first)."""
    out: Plan[T] = Plan()
    planned: dict[Lane, list[Row]] = defaultdict(list)  # rows of the newcomers per lane
    full: set[Lane] = set()
    taken = [0] * len(waiting)  # sentences admitted of each waiting request

    def tokens(model: str, lane: Lane, row: Row) -> int:
        lanes = {k: b for k, b in running.items() if k.model == model}
        lanes.update((k, running.get(k, EMPTY)) for k in [*planned, lane] if k.model == model)
        return sum(b.bound([*planned[k], *([row] if k == lane else [])]) for k, b in lanes.items())

    def admit(k: int) -> bool:
        """Admit waiting[k]'s next sentence; False when its lane (or the turn's share) has no room."""
        w = waiting[k]
        s = w.left[taken[k]]
        if s.lane is not None:
            lane = s.lane
            if sum(len(p) for p in planned.values()) >= budget.share or lane in full:
                return False
            rows = len(running.get(lane, EMPTY)) + len(planned[lane])
            if rows and (rows >= budget.rows or tokens(lane.model, lane, s.row) > budget.tokens):
                full.add(lane)
                return False
            out.joins.setdefault(lane, []).append((w.request, s.index))
            planned[lane].append(s.row)
        out.admitted.append((w.request, s))
        taken[k] += 1
        return True

    def more(k: int) -> bool:
        return taken[k] < len(waiting[k].left)

    everyone = [k for k, w in enumerate(waiting) if w.left]
    if order == "hybrid":
        short = [k for k in everyone if len(waiting[k].left) <= 2]
        while short:
            short = [k for k in short if admit(k) and more(k)]
        for k in everyone:
            while more(k) and admit(k):
                pass
    elif order == "round-robin":
        while everyone:
            everyone = [k for k in everyone if admit(k) and more(k)]
    else:
        if order == "shortest-first":
            everyone.sort(key=lambda k: (now - waiting[k].arrived < 1.0, len(waiting[k].left), waiting[k].arrived))
        for k in everyone:  # fifo: in arrival order, every sentence of a request before the next's
            while more(k) and admit(k):
                pass
    return out


def share(running: Sequence[int], mine: int, pending: int) -> int:
    """The most sentences a worker running `mine` rows admits this turn, with `running` rows on
    each worker and `pending` sentences waiting: all it has room for when it is the only worker;
    else its even share of the rows running and waiting (at least one when it runs none), so that
    a paragraph arriving at an idle server is decoded on every worker, each on its own cores, and
    no worker takes rows while another has fewer."""
    if len(running) == 1:
        return 1 << 30
    even = math.ceil((sum(running) + pending) / len(running)) - mine
    return max(even, 0 if mine else 1)


def hold(lanes: Iterable[int], rows: int, pending: int, waited: Iterable[float], max_wait: float) -> bool:
    """Whether a model's waiting sentences wait one more step, to join together (an encoder call
    for one or two sentences costs a fifth of a decoder step): only while every lane of it
    (`lanes`: their rows) is at least half full (of `rows`), fewer than 4 sentences wait, and
    none of its requests has waited (`waited`, seconds) `max_wait`."""
    if any(2 * n < rows for n in lanes):
        return False
    if pending >= 4:
        return False
    return all(w < max_wait for w in waited)


def parts(lengths: Sequence[int], workers: int) -> list[list[int]]:
    """A beam request's texts (their `lengths`) cut into one part per worker, texts of neighbouring
    lengths together: the indices of each part's texts."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    size = math.ceil(len(lengths) / workers)
    return [order[i : i + size] for i in range(0, len(order), size)]


def describe(
    order: Sequence[int], blank: Callable[[int], bool], place: Callable[[int], tuple[Lane, Row]]
) -> list[Sentence]:
    """A request's sentences in admission `order`, each placed (`place(i)`: lane and row) unless blank."""
    return [Sentence(i) if blank(i) else Sentence(i, *place(i)) for i in order]
