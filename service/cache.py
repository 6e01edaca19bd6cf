"""An exact cache of sentence translations (`TRANSERVE_CACHE_MB`), least recently used first out.

A sentence's translation depends on nothing but its text, the bundles of its route (each step's
name, version, variant served and files), the decoding options and (later) a glossary: the
served variants are batch-invariant (README, "Variants"), so what a sentence's batch-mates were
does not change it. A cached answer is then exactly the answer a fresh decode would give, and
`service/translation.py` keys each sentence so (`sentence_key`) and skips the stages for the
sentences it finds here. It keeps the word alignments of HTML blocks the same way (`align_key`:
a forced decoding of the block and its translation, as batch-invariant: 0 of 180 differed
alone and in shuffled batches of 16 on `model/multi`), kinds counted apart.

Bounded by an estimate of the bytes its entries hold (`entry_bytes`: the strings' own sizes and
a fixed overhead per entry and per hypothesis, calibrated with tracemalloc), not by entries:
sentences differ in length by 100x. Safe from any thread (one lock; the event loop is the only
user today)."""

from __future__ import annotations

import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from typing import NamedTuple

from service.metrics import Metrics
from service.runtime.alignment import Link
from service.runtime.engine import Translation

# Calibrated with tracemalloc (tests/service/test_cache.py: the estimate is 0.91-0.97x of what
# 3,000 entries hold, greedy, 4 hypotheses, alignments; it must stay within 0.7-1.5x): the dict
# slot and the OrderedDict link, the key tuple and the entry's tuples, the factor and scores.
ENTRY_OVERHEAD = 400  # bytes per entry beyond its strings
HYP_OVERHEAD = 120  # bytes per hypothesis beyond its text (its tuple, score and length)
LINK_BYTES = 100  # bytes per alignment link (a tuple of four ints, those over 256 objects of their own)

Key = tuple[Hashable, ...]
SENTENCE, ALIGNMENT = "sentence", "alignment"  # the kinds counted


class Entry(NamedTuple):
    """A sentence's final state after the stages: what `assemble` reads of it."""

    hyps: tuple[Translation, ...]  # best first, with scores and lengths
    factor: float  # the confidence of the route's steps before the last (1.0 for one step)


Links = tuple[Link, ...]  # an HTML block's word alignment with its translation
Value = Entry | Links


def entry_bytes(key: Key, value: Value) -> int:
    """About what `key` and `value` hold in memory: their strings and a fixed overhead (the
    route's part of the key is shared by every entry of the route, and not counted)."""
    strings = sum(sys.getsizeof(part) for part in key if isinstance(part, str))
    if isinstance(value, Entry):
        return ENTRY_OVERHEAD + strings + sum(HYP_OVERHEAD + sys.getsizeof(h.text) for h in value.hyps)
    return ENTRY_OVERHEAD + strings + LINK_BYTES * len(value)


class TranslationCache:
    """Sentence key -> `Entry` (alignment key -> `Links`), at most `max_bytes` (estimated) of
    them, least recently used evicted first; hits and misses by kind, evictions and bytes
    counted (and in `metrics` when given)."""

    def __init__(self, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._entries: OrderedDict[Key, tuple[Value, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.evictions = 0
        self.hits: Counter[str] = Counter()  # by kind: SENTENCE, ALIGNMENT
        self.misses: Counter[str] = Counter()
        # the parts of keys that many entries share, one object each (translation.route_key, Decoding)
        self.parts: dict[Hashable, Hashable] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[Key]) -> list[Value | None]:
        """Each key's entry (now the most recently used), None where there is none (not counted:
        `count` counts what the caller makes of them)."""
        found: list[Value | None] = []
        with self._lock:
            for key in keys:
                held = self._entries.get(key)
                if held is not None:
                    self._entries.move_to_end(key)
                found.append(held[0] if held else None)
        return found

    def count(self, hits: int, misses: int, kind: str = SENTENCE) -> None:
        """Count what was answered without a model call (`hits`) and with one (`misses`)."""
        with self._lock:
            self.hits[kind] += hits
            self.misses[kind] += misses
        if self.metrics is not None:
            if hits:
                self.metrics.cache_hits.labels(kind).inc(hits)
            if misses:
                self.metrics.cache_misses.labels(kind).inc(misses)

    def put_many(self, items: Sequence[tuple[Key, Value]]) -> None:
        """Keep each entry (an entry larger than the whole bound is not kept), then evict the
        least recently used until the bound holds."""
        evicted = 0
        with self._lock:
            for key, value in items:
                size = entry_bytes(key, value)
                if size > self.max_bytes:
                    continue
                old = self._entries.pop(key, None)
                if old is not None:
                    self.bytes -= old[1]
                self._entries[key] = (value, size)
                self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, size) = self._entries.popitem(last=False)
                self.bytes -= size
                evicted += 1
            self.evictions += evicted
            used, entries = self.bytes, len(self._entries)
        if self.metrics is not None:
            if evicted:
                self.metrics.cache_evictions.inc(evicted)
            self.metrics.cache_bytes.set(used)
            self.metrics.cache_entries.set(entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
        if self.metrics is not None:
            self.metrics.cache_bytes.set(0)
            self.metrics.cache_entries.set(0)
