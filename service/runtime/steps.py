"""Step runners: the ways of running one decoder step, each chosen once when a translator (or one
of its target-language views) is built.

* `CopyStep`: `session.run` on numpy feeds; the new caches come back as new arrays (graph
  contract 2, whose caches grow by a slot a step, or contract 3 run unbound, as the int8-static
  calibration records it).
* `BoundStep`: contract 3 on the CPU: each cache's numpy buffer is bound to the decoder as both
  the step's past and its present (IO binding), so a step writes its own slot in place and
  nothing is copied from one step to the next; a batch's binding is made once and used again
  while its arrays stay the same.
* `DeviceStep`: the caches kept as OrtValues on the session's device (CUDA) between steps; only
  the token ids go in and the logits stay there for beam search's selection.

Every runner gives what the search loops (runtime/search.py) need: `start` (the state before the
first step), `stepper` (a batch's step function), `keep_rows` (the state for fewer rows; None
where rows cannot leave) and `beam_parts` (runtime/beam.py's start, step, topk, gather and
gather_cache).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import onnxruntime as ort

from service.runtime import graph_io
from service.runtime.beam import TopK, take_rows
from service.runtime.sessions import create_session

if TYPE_CHECKING:
    from service.runtime.translator import Translator

ROWS_GATHER = Path(__file__).parent / "graphs" / "rows_gather.onnx"

# run_step's bindings kept per thread: one per running batch (its `state` dict), a few batches at most
# (each binding holds its arrays: a batch's binding is replaced, not kept beside, when its arrays change)
BINDINGS_KEPT = 4

State = dict[str, Any]
Stepper = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class DecoderGraph:
    """What a step runner needs of a translator: its sessions, the graph contract's names and
    the decoding constants. A target-language view has its own (its decoder session, its logit
    columns)."""

    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    pad: int
    bos: int
    eos: int
    n_heads: int
    d_head: int
    static: bool  # contract 3: fixed-width caches and per-row positions in the state
    encoder_outputs: list[str]
    present_outputs: list[str]
    cache_names: list[str]  # present_k.{i} becomes the next step's past_k.{i}: the state's caches
    n_logits: int
    logit_ids: np.ndarray | None  # column j of the logits is piece logit_ids[j] (None: every piece)
    limit: Callable[[int], int]  # the output-length limit of a source of n tokens
    # What a step gives: the logits (B, n_logits) float32, or a shortlist decoder's `hidden`
    # (B, d_model) uint8, the output projection's input (runtime/shortlist.py)
    output: str = graph_io.LOGITS
    output_dtype: Any = np.float32

    def tokens_of(self, columns: np.ndarray) -> np.ndarray:
        """The piece ids of logit columns."""
        return columns if self.logit_ids is None else self.logit_ids[columns]

    @classmethod
    def of(cls, t: Translator) -> DecoderGraph:
        """A translator's (or a target-language view's) graph as it is now."""
        return cls(
            t.encoder,
            t.decoder,
            t.pad,
            t.bos,
            t.eos,
            t.n_heads,
            t.d_head,
            t.static,
            t.encoder_outputs,
            t.present_outputs,
            t.cache_names,
            t.n_logits,
            t.logit_ids,
            t.output_limit,
            t.step_output,
            t.step_output_dtype,
        )


class BeamParts(NamedTuple):
    """runtime/beam.beam_steps's callables for one search."""

    start: Callable[[np.ndarray], State]
    step: Callable[[State, np.ndarray], Any]
    topk: TopK
    gather: Callable[[Any, np.ndarray], Any]
    gather_cache: Callable[[str, Any, np.ndarray], Any] | None


