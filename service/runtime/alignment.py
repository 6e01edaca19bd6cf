"""Word alignment by forced decoding, from the decoder's alignment output.

Decoders that have one say, at each step, where the step looked in the source: by the query of
one layer's cross-attention (`align_query.{L}`), from which `attention` computes the weights, or
(older exports) by the weights themselves (`alignment`, paid at every step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from service.runtime import graph_io
from service.runtime.beam import log_softmax
from service.runtime.bundle import is_target_tag

if TYPE_CHECKING:
    from service.runtime.translator import Translator

Link = tuple[int, int, int, int]  # (translation start, end, source start, end) in characters


class AlignRequest(NamedTuple):
    """One alignment to compute (an item of the scheduler's `align` runs): a source as the model
    reads it (its target tag included) and a translation of it. Any (source, translation) pair
    does as well."""

    source: str
    translation: str


def align(engine: Translator, requests: Sequence[tuple[str, str]]) -> list[list[Link]]:
    """For each request (`AlignRequest`: a source as the model reads it, its translation), the
    translation's pieces fed to the decoder one by one, and for each piece the source piece that
    the step producing it attended to most. Steps that looked most at </s> or at a target tag
    give no link (as do those at <s>, for models whose sources start with it). Empty for a
    decoder without the output."""
    if not engine.aligns or not requests:
        return [[] for _ in requests]
    pairs = [AlignRequest(*r) for r in requests]
    codec = engine.text
    src_pieces = [codec.source.pieces(r.source) for r in pairs]
    tgt_pieces = [codec.target.pieces(r.translation)[: engine.max_len - 1] for r in pairs]
    sources = [codec.source_ids([p[0] for p in ps]) for ps in src_pieces]
    first = len(codec.prefix)  # the source's own pieces start after its <s>, if it has one
    weights = attention(engine, sources, [[p[0] for p in ps] for ps in tgt_pieces])
    best = weights.argmax(-1)  # (B, T): the source position each target piece looked at most
    out: list[list[Link]] = [[] for _ in pairs]
    for i, (sp_, tp) in enumerate(zip(src_pieces, tgt_pieces)):
        for k, (_, t0, t1) in enumerate(tp):
            if not pairs[i].translation[t0:t1].strip():  # a piece of space alone ("▁") says nothing
                continue
            j = int(best[i, k]) - first
            if 0 <= j < len(sp_) and sp_[j][2] > sp_[j][1] and not is_target_tag(codec.source.piece(sp_[j][0])):
                out[i].append((t0, t1, sp_[j][1], sp_[j][2]))  # not </s>, an empty piece or a target tag
    return out


def attention(engine: Translator, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Forced decoding of `targets` (id lists, no </s>) from `sources` (ending in </s>): where
    the step that produces each target token looked in the source (the cross-attention
    weights of the alignment layer, averaged over heads), (B, T, S) for the longest target T
    and source S (zeros past a row's own target)."""
    src, _ = engine.padded(sources)
    b, steps = len(sources), max((len(t) for t in targets), default=0)
    out = np.zeros((b, steps, src.shape[1]), dtype=np.float32)
    forced = np.full((b, steps), engine.pad, dtype=np.int64)
    for i, t in enumerate(targets):
        forced[i, : len(t)] = t
    state = engine.start(src, width=steps)
    layer = engine.align_layer
    wanted = graph_io.ALIGNMENT if layer is None else graph_io.align_query(layer)
    tokens = np.full((b, 1), engine.bos, dtype=np.int64)
    for step in range(steps):
        _, found = engine.step(state, tokens, extra=[wanted])
        if layer is not None:
            found = cross_attention_weights(found, state[graph_io.cross("k", layer)], state[graph_io.SRC_MASK])
        out[:, step] = found
        tokens = forced[:, step : step + 1]
    for i, t in enumerate(targets):
        out[i, len(t) :] = 0
    return out


def cross_attention_weights(query: np.ndarray, keys: np.ndarray, src_mask: np.ndarray) -> np.ndarray:
    """softmax(q K^T / sqrt(H)) over each row's real source tokens, averaged over the N heads:
    `query` (B, D) is one step's cross-attention query of a layer (the decoder's `align_query`
    output), `keys` (B, N, S, H) that layer's `cross_k`, `src_mask` (B, S) the real tokens.
    Returns (B, S), what decoders with an `alignment` output compute at every step."""
    b, n, _, h = keys.shape
    scores = np.matmul(keys, query.reshape(b, n, h, 1).astype(np.float32))[..., 0] / np.sqrt(h)  # (B, N, S)
    scores = np.where(src_mask[:, None, :], scores, -np.inf)
    return np.exp(log_softmax(scores)).mean(axis=1)
