"""The continuous scheduler's admission policy (service/scheduling/policy.py), driven directly: no
threads, no sleeps, no engine. Fairness between requests, the row, token and share budgets, length
and target-language lanes, blank sentences, holding newcomers, and a beam request's parts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from service.scheduling.policy import (
    Budget,
    Lane,
    Sentence,
    Waiting,
    hold,
    length_lane,
    parts,
    plan,
    share,
)

SHORT, LONG = Lane("t", None, 0), Lane("t", None, 1)
BIG = Budget(rows=32, tokens=1 << 20)


class Running:
    """A running batch of `rows` (source tokens, output limit), bounded as DecodeBatch.bound."""

    def __init__(self, *rows: tuple[int, int]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def bound(self, more: Sequence[tuple[int, int]] = ()) -> int:
        rows = [*self.rows, *more]
        return len(rows) * (max(s for s, _ in rows) + max(n for _, n in rows)) if rows else 0


def request(name: str, n: int, lane: Lane = SHORT, row: tuple[int, int] = (4, 8), arrived: float = 0.0) -> Waiting:
    return Waiting(name, [Sentence(i, lane, row) for i in range(n)], arrived)


def admitted(p) -> list[str]:
    """Who got each admitted sentence, in order: "a0" is request a's text 0."""
    return [f"{r}{s.index}" for r, s in p.admitted]


# -- fairness -------------------------------------------------------------------------------------


def test_hybrid_lets_short_requests_in_first_then_paragraphs_in_arrival_order():
    waiting = [request("p", 3), request("q", 3), request("s", 1), request("d", 2)]
    p = plan(waiting, {SHORT: Running()}, Budget(rows=7, tokens=1 << 20))
    # the one- and two-sentence requests take turns first; then the first paragraph every row it
    # can, and the second what is left
    assert admitted(p) == ["s0", "d0", "d1", "p0", "p1", "p2", "q0"]
    assert p.joins == {SHORT: [(r, int(i)) for r, i in admitted(p)]}


def test_round_robin_interleaves_the_requests():
    waiting = [request("p", 3), request("q", 3), request("s", 1)]
    p = plan(waiting, {SHORT: Running()}, Budget(rows=6, tokens=1 << 20), order="round-robin")
    assert admitted(p) == ["p0", "q0", "s0", "p1", "q1", "p2"]


def test_fifo_admits_every_sentence_of_a_request_before_the_next():
    waiting = [request("p", 3), request("s", 1)]
    p = plan(waiting, {SHORT: Running()}, Budget(rows=3, tokens=1 << 20), order="fifo")
    assert admitted(p) == ["p0", "p1", "p2"]


def test_shortest_first_takes_fewest_sentences_left_but_not_past_a_second_of_waiting():
    waiting = [request("p", 3, arrived=9.5), request("s", 1, arrived=9.9), request("old", 2, arrived=8.0)]
    p = plan(waiting, {SHORT: Running()}, BIG, order="shortest-first", now=10.0)
    assert admitted(p) == ["old0", "old1", "s0", "p0", "p1", "p2"]


# -- budgets --------------------------------------------------------------------------------------


def test_a_lane_takes_rows_up_to_its_budget_and_is_full_for_the_turn():
    p = plan([request("p", 5)], {SHORT: Running((4, 8), (4, 8))}, Budget(rows=4, tokens=1 << 20))
    assert admitted(p) == ["p0", "p1"]


def test_the_token_budget_counts_every_lane_of_the_model():
    # LONG runs 2 rows of 20 + 20: 80 tokens; a newcomer in SHORT makes 1 x (4 + 8) more
    running = {SHORT: Running(), LONG: Running((20, 20), (20, 20))}
    assert admitted(plan([request("p", 3)], running, Budget(rows=32, tokens=80 + 12))) == ["p0"]
    assert admitted(plan([request("p", 3)], running, Budget(rows=32, tokens=80 + 24))) == ["p0", "p1"]
    # another model's lanes are not counted
    other = {Lane("u", None, 0): Running((50, 50)), SHORT: Running()}
    assert len(plan([request("p", 3)], other, Budget(rows=32, tokens=36)).admitted) == 3