class CopyStep:
    """`session.run` on numpy feeds; the caches come back as new arrays."""

    drops_rows = True  # the greedy loop may cut finished rows out of the state

    def __init__(self, graph: DecoderGraph) -> None:
        self.graph = graph

    def start(self, src: np.ndarray, width: int | None = None) -> State:
        """The decoder's inputs before the first step: the encoder's keys/values, the source
        mask and empty caches. Contract 3: caches `width` slots wide (default: the output limit
        of the longest source, which no row's output exceeds) and every row's position (0)."""
        g = self.graph
        cross = g.encoder.run(g.encoder_outputs, {graph_io.SRC_IDS: src})
        state = dict(zip(g.encoder_outputs, cross))
        state[graph_io.SRC_MASK] = src != g.pad
        b = src.shape[0]
        if g.static:
            width = g.limit(src.shape[1]) if width is None else width
            for name in g.cache_names:
                state[name] = np.zeros((b, g.n_heads, width, g.d_head), dtype=np.float32)
            state[graph_io.POSITION] = np.zeros(b, dtype=np.int64)
            return state
        empty = np.zeros((b, g.n_heads, 0, g.d_head), dtype=np.float32)
        state.update(dict.fromkeys(g.cache_names, empty))
        return state

    def feeds(self, state: State, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder's inputs for `tokens` (B, 1), every row at the cache's length (contract
        3: at the state's positions)."""
        feeds = {graph_io.INPUT_IDS: tokens, **state}
        if not self.graph.static:
            b, past_len = tokens.shape[0], state[self.graph.cache_names[0]].shape[2]
            feeds[graph_io.POSITION] = np.full(b, past_len, dtype=np.int64)
            feeds[graph_io.SELF_MASK] = np.ones((b, past_len + 1), dtype=bool)
        return feeds

    def run_step(self, state: State, feeds: dict[str, np.ndarray], extra: Sequence[str] = ()) -> Any:
        """The decoder on `feeds`; the new caches go into `state`; returns the logits (and the
        `extra` outputs after them, when asked: a list)."""
        g = self.graph
        logits, *rest = g.decoder.run([g.output, *extra, *g.present_outputs], feeds)
        state.update(zip(g.cache_names, rest[len(extra) :]))
        return [logits, *rest[: len(extra)]] if extra else logits

    def step(self, state: State, tokens: np.ndarray, extra: Sequence[str] = ()) -> Any:
        """One step for `tokens` (B, 1) of a batch that started together (every row at the same
        position, owning every cache slot): returns the logits (with `extra`: as `run_step`) and
        moves the state on by one position."""
        result = self.run_step(state, self.feeds(state, tokens), extra)
        if self.graph.static:
            state[graph_io.POSITION] = state[graph_io.POSITION] + 1
        return result

    def stepper(self, state: State) -> Stepper:
        """The step function of the greedy loop for `state` (made again when its rows leave)."""
        return lambda tokens: self.step(state, tokens)

    def keep_row(self, name: str, value: np.ndarray, keep: np.ndarray, filled: int) -> np.ndarray:
        """State entry `name` for the rows `keep` only. A fixed-width cache (contract 3): only
        its `filled` slots are copied (no row reads past its own position)."""
        if not (self.graph.static and name in self.graph.cache_names):
            return value[keep]
        return filled_rows(value, keep, filled, np.empty((int(keep.sum()), *value.shape[1:]), dtype=value.dtype))

    def beam_parts(self, topk: TopK) -> BeamParts:
        """Contract 2 (caches grown by the graph: a gather of each), or contract 3 unbound: each
        cache reordered into a second buffer of its own."""
        filled = [0]  # contract 3: cache slots written so far (every row of a beam search is at the same step)

        def step(state: State, tokens: np.ndarray) -> Any:
            filled[0] += 1
            return self.step(state, tokens)

        spare: dict[str, np.ndarray] = {}  # contract 3: each cache's second buffer

        def take_filled(name: str, value: np.ndarray, rows: np.ndarray) -> np.ndarray:
            """A fixed-width cache's rows in the order `rows`, written into the cache's other
            buffer (two per cache, used in turn: no allocation per step; rows only ever leave,
            so the first buffer's rows are enough)."""
            # the buffer `value` is the head of (not the memory of an array onnxruntime returned)
            base = value.base
            owner = base if isinstance(base, np.ndarray) and base.shape[1:] == value.shape[1:] else value
            other = spare[name] if name in spare else np.empty_like(owner)
            spare[name] = owner
            return filled_rows(value, rows, filled[0], other[: len(rows)])

        return BeamParts(self.start, step, topk, take_rows, take_filled if self.graph.static else None)


class BoundStep(CopyStep):
    """Contract 3 on the CPU: every array bound to the decoder once per batch, the caches as both
    past and present (written in place)."""

    def __init__(self, graph: DecoderGraph) -> None:
        super().__init__(graph)
        self.local = threading.local()  # run_step's last bindings, per calling thread

    def bind(self, state: State, advance: bool = True, extra: Sequence[str] = ()) -> Stepper:
        """A step for `state` (its caches, cross keys/values, source mask and positions) with
        every array bound to the decoder once, not at every step: the token ids are copied into
        a bound buffer, the logits come back in one (the same buffer each call; with `extra`, a
        list of the logits and those outputs), the caches are written in place and, with
        `advance`, the positions advanced in place. Valid while `state` holds the same arrays,
        written in place only (the greedy loop makes a new state when rows leave; `run_step`
        keeps one per running batch). Inputs that are not C-contiguous are bound as contiguous
        copies (caches must be: they are written in place)."""
        g = self.graph
        b = state[graph_io.POSITION].shape[0]
        bind = g.decoder.io_binding()
        ids = np.empty((b, 1), dtype=np.int64)
        logits = np.empty((b, g.n_logits), dtype=g.output_dtype)
        position = state[graph_io.POSITION]
        held = [ort.OrtValue.ortvalue_from_numpy(logits)]  # the OrtValues share the arrays' memory
        bind.bind_ortvalue_output(g.output, held[0])
        for name in extra:
            bind.bind_output(name, "cpu")
        caches = dict(zip(g.cache_names, g.present_outputs))
        for name, value in {graph_io.INPUT_IDS: ids, **state}.items():
            held.append(ort.OrtValue.ortvalue_from_numpy(value if name in caches else np.ascontiguousarray(value)))
            bind.bind_ortvalue_input(name, held[-1])
            if name in caches:
                bind.bind_ortvalue_output(caches[name], held[-1])

        def run(tokens: np.ndarray, _held: list = held) -> Any:  # the OrtValues live with it
            ids[:] = tokens
            g.decoder.run_with_iobinding(bind)
            if advance:
                np.add(position, 1, out=position)
            if not extra:
                return logits
            return [logits, *(v.numpy() for v in bind.get_outputs()[1 : 1 + len(extra)])]

        return run

    @property
    def bindings(self) -> OrderedDict:
        """This thread's bindings of running batches, by id of their `state` dict."""
        return self.local.__dict__.setdefault("bindings", OrderedDict())

    def run_step(self, state: State, feeds: dict[str, np.ndarray], extra: Sequence[str] = ()) -> Any:
        """As CopyStep's, bound: every cache of `feeds` is written in place, so `state` must hold
        the same arrays; and when the feeds are the same arrays as the last call's with this
        `state` (a running batch between joins and leaves), that call's binding is used again,
        its logits buffer too: read the logits before the next call."""
        arrays = {k: v for k, v in feeds.items() if k != graph_io.INPUT_IDS}
        if extra or not all(v.flags.c_contiguous for v in arrays.values()):
            return self.bind(arrays, advance=False, extra=extra)(feeds[graph_io.INPUT_IDS])
        # One binding per running batch (its `state` dict), replaced when the batch's arrays are
        # (it grew, widened, compacted): kept beside, the old bindings would hold the old arrays,
        # caches included. The binding holds the arrays it reads: no id in its key is reused
        # while it is kept.
        key = tuple((k, id(v)) for k, v in arrays.items())
        cache = self.bindings
        held = cache.get(id(state))
        if held is None or held[0] != key:
            held = cache[id(state)] = (key, self.bind(arrays, advance=False))
            while len(cache) > BINDINGS_KEPT:
                cache.popitem(last=False)
        cache.move_to_end(id(state))
        return held[1](feeds[graph_io.INPUT_IDS])

    def stepper(self, state: State) -> Stepper:
        return self.bind(state)

    def beam_parts(self, topk: TopK) -> BeamParts:
        """Every state entry kept in one array for the whole search: the caches are reordered in
        place (only the rows whose beam changed, only the slots written so far), the rows of
        stopped sentences leave by moving the kept ones to the front (a prefix of the same
        arrays), and the decoder's binding is made again only then, not at every step."""
        filled = [0]  # cache slots written so far (every row of a beam search is at the same step)
        bound: list[Stepper | None] = [None]  # None: bind the state's arrays anew
        moved: list = [None, None]  # the last `rows` seen and its rows that change (one per step)

        def step(state: State, tokens: np.ndarray) -> Any:
            run = bound[0]
            if run is None:
                run = bound[0] = self.bind(state, advance=True)
            filled[0] += 1
            return run(tokens)

        def move(value: np.ndarray, rows: np.ndarray, slots: int | None) -> np.ndarray:
            if moved[0] is not rows:
                moved[:] = rows, np.nonzero(rows != np.arange(len(rows)))[0]
            if len(rows) < len(value):  # fewer rows: a prefix, bound anew
                bound[0] = None
            return moved_rows(value, rows, slots, moved[1])

        def gather(value: np.ndarray, rows: np.ndarray) -> np.ndarray:
            if len(rows) > len(value):  # the start: each sentence's row repeated for its beams
                bound[0] = None
                return value[rows]
            return move(value, rows, None)

        return BeamParts(self.start, step, topk, gather, lambda _name, value, rows: move(value, rows, filled[0]))


class DeviceStep:
    """The state as OrtValues on the session's device (the encoder's keys/values, the caches) and
    numpy arrays bound from the CPU (the source mask, the positions); the logits stay there and
    beam search selects and reorders there too (graphs/beam_topk.onnx, graphs/rows_gather.onnx)."""

    drops_rows = False  # finished rows stay in the batch (slicing a device tensor would need a copy)

    def __init__(
        self, graph: DecoderGraph, device: str, providers: list[str], threads: int, memory_arena: bool, topk_file: Path
    ) -> None:
        self.graph, self.device = graph, device
        self.topk_session = create_session(topk_file, providers, threads, memory_arena)
        self.gather_session = create_session(ROWS_GATHER, providers, threads, memory_arena)

    def for_graph(self, graph: DecoderGraph) -> DeviceStep:
        """The same runner for another graph (a target language's view: its decoder), sharing
        the generic selection graphs' sessions."""
        found = copy.copy(self)
        found.graph = graph
        return found

    def start(self, src: np.ndarray, width: int | None = None) -> State:
        """The state before the first step; contract 3's caches as wide as the longest source's
        output limit (`width` is not used)."""
        g, dev = self.graph, self.device
        enc = g.encoder.io_binding()
        enc.bind_cpu_input(graph_io.SRC_IDS, src)
        for name in g.encoder_outputs:
            enc.bind_output(name, dev)
        g.encoder.run_with_iobinding(enc)
        state: State = dict(zip(g.encoder_outputs, enc.get_outputs()))
        state[graph_io.SRC_MASK] = src != g.pad
        b = src.shape[0]
        width = g.limit(src.shape[1]) if g.static else 0
        empty = np.zeros((b, g.n_heads, width, g.d_head), dtype=np.float32)
        for name in g.cache_names:
            state[name] = ort.OrtValue.ortvalue_from_numpy(empty, dev, 0)
        if g.static:
            state[graph_io.POSITION] = np.zeros(b, dtype=np.int64)
        return state

    def step(self, state: State, tokens: np.ndarray) -> Any:
        """One decoder step; the logits stay on the device (an OrtValue). Contract 3: the caches
        are not shared between past and present here: onnxruntime's CUDA GroupQueryAttention
        takes fp16/bf16 only, so an fp32 graph's attention runs on the CPU provider beside it and
        its present comes back as a new tensor, which the next step reads as its past."""
        g = self.graph
        bind = g.decoder.io_binding()
        bind.bind_cpu_input(graph_io.INPUT_IDS, tokens)
        if not g.static:
            b, past_len = tokens.shape[0], state[g.cache_names[0]].shape()[2]
            bind.bind_cpu_input(graph_io.POSITION, np.full(b, past_len, dtype=np.int64))
            bind.bind_cpu_input(graph_io.SELF_MASK, np.ones((b, past_len + 1), dtype=bool))
        for name, value in state.items():
            if isinstance(value, np.ndarray):
                bind.bind_cpu_input(name, value)
            else:
                bind.bind_ortvalue_input(name, value)
        bind.bind_output(graph_io.LOGITS, self.device)
        for name in g.present_outputs:
            bind.bind_output(name, self.device)
        g.decoder.run_with_iobinding(bind)
        logits, *present = bind.get_outputs()
        state.update(zip(g.cache_names, present))
        if g.static:
            state[graph_io.POSITION] = state[graph_io.POSITION] + 1
        return logits

    def stepper(self, state: State) -> Stepper:
        return lambda tokens: self.step(state, tokens).numpy()

    def keep_row(self, name: str, value: Any, keep: np.ndarray, filled: int) -> Any:
        raise NotImplementedError("rows stay in a device-resident batch (drops_rows is False)")

    def topk(self, logits: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        bind = self.topk_session.io_binding()
        bind.bind_ortvalue_input("logits", logits)
        bind.bind_cpu_input("k", np.array([k], dtype=np.int64))
        bind.bind_output("values", "cpu")  # (rows, 2k): all that comes back to the host
        bind.bind_output("indices", "cpu")
        self.topk_session.run_with_iobinding(bind)
        values, ids = bind.copy_outputs_to_cpu()
        return values, self.graph.tokens_of(ids)

    def gather(self, value: Any, rows: np.ndarray) -> Any:
        if isinstance(value, np.ndarray):
            return value[rows]
        bind = self.gather_session.io_binding()
        bind.bind_ortvalue_input("data", value)
        bind.bind_cpu_input("rows", rows.astype(np.int64))
        bind.bind_output("out", self.device)
        self.gather_session.run_with_iobinding(bind)
        return bind.get_outputs()[0]

    def beam_parts(self, topk: TopK) -> BeamParts:
        """Caches, logits and their reordering on the device (`topk`: not used, the device's own)."""
        return BeamParts(self.start, self.step, self.topk, self.gather, None)


def moved_rows(value: np.ndarray, rows: np.ndarray, filled: int | None, moved: np.ndarray) -> np.ndarray:
    """`value`'s rows in the order `rows` (len(rows) <= len(value)), in place: the first
    len(rows) rows of the same array. Only the rows `moved` (those whose source differs) are
    written (read first, so that no row is overwritten before it is read); of a fixed-width
    cache (B, N, C, H), with `filled`, only the first `filled` slots (contract 3: no row reads
    past its position)."""
    n = len(rows)
    if len(moved):
        if filled is None:
            value[moved] = value[rows[moved]]
        else:
            value[moved, :, :filled] = value[rows[moved], :, :filled]
    return value if n == len(value) else value[:n]


def filled_rows(value: np.ndarray, rows: np.ndarray, filled: int, out: np.ndarray) -> np.ndarray:
    """`value`'s rows `rows` (indices or a mask) into `out`: of a fixed-width cache (B, N, C, H),
    only the first `filled` slots, the ones a row may read (contract 3); the rest of `out` is
    left as it was."""
    out[:, :, :filled] = value[rows, :, :filled]
    return out