def test_an_empty_lane_takes_one_sentence_whatever_its_tokens():
    p = plan([request("p", 2, row=(500, 500))], {SHORT: Running()}, Budget(rows=32, tokens=10))
    assert admitted(p) == ["p0"]


def test_a_lane_not_running_yet_counts_its_newcomers():
    target = Lane("t", "de", 0)
    p = plan([request("p", 3, lane=target, row=(10, 10))], {SHORT: Running()}, Budget(rows=32, tokens=40))
    assert admitted(p) == ["p0", "p1"] and list(p.joins) == [target]


def test_the_share_bounds_the_sentences_of_a_turn_but_not_blank_ones():
    blank = Waiting("b", [Sentence(0), Sentence(1)])  # no lane: answered as they are
    p = plan([request("p", 4), blank], {SHORT: Running()}, Budget(rows=32, tokens=1 << 20, share=2))
    assert admitted(p) == ["b0", "b1", "p0", "p1"]
    assert p.joins == {SHORT: [("p", 0), ("p", 1)]}  # blank sentences join no batch


# -- lanes ----------------------------------------------------------------------------------------


def test_sentences_join_their_own_length_lane():
    assert [length_lane([8, 24], n) for n in (1, 8, 9, 24, 25, 500)] == [0, 0, 1, 1, 2, 2]
    waiting = [Waiting("p", [Sentence(0, LONG, (30, 40)), Sentence(1, SHORT, (3, 6)), Sentence(2, LONG, (25, 30))])]
    p = plan(waiting, {SHORT: Running(), LONG: Running()}, BIG)
    assert p.joins == {LONG: [("p", 0), ("p", 2)], SHORT: [("p", 1)]}


def test_a_full_lane_does_not_stop_sentences_for_another_lane():
    waiting = [Waiting("p", [Sentence(0, LONG, (30, 40)), Sentence(1, LONG, (30, 40))]), request("s", 1)]
    p = plan(waiting, {SHORT: Running(), LONG: Running(*[(30, 40)] * 4)}, Budget(rows=4, tokens=1 << 20))
    assert admitted(p) == ["s0"]


# -- a turn's other decisions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("running", "mine", "pending", "expected"),
    [
        ([0], 0, 50, 1 << 30),  # one worker: all it has room for
        ([0, 0], 0, 10, 5),  # a paragraph at an idle server: half each
        ([6, 0], 0, 2, 4),  # the worker with fewer rows catches up
        ([6, 0], 6, 2, 0),  # ...and the other takes none
        ([0, 0], 0, 0, 1),  # a worker running none may always take one
    ],
)
def test_a_worker_takes_its_even_share(running, mine, pending, expected):
    assert share(running, mine, pending) == expected


def test_newcomers_wait_a_step_only_while_every_lane_is_half_full_few_wait_and_none_waited_long():
    assert hold([16, 20], rows=32, pending=2, waited=[0.001], max_wait=0.005)
    assert not hold([16, 15], rows=32, pending=2, waited=[0.001], max_wait=0.005)  # a lane under half
    assert not hold([16, 20], rows=32, pending=4, waited=[0.001], max_wait=0.005)  # enough to join now
    assert not hold([16, 20], rows=32, pending=2, waited=[0.001, 0.006], max_wait=0.005)  # waited enough


def test_a_beam_request_is_cut_into_one_part_per_worker_by_length():
    assert parts([5, 1, 4, 2, 3], 2) == [[1, 3, 4], [2, 0]]
    assert parts([5, 1, 4], 1) == [[1, 2, 0]]
    assert parts([3, 3], 4) == [[0], [1]]
